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

from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName
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
    host: HostId
    entries: Mapping[Mac, frozenset[Lnid]] = field(default_factory=dict)
    local: Mapping[Mac, PortName | None] = field(default_factory=dict)


def host_lnids(table: LnidTable, local_macs: set[Mac] | frozenset[Mac]) -> frozenset[Lnid]:
    out: set[Lnid] = set()
    for mac in local_macs:
        out |= table.lnids(mac)
    return frozenset(out)


def host_view(table: LnidTable, locations: Mapping[Mac, Location], host: HostId) -> HostView:
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
    return HostView(host=host, entries=entries, local=local)


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
    return FilterState(entries=entries, bindings=bindings)
