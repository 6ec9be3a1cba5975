"""Compile a FilterState into the lookup facts every data path enforces, incrementally.

Design note: each back end turns the same few facts into its own tables (nft sets, OVS
flows, …), so no back end re-derives the semantics. The facts are chosen so that the
common case costs ONE exact-match lookup per frame, whatever the table size and the
number of LNIDs per port:

  receive(src, port) allowed  ⇔  (src, port) ∈ pairs
                              ∨ (port ∈ global_ports ∧ src ∈ known)
                              ∨ (src ∈ global_src ∧ port ∈ ports)
  send(port, src) allowed     ⇔  port ∈ uplinks ∨ (port, src) ∈ bound

`pairs` holds (source MAC, port) for every non-global source sharing a non-global LNID
with a non-global port. `FactsIndex` keeps the facts under single changes with work
proportional to the change's fan-out, and reports exactly the elements to add and
remove: one change = one small kernel transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding

T = TypeVar("T")
FACT_NAMES = ("known", "global_src", "ports", "global_ports", "uplinks", "bound", "pairs")  # the sets, in order
_EMPTY: frozenset[Lnid] = frozenset()


@dataclass
class SetDelta(Generic[T]):
    add: set[T] = field(default_factory=set)
    remove: set[T] = field(default_factory=set)

    def put(self, item: T) -> None:
        if item in self.remove:
            self.remove.discard(item)
        else:
            self.add.add(item)

    def take(self, item: T) -> None:
        if item in self.add:
            self.add.discard(item)
        else:
            self.remove.add(item)

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


@dataclass
class FactsDelta:
    known: SetDelta[Mac] = field(default_factory=SetDelta)
    global_src: SetDelta[Mac] = field(default_factory=SetDelta)
    ports: SetDelta[PortName] = field(default_factory=SetDelta)
    global_ports: SetDelta[PortName] = field(default_factory=SetDelta)
    uplinks: SetDelta[PortName] = field(default_factory=SetDelta)
    bound: SetDelta[tuple[PortName, Mac]] = field(default_factory=SetDelta)
    pairs: SetDelta[tuple[Mac, PortName]] = field(default_factory=SetDelta)

    def __bool__(self) -> bool:
        return any(getattr(self, name) for name in FACT_NAMES)

    def size(self) -> int:
        return sum(len(getattr(self, name).add) + len(getattr(self, name).remove) for name in FACT_NAMES)


@dataclass(frozen=True)
class Facts:
    known: frozenset[Mac]
    global_src: frozenset[Mac]
    ports: frozenset[PortName]
    global_ports: frozenset[PortName]
    uplinks: frozenset[PortName]
    bound: frozenset[tuple[PortName, Mac]]
    pairs: frozenset[tuple[Mac, PortName]]

    def receive(self, src: Mac, port: PortName) -> bool:
        return (
            (src, port) in self.pairs
            or (port in self.global_ports and src in self.known)
            or (src in self.global_src and port in self.ports)
        )

    def send(self, port: PortName, src: Mac) -> bool:
        return port in self.uplinks or (port, src) in self.bound


class FactsIndex:
    """The facts of one FilterState, maintained under changes (see module doc)."""

    def __init__(self) -> None:
        self._entries: dict[Mac, frozenset[Lnid]] = {}
        self._bindings: dict[PortName, PortBinding] = {}
        self._ports_of_mac: dict[Mac, set[PortName]] = {}
        self._macs_by_lnid: dict[Lnid, set[Mac]] = {}
        self._ports_by_lnid: dict[Lnid, set[PortName]] = {}
        self._port_lnids: dict[PortName, frozenset[Lnid]] = {}
        self._pairs_by_mac: dict[Mac, set[PortName]] = {}
        self._pairs_by_port: dict[PortName, set[Mac]] = {}
        self._delta = FactsDelta()

    # ----- reading ---------------------------------------------------------------
    def state(self) -> FilterState:
        return FilterState(entries=dict(self._entries), bindings=dict(self._bindings))

    def facts(self) -> Facts:
        return Facts(
            known=frozenset(self._entries),
            global_src=frozenset(m for m, ls in self._entries.items() if GLOBAL in ls),
            ports=frozenset(self._bindings),
            global_ports=frozenset(p for p, ls in self._port_lnids.items() if GLOBAL in ls),
            uplinks=frozenset(p for p, b in self._bindings.items() if b.uplink),
            bound=frozenset((p, b.mac) for p, b in self._bindings.items() if not b.uplink),
            pairs=frozenset((m, p) for m, ps in self._pairs_by_mac.items() for p in ps),
        )

    def port_facts(self) -> tuple[frozenset[tuple[PortName, Mac]], frozenset[PortName]]:
        """`bound` and `uplinks` of `facts()`, without building the rest (O(ports), not O(table))."""
        bound = frozenset((p, b.mac) for p, b in self._bindings.items() if not b.uplink)
        return bound, frozenset(p for p, b in self._bindings.items() if b.uplink)

    def port_view(self, port: PortName) -> tuple[bool, bool, frozenset[Mac]]:
        """One port's facts: (bound or uplink, in `global`, the sources of its pairs); O(its pairs)."""
        lnids = self._port_lnids.get(port, _EMPTY)
        return port in self._bindings, GLOBAL in lnids, frozenset(self._pairs_by_port.get(port, ()))

    def take_delta(self) -> FactsDelta:
        """The element changes since the last call (and forget them)."""
        delta, self._delta = self._delta, FactsDelta()
        return delta

    # ----- changing --------------------------------------------------------------
    def sync(self, target: FilterState) -> None:
        """Move to `target` by the smallest set of single changes."""
        for port in [p for p in self._bindings if p not in target.bindings]:
            self.unbind(port)
        for mac in [m for m in self._entries if m not in target.entries]:
            self.del_entry(mac)
        for mac, lnids in target.entries.items():
            self.set_entry(mac, lnids)
        for binding in target.bindings.values():
            self.bind(binding)

    def set_entry(self, mac: Mac, lnids: Iterable[Lnid]) -> None:
        new = frozenset(lnids)
        old = self._entries.get(mac)
        if old == new:
            return
        d = self._delta
        if old is None:
            d.known.put(mac)
        else:
            for lnid in old - new:
                self._unindex(self._macs_by_lnid, lnid, mac)
        if (GLOBAL in new) != (old is not None and GLOBAL in old):
            (d.global_src.put if GLOBAL in new else d.global_src.take)(mac)
        for lnid in new - (old or _EMPTY):
            self._macs_by_lnid.setdefault(lnid, set()).add(mac)
        self._entries[mac] = new
        self._refresh_mac(mac)
        for port in self._ports_of_mac.get(mac, ()):
            self._refresh_port(port)

    def del_entry(self, mac: Mac) -> None:
        old = self._entries.pop(mac, None)
        if old is None:
            return
        d = self._delta
        d.known.take(mac)
        if GLOBAL in old:
            d.global_src.take(mac)
        for lnid in old:
            self._unindex(self._macs_by_lnid, lnid, mac)
        self._refresh_mac(mac)
        for port in self._ports_of_mac.get(mac, ()):
            self._refresh_port(port)

    def bind(self, binding: PortBinding) -> None:
        old = self._bindings.get(binding.port)
        if old == binding:
            return
        if old is not None:
            self.unbind(binding.port)
        d = self._delta
        self._bindings[binding.port] = binding
        self._ports_of_mac.setdefault(binding.mac, set()).add(binding.port)
        d.ports.put(binding.port)
        if binding.uplink:
            d.uplinks.put(binding.port)
        else:
            d.bound.put((binding.port, binding.mac))
        self._refresh_port(binding.port)

    def unbind(self, port: PortName) -> None:
        old = self._bindings.pop(port, None)
        if old is None:
            return
        d = self._delta
        ports = self._ports_of_mac[old.mac]
        ports.discard(port)
        if not ports:
            del self._ports_of_mac[old.mac]
        d.ports.take(port)
        if old.uplink:
            d.uplinks.take(port)
        else:
            d.bound.take((port, old.mac))
        self._refresh_port(port)

    # ----- internals -------------------------------------------------------------
    @staticmethod
    def _unindex(index: dict[Lnid, set[T]], lnid: Lnid, item: T) -> None:
        items = index.get(lnid)
        if items is not None:
            items.discard(item)
            if not items:
                del index[lnid]

    def _lnids_of_port(self, port: PortName) -> frozenset[Lnid]:
        binding = self._bindings.get(port)
        if binding is None:
            return _EMPTY
        if binding.uplink:
            return frozenset({GLOBAL})
        return self._entries.get(binding.mac, _EMPTY)

    def _refresh_port(self, port: PortName) -> None:
        """Recompute a port's LNIDs (and so its `global` flag and its pairs)."""
        old = self._port_lnids.get(port, _EMPTY)
        new = self._lnids_of_port(port)
        if old != new:
            for lnid in old - new:
                self._unindex(self._ports_by_lnid, lnid, port)
            for lnid in new - old:
                self._ports_by_lnid.setdefault(lnid, set()).add(port)
            if (GLOBAL in new) != (GLOBAL in old):
                (self._delta.global_ports.put if GLOBAL in new else self._delta.global_ports.take)(port)
            if new:
                self._port_lnids[port] = new
            else:
                self._port_lnids.pop(port, None)
        want: set[Mac] = set()
        if new and GLOBAL not in new:
            for lnid in new:
                want |= self._macs_by_lnid.get(lnid, set())
            want = {m for m in want if GLOBAL not in self._entries[m]}
        self._set_pairs_of_port(port, want)

    def _refresh_mac(self, mac: Mac) -> None:
        lnids = self._entries.get(mac, _EMPTY)
        want: set[PortName] = set()
        if lnids and GLOBAL not in lnids:
            for lnid in lnids:
                want |= self._ports_by_lnid.get(lnid, set())
            want = {p for p in want if GLOBAL not in self._port_lnids[p]}
        have = self._pairs_by_mac.get(mac, set())
        for port in have - want:
            self._drop_pair(mac, port)
        for port in want - have:
            self._add_pair(mac, port)

    def _set_pairs_of_port(self, port: PortName, want: set[Mac]) -> None:
        have = self._pairs_by_port.get(port, set())
        for mac in have - want:
            self._drop_pair(mac, port)
        for mac in want - have:
            self._add_pair(mac, port)

    def _add_pair(self, mac: Mac, port: PortName) -> None:
        self._pairs_by_mac.setdefault(mac, set()).add(port)
        self._pairs_by_port.setdefault(port, set()).add(mac)
        self._delta.pairs.put((mac, port))

    def _drop_pair(self, mac: Mac, port: PortName) -> None:
        ps = self._pairs_by_mac[mac]
        ps.discard(port)
        if not ps:
            del self._pairs_by_mac[mac]
        ms = self._pairs_by_port[port]
        ms.discard(mac)
        if not ms:
            del self._pairs_by_port[port]
        self._delta.pairs.take((mac, port))


