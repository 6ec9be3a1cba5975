"""The addresses of the data center indexed by net, for the checks across MACs (issue 13).

An address (or prefix) belongs to one MAC, unless registered shared (a VRRP VIP), and then
only MACs sharing an LNID hold it; a prefix may not overlap a net of another MAC. Kept
as text per MAC (`addresses.addrs_text`) and integer keys per net: no `ipaddress`
object is kept, which would cost 1.2 kB per vNIC at a million vNICs.
"""

from __future__ import annotations

from collections.abc import Iterable

from hostvlan.model.addresses import NetKey, key_text, keys_overlap, text_keys
from hostvlan.model.ids import Lnid, Mac
from hostvlan.model.table import LnidTable


class AddressConflict(ValueError):
    """Addresses a MAC may not hold (the data center raises it as a conflict)."""


class AddressBook:
    def __init__(self, table: LnidTable) -> None:
        self._table = table
        self.text: dict[Mac, str] = {}  # MAC -> its addresses' text (only MACs that have some)
        self._owner: dict[NetKey, Mac] = {}  # nets held by one MAC
        self._shared_by: dict[NetKey, set[Mac]] = {}  # nets registered shared
        self._prefixes: set[NetKey] = set()  # nets wider than one address (checked for overlap)

    def holders(self, key: NetKey) -> set[Mac]:
        owner = self._owner.get(key)
        if owner is not None:
            return {owner}
        return set(self._shared_by.get(key, ()))

    def check(self, mac: Mac, keys: Iterable[tuple[NetKey, bool]], lnids: frozenset[Lnid]) -> None:
        """Refuse (AddressConflict, nothing changed) nets `mac` may not hold with LNIDs `lnids`:
        a net another MAC holds (or overlaps), or a shared net held by a MAC sharing no LNID."""
        mine: set[NetKey] | None = None
        for key, shared in keys:
            others = self.holders(key) - {mac}
            if others:
                if key in self._owner or not shared:
                    how = "registered --shared " if key in self._shared_by else ""
                    raise AddressConflict(
                        f"address {key_text(key)} is held by MAC {min(others)} {how}(addresses belong to one MAC)"
                    )
                for other in sorted(others):
                    if not (self._table.lnids(other) & lnids):
                        raise AddressConflict(
                            f"shared address {key_text(key)} is held by MAC {other}, which shares no LNID with {mac}"
                        )
            wide = key[2] < (32 if key[0] == 4 else 128)
            if not wide and not self._prefixes:
                continue
            if mine is None:
                mine = {k for k, _ in text_keys(self.text.get(mac, ""))}
            if key in mine:
                continue
            near = self._prefixes if not wide else set(self._owner) | set(self._shared_by)
            for other_key in near:
                if other_key != key and keys_overlap(key, other_key):
                    holders = self.holders(other_key) - {mac}
                    if holders:
                        raise AddressConflict(
                            f"address {key_text(key)} overlaps {key_text(other_key)} held by MAC {min(holders)}"
                        )

    def index(self, mac: Mac, text: str, keys: Iterable[tuple[NetKey, bool]] | None = None) -> None:
        """Index `text` (its nets as `keys`, if the caller has them: no parsing again)."""
        self.text[mac] = text
        for key, shared in text_keys(text) if keys is None else keys:
            if shared:
                self._shared_by.setdefault(key, set()).add(mac)
            else:
                self._owner[key] = mac
            if key[2] < (32 if key[0] == 4 else 128):
                self._prefixes.add(key)

    def unindex(self, mac: Mac) -> None:
        text = self.text.pop(mac, None)
        if not text:
            return
        for key, shared in text_keys(text):
            if shared:
                holders = self._shared_by.get(key)
                if holders is not None:
                    holders.discard(mac)
                    if not holders:
                        del self._shared_by[key]
            elif self._owner.get(key) == mac:
                del self._owner[key]
            if key in self._prefixes and key not in self._owner and key not in self._shared_by:
                self._prefixes.discard(key)
