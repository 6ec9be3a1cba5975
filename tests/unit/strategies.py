"""Shared hypothesis strategies for the unit tier.

Values are drawn from small pools on purpose: MACs, ports and LNIDs collide often, so
random states exercise sharing, rebinding, `global` and "known but empty" entries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from hostvlan.model.hostview import Location
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName, int_to_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.model.table import LnidTable

# One settings object for every property of the tier: moderate, no deadline (CI jitter).
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----- identifiers ---------------------------------------------------------------------

MAC_POOL: tuple[Mac, ...] = tuple(int_to_mac(0x525400000000 + i) for i in range(1, 9))
UNKNOWN_MACS: tuple[Mac, ...] = (Mac("52:54:00:ff:ff:01"), Mac("52:54:00:ff:ff:02"))
PORT_POOL: tuple[PortName, ...] = tuple(PortName(f"vp{i}") for i in range(6))
UNBOUND_PORT = PortName("vp-unbound")
# Small LNIDs collide; the big ones check nothing is cut to 12, 24 or 32 bits (2**32+1 -> 1).
LNID_POOL: tuple[Lnid, ...] = (GLOBAL, Lnid(1), Lnid(2), Lnid(3), Lnid(2**32 + 1), Lnid(2**63 - 1))

any_mac = st.integers(min_value=0, max_value=2**48 - 1).map(int_to_mac)
pool_mac = st.sampled_from(MAC_POOL)
pool_port = st.sampled_from(PORT_POOL)
pool_lnid = st.sampled_from(LNID_POOL)
lnid_set = st.frozensets(pool_lnid, max_size=3)
user_lnid = st.integers(min_value=1, max_value=2**63 - 1).map(Lnid)


# ----- filter states ---------------------------------------------------------------------

UPLINK_ODDS = st.sampled_from((False, False, False, True))  # uplinks are the minority


@st.composite
def filter_states(draw: st.DrawFn) -> FilterState:
    """Any FilterState over the pools, including the awkward ones: empty entries, ports
    bound to a MAC without entry, uplinks bound to a non-global MAC, two ports on one MAC."""
    entries = draw(st.dictionaries(pool_mac, lnid_set, max_size=len(MAC_POOL)))
    ports = draw(st.lists(pool_port, unique=True, max_size=len(PORT_POOL)))
    bindings = {}
    for port in ports:
        mac = draw(pool_mac)
        uplink = draw(UPLINK_ODDS)
        bindings[port] = PortBinding(port, mac, uplink=uplink)
    return FilterState(entries=entries, bindings=bindings)


# A single change as data: ("set", mac, lnids) | ("del", mac) | ("bind", PortBinding) | ("unbind", port)
Change = tuple[object, ...]


class Changeable(Protocol):
    """FactsIndex and every TenantFilter queue changes through these four methods."""

    def set_entry(self, mac: Mac, lnids: Iterable[Lnid]) -> None: ...
    def del_entry(self, mac: Mac) -> None: ...
    def bind(self, binding: PortBinding) -> None: ...
    def unbind(self, port: PortName) -> None: ...


def apply_change(target: Changeable, change: Change) -> None:
    match change:
        case ("set", mac, lnids):
            target.set_entry(mac, lnids)  # type: ignore[arg-type]
        case ("del", mac):
            target.del_entry(mac)  # type: ignore[arg-type]
        case ("bind", binding):
            target.bind(binding)  # type: ignore[arg-type]
        case ("unbind", port):
            target.unbind(port)  # type: ignore[arg-type]
        case _:  # pragma: no cover
            raise AssertionError(change)


changes = st.one_of(
    st.tuples(st.just("set"), pool_mac, lnid_set),
    st.tuples(st.just("set"), pool_mac, st.just(frozenset({GLOBAL}))),
    st.tuples(st.just("del"), pool_mac),
    st.tuples(
        st.just("bind"),
        st.builds(PortBinding, pool_port, pool_mac, UPLINK_ODDS),
    ),
    st.tuples(st.just("unbind"), pool_port),
)


# ----- data centers ----------------------------------------------------------------------

HOSTS: tuple[HostId, ...] = (HostId("h1"), HostId("h2"), HostId("h3"))


@dataclass(frozen=True)
class DataCenter:
    """A whole data center: the manager's table plus what each host finds locally."""

    table: LnidTable
    memberships: Mapping[Mac, frozenset[Lnid]]  # full LNIDs, incl. MACs with none (unregistered)
    locations: Mapping[Mac, Location]
    found_ports: Mapping[HostId, Mapping[Mac, PortName]]  # what each agent found
    uplinks: Mapping[HostId, Mapping[PortName, Mac]]
    port_of: Mapping[Mac, PortName] = field(default_factory=dict)  # the port each vNIC would use

    def local(self, host: HostId) -> list[Mac]:
        return [m for m, loc in self.locations.items() if loc.host == host]


def port_name(mac: Mac) -> PortName:
    return PortName("vp" + mac.replace(":", "")[-4:])


@st.composite
def data_centers(draw: st.DrawFn) -> DataCenter:
    macs = draw(st.lists(pool_mac, unique=True, min_size=1, max_size=len(MAC_POOL)))
    memberships: dict[Mac, frozenset[Lnid]] = {}
    locations: dict[Mac, Location] = {}
    found: dict[HostId, dict[Mac, PortName]] = {h: {} for h in HOSTS}
    port_of: dict[Mac, PortName] = {}
    for mac in macs:
        # Mostly registered vNICs; sometimes a MAC with no LNID (not in the table).
        memberships[mac] = draw(st.frozensets(pool_lnid, min_size=0, max_size=3))
        host = draw(st.sampled_from((*HOSTS, None)))
        port = port_name(mac)
        port_of[mac] = port
        if host is None:
            locations[mac] = Location(host=None)
            continue
        # explicit port in the view, port found by the agent, or not found yet (unbound)
        how = draw(st.sampled_from(("explicit", "found", "found", "missing")))
        locations[mac] = Location(host=host, port=port if how == "explicit" else None)
        if how == "found":
            found[host][mac] = port
    uplinks: dict[HostId, dict[PortName, Mac]] = {}
    for i, host in enumerate(HOSTS):
        if draw(st.booleans()) or i == 0:
            nic = int_to_mac(0x0C0000000000 + i)
            uplinks[host] = {PortName(f"eth{i}"): nic}
            # The host's NIC is registered `global`, behind the physical network.
            memberships[nic] = frozenset({GLOBAL})
            locations[nic] = Location(host=None)
        else:
            uplinks[host] = {}
    table = LnidTable.of(memberships)
    return DataCenter(
        table=table,
        memberships=memberships,
        locations=locations,
        found_ports=found,
        uplinks=uplinks,
        port_of=port_of,
    )
