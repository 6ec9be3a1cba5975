"""Compile a FilterState into the facts the address guard of every back end enforces.

Like `facts`, the back ends turn these into their own tables and never re-derive the rules
of `guard`:

  ports       every bound VM port (uplinks are exempt): its MAC, whether it is guarded,
              the nets it may use (its registered nets plus its EUI-64 link-local /128 when
              guarded), and its roles (router, DHCP server)
  answers     (port, address, holder MAC): the requests for `address` from `port` that the
              host answers with `holder` (a host address of another vNIC, not shared, whose
              frames may reach the port: `verdict.receive`)
  registered  the host addresses (not shared) of every vNIC the view holds: a request for one
              of them that `answers` does not hold is dropped at the source (no shared LNID),
              unless the asking port holds it itself (one of its `nets` as a host address)

`compile_guard` costs O(bound ports × the sources each may receive + the addresses), read
from the `FactsIndex` the back end keeps anyway; the back ends push only the difference
(`diff`) to the kernel. Pure; imports `hostvlan.model` only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hostvlan.model.addresses import Addrs, IPAddr, IPNet, link_local
from hostvlan.model.facts import FactsIndex
from hostvlan.model.guard import _host_addr
from hostvlan.model.ids import GLOBAL, Mac, PortName
from hostvlan.model.ports import FilterState


@dataclass(frozen=True)
class PortGuard:
    mac: Mac
    guarded: bool = False
    nets: frozenset[IPNet] = frozenset()
    router: bool = False
    dhcp_server: bool = False


@dataclass(frozen=True)
class GuardFacts:
    ports: dict[PortName, PortGuard] = field(default_factory=dict)
    answers: frozenset[tuple[PortName, IPAddr, Mac]] = frozenset()
    registered: frozenset[IPAddr] = frozenset()
    routers: frozenset[Mac] = frozenset()  # holders registered as routers (their NAs say so)


def port_guard(mac: Mac, addrs: Addrs | None) -> PortGuard:
    if addrs is None or not addrs.guarded:
        return PortGuard(mac)
    ll = ipaddress.IPv6Network(link_local(mac))
    return PortGuard(mac, True, frozenset({*addrs.nets, ll}), addrs.router, addrs.dhcp_server)


def host_addresses(addrs: Addrs) -> list[IPAddr]:
    """The addresses of `addrs` the host answers for (host addresses, not shared)."""
    return [n.network_address for n in addrs.nets if _host_addr(n.network_address, addrs)]


def compile_guard(state: FilterState, index: FactsIndex | None = None) -> GuardFacts:
    """The guard facts of `state` (see module doc); `index`: the FactsIndex of the same state."""
    if index is None:
        index = FactsIndex()
        index.sync(state)
    held: dict[IPAddr, Mac] = {}
    for mac, addrs in sorted(state.addresses.items(), reverse=True):  # the smallest MAC wins, as in guard
        if mac in state.entries:
            for addr in host_addresses(addrs):
                held[addr] = mac
    by_mac: dict[Mac, list[IPAddr]] = {}
    for addr, mac in held.items():
        by_mac.setdefault(mac, []).append(addr)
    global_holders = {m for m in by_mac if GLOBAL in state.entries.get(m, frozenset())}
    ports: dict[PortName, PortGuard] = {}
    answers: set[tuple[PortName, IPAddr, Mac]] = set()
    for port, b in state.bindings.items():
        if b.uplink:
            continue
        ports[port] = port_guard(b.mac, state.addresses.get(b.mac))
        bound, is_global, sources = index.port_view(port)
        if not bound:
            continue
        may = set(by_mac) if is_global else (set(sources) & set(by_mac)) | global_holders
        may.discard(b.mac)
        for m in may:
            for addr in by_mac[m]:
                if holder_of_min(state, addr, b.mac, held) == m:
                    answers.add((port, addr, m))
    routers = frozenset(m for m in by_mac if state.addresses[m].router)
    return GuardFacts(ports, frozenset(answers), frozenset(held), routers)


def holder_of_min(state: FilterState, addr: IPAddr, asker: Mac, held: dict[IPAddr, Mac]) -> Mac | None:
    """`guard.holder_of`, fast: the smallest holder, unless that is the asker (then the next)."""
    mac = held.get(addr)
    if mac != asker:
        return mac
    others = [m for m, a in state.addresses.items() if m != asker and m in state.entries and _host_addr(addr, a)]
    return min(others) if others else None


@dataclass
class GuardDelta:
    """The element changes between two GuardFacts, removals and additions."""

    ports_put: dict[PortName, PortGuard] = field(default_factory=dict)
    ports_gone: set[PortName] = field(default_factory=set)
    answers_add: set[tuple[PortName, IPAddr, Mac]] = field(default_factory=set)
    answers_remove: set[tuple[PortName, IPAddr, Mac]] = field(default_factory=set)
    registered_add: set[IPAddr] = field(default_factory=set)
    registered_remove: set[IPAddr] = field(default_factory=set)

    def __bool__(self) -> bool:
        return any(bool(v) for v in self.__dict__.values())


def diff(old: GuardFacts | None, new: GuardFacts) -> GuardDelta:
    old = old or GuardFacts()
    return GuardDelta(
        ports_put={p: g for p, g in new.ports.items() if old.ports.get(p) != g},
        ports_gone={p for p in old.ports if p not in new.ports},
        answers_add=set(new.answers - old.answers),
        answers_remove=set(old.answers - new.answers),
        registered_add=set(new.registered - old.registered),
        registered_remove=set(old.registered - new.registered),
    )