def compile_facts(state: FilterState) -> Facts:
    index = FactsIndex()
    index.sync(state)
    return index.facts()


def diff_facts(old: Facts | None, new: Facts) -> FactsDelta:
    """The element changes that turn `old` (None: nothing) into `new`."""
    delta = FactsDelta()
    for name in FACT_NAMES:
        want: frozenset[object] = getattr(new, name)
        have: frozenset[object] = getattr(old, name) if old is not None else frozenset()
        d: SetDelta[object] = getattr(delta, name)
        d.add = set(want - have)
        d.remove = set(have - want)
    return delta


# ----- digests -----------------------------------------------------------------------------
# A back end stores the digest of the facts it enforces beside them, updated in the same
# transaction as every change. A restarted agent compares it with the digest of its
# desired facts and skips reading back every element when they agree; a full read-back
# (`TenantFilter.audit`) still finds drift made behind the agent's back.

DIGEST_BITS = 60  # fits 15 hex digits: storable wherever a short string is
_MOD = 1 << DIGEST_BITS


def fact_hash(name: str, item: object) -> int:
    text = name + "\0" + ("\0".join(item) if isinstance(item, tuple) else str(item))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") % _MOD


def facts_digest(facts: Facts) -> int:
    """Order-independent digest of a set of facts (sum of element hashes mod 2^60)."""
    total = 0
    for name in FACT_NAMES:
        for item in getattr(facts, name):
            total += fact_hash(name, item)
    return total % _MOD


def delta_digest(digest: int, delta: FactsDelta) -> int:
    """The digest after applying `delta` to facts whose digest was `digest`."""
    for name in FACT_NAMES:
        d: SetDelta[object] = getattr(delta, name)
        for item in d.add:
            digest += fact_hash(name, item)
        for item in d.remove:
            digest -= fact_hash(name, item)
    return digest % _MOD
