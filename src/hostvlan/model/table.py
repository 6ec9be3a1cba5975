"""The LNID table: MAC <-> LNIDs, many-to-many, with both directions indexed.

Invariant: a MAC is in the table iff it belongs to at least one LNID; the two indexes
always mirror each other. `global` (GLOBAL) is stored like any LNID.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from hostvlan.model.ids import Lnid, Mac

_EMPTY: frozenset[Lnid] = frozenset()


@dataclass
class LnidTable:
    _by_mac: dict[Mac, set[Lnid]] = field(default_factory=dict)
    _by_lnid: dict[Lnid, set[Mac]] = field(default_factory=dict)

    @classmethod
    def of(cls, memberships: dict[Mac, frozenset[Lnid]] | dict[Mac, set[Lnid]]) -> LnidTable:
        table = cls()
        for mac, lnids in memberships.items():
            for lnid in lnids:
                table.add(mac, lnid)
        return table

    def add(self, mac: Mac, lnid: Lnid) -> bool:
        """Add one membership; False when it already existed (a no-op)."""
        lnids = self._by_mac.setdefault(mac, set())
        if lnid in lnids:
            return False
        lnids.add(lnid)
        self._by_lnid.setdefault(lnid, set()).add(mac)
        return True

    def remove(self, mac: Mac, lnid: Lnid) -> bool:
        """Remove one membership; False when it did not exist. A MAC left with no LNID leaves the table."""
        lnids = self._by_mac.get(mac)
        if lnids is None or lnid not in lnids:
            return False
        lnids.discard(lnid)
        if not lnids:
            del self._by_mac[mac]
        macs = self._by_lnid[lnid]
        macs.discard(mac)
        if not macs:
            del self._by_lnid[lnid]
        return True

    def drop(self, mac: Mac) -> frozenset[Lnid]:
        """Remove a MAC from every LNID; returns the LNIDs it had."""
        lnids = frozenset(self._by_mac.get(mac, ()))
        for lnid in lnids:
            self.remove(mac, lnid)
        return lnids

    def lnids(self, mac: Mac) -> frozenset[Lnid]:
        got = self._by_mac.get(mac)
        return frozenset(got) if got else _EMPTY

    def macs(self, lnid: Lnid) -> frozenset[Mac]:
        got = self._by_lnid.get(lnid)
        return frozenset(got) if got else frozenset()

    def lnid_ids(self) -> Iterator[Lnid]:
        return iter(self._by_lnid)

    def __contains__(self, mac: object) -> bool:
        return mac in self._by_mac

    def __iter__(self) -> Iterator[Mac]:
        return iter(self._by_mac)

    def __len__(self) -> int:
        return len(self._by_mac)

    def items(self) -> Iterator[tuple[Mac, frozenset[Lnid]]]:
        for mac, lnids in self._by_mac.items():
            yield mac, frozenset(lnids)
