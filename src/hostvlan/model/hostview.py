"""The partial LNID table one end host needs (SPEC §5), derived from the whole.

A host whose local vNICs are in LNIDs L receives, for every MAC m of the data center,
the entry lnids(m) ∩ (L ∪ {global}) when it is non-empty; a host with a `global` vNIC
must know every source, so it receives every MAC (an empty entry meaning "known, shares
no LNID here"). Local vNICs come with their full LNID sets and their placement.
Restricting entries to the LNIDs that matter here keeps changes of far-away LNIDs from
ever reaching the host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hostvlan.model.addresses import UNGUARDED, Addrs
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName, tap_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.model.table import LnidTable


@dataclass(frozen=True)
class Location:
    """Where a registered MAC lives: on an end host (optionally on a named port), or
    behind the physical network (`host is None`: routers, clients)."""

    host: HostId | None
    port: PortName | None = None


@dataclass(frozen=True)
class HostView:
    """`addresses` holds the addresses of entries the view holds (MACs absent: unguarded)."""

    host: HostId
    entries: Mapping[Mac, frozenset[Lnid]] = field(default_factory=dict)
    local: Mapping[Mac, PortName | None] = field(default_factory=dict)
    addresses: Mapping[Mac, Addrs] = field(default_factory=dict)


def host_lnids(table: LnidTable, local_macs: set[Mac] | frozenset[Mac]) -> frozenset[Lnid]:
    out: set[Lnid] = set()
    for mac in local_macs:
        out |= table.lnids(mac)
    return frozenset(out)


def host_view(
    table: LnidTable,
    locations: Mapping[Mac, Location],
    host: HostId,
    addresses: Mapping[Mac, Addrs] | None = None,
) -> HostView:
    """The reference view of `host`; `addresses` (every MAC's, absent: none) of the entries it holds."""
    local = {mac: loc.port for mac, loc in locations.items() if loc.host == host and mac in table}
    lnids = host_lnids(table, set(local))
    scope = lnids | {GLOBAL}
    if GLOBAL in lnids:
        candidates: set[Mac] = set(table)
    else:
        candidates = set()
        for lnid in scope:
            candidates |= table.macs(lnid)
    entries = {mac: table.lnids(mac) & scope for mac in candidates}
    held = {m: a for m, a in (addresses or {}).items() if m in entries and a != UNGUARDED}
    return HostView(host=host, entries=entries, local=local, addresses=held)


def filter_state(
    view: HostView,
    ports: Mapping[Mac, PortName],
    uplinks: Mapping[PortName, Mac],
) -> FilterState:
    """Combine the manager's view with what the host found locally.

    `ports` maps a local vNIC MAC to the port the agent found for it (an explicit port
    in the view wins); vNICs whose port is not there yet stay unbound (fail closed).
    `uplinks` are the host's physical NICs: bound, `global`, exempt from the send check.
    """
    entries = dict(view.entries)
    bindings: dict[PortName, PortBinding] = {}
    for port, mac in uplinks.items():
        entries[mac] = frozenset({GLOBAL})
        bindings[port] = PortBinding(port, mac, uplink=True)
    for mac, explicit in view.local.items():
        found = explicit or ports.get(mac)
        if found is not None and found not in bindings:
            bindings[found] = PortBinding(found, mac)
    return FilterState(entries=entries, bindings=bindings, addresses=view.addresses)


# ----- port bindings ---------------------------------------------------------------------
@dataclass(frozen=True)
class PortSeen:
    """One port of the host's switch as the agent sees it, and the MAC by which it names its vNIC.

    `carries` says how that MAC relates to the vNIC's: "tap" (libvirt tap, veth: the device
    MAC is the guest MAC with first octet `fe`), "same" (macvtap: the device MAC is the vNIC
    MAC), "attached" (Open vSwitch: `external_ids:attached-mac` is the vNIC MAC). `mac` None:
    the port says nothing about its vNIC (an OVS interface without attached-mac).
    """

    mac: Mac | None
    carries: str = "tap"

    def names(self, vnic: Mac) -> bool:
        """Whether this port may carry `vnic` (a port that says nothing may carry any)."""
        if self.mac is None:
            return True
        return self.mac == (tap_mac(vnic) if self.carries == "tap" else vnic)

    def mismatch(self, port: PortName) -> str:
        what = "attached-mac" if self.carries == "attached" else "MAC"
        return f"port {port} carries {what} {self.mac}, not this vNIC's"


@dataclass(frozen=True)
class VnicBinding:
    """Where one local vNIC is enforced: `port` when bound, else None and `reason` says why."""

    port: PortName | None
    reason: str | None = None

    @property
    def bound(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class PortBindings:
    """The outcome of `bind_ports`: what the filter binds, and what the agent reports.

    `enforce` maps a vNIC MAC to the port its filter binds. It holds every bound vNIC, and
    also a vNIC whose given port does not exist yet (reported unbound, "no such port"): its
    filter is in place before its device appears, which a macvtap needs and which binds
    nothing that carries frames meanwhile.
    """

    enforce: dict[Mac, PortName]
    report: dict[Mac, VnicBinding]

    def unbound(self) -> dict[Mac, str]:
        return {m: b.reason for m, b in self.report.items() if b.reason is not None}


def bind_ports(
    view: HostView,
    found: Mapping[Mac, PortName],
    seen: Mapping[PortName, PortSeen],
    uplinks: Mapping[PortName, Mac],
) -> PortBindings:
    """Bind each local vNIC of `view` to a port, or say why it is not (fail closed).

    `found` maps a vNIC MAC to the port discovery found for it (the tap / macvtap / OVS
    attached-mac conventions); `seen` is every port the host has. A port given at
    registration wins over discovery, but only when it may carry the vNIC: a port showing
    another vNIC's MAC leaves it unbound. A port goes to one vNIC alone: given ports first,
    then discovered ones, each in MAC order; an uplink is never a vNIC's.
    """
    claimed: dict[PortName, Mac] = {}
    enforce: dict[Mac, PortName] = {}
    report: dict[Mac, VnicBinding] = {}
    macs = sorted(view.local)
    for mac in macs:
        port = view.local[mac]
        if port is None:
            continue
        got = seen.get(port)
        if port in uplinks:
            report[mac] = VnicBinding(None, f"port {port} is the host's uplink")
        elif port in claimed:
            report[mac] = VnicBinding(None, f"port {port} is bound to {claimed[port]}")
        elif got is not None and not got.names(mac):
            report[mac] = VnicBinding(None, got.mismatch(port))
        else:
            claimed[port] = mac
            enforce[mac] = port
            report[mac] = VnicBinding(port) if got is not None else VnicBinding(None, f"no such port {port}")
    for mac in macs:
        if view.local[mac] is not None:
            continue
        port = found.get(mac)
        if port is None:
            report[mac] = VnicBinding(None, "no port carries this vNIC")
        elif port in uplinks:
            report[mac] = VnicBinding(None, f"port {port} is the host's uplink")
        elif port in claimed:
            report[mac] = VnicBinding(None, f"port {port} is bound to {claimed[port]}")
        else:
            claimed[port] = mac
            enforce[mac] = port
            report[mac] = VnicBinding(port)
    return PortBindings(enforce, report)


def bound_state(view: HostView, bindings: PortBindings, uplinks: Mapping[PortName, Mac]) -> FilterState:
    """The filter state of `view` with the ports `bind_ports` chose (and nothing else bound)."""
    return filter_state(HostView(view.host, view.entries, dict(bindings.enforce), view.addresses), {}, uplinks)
