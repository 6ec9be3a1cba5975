"""The whole data center and the per-host deltas each change causes (the calc graph).

`DataCenter` holds the authoritative LNID table and where every MAC lives, indexed so
that a change to one MAC computes, for exactly the hosts whose view changes, the
entries to set and delete (SPEC §5: a host getting its first VM of LNID 1 receives
every LNID-1 entry; hosts already in LNID 1 receive only the new entry; hosts without
LNID 1 receive nothing). Host views themselves are never stored: a snapshot is
derived from the indexes on demand, so memory grows with the table, not with
hosts × view size. Invariant (property-tested): applying the deltas of every change
to a host's snapshot gives `hostview.host_view` of the new data center.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from hostvlan.model.hostview import HostView, Location
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName
from hostvlan.model.table import LnidTable

_EMPTY: frozenset[Lnid] = frozenset()


class ModelError(ValueError):
    """A command contradicts the data center's invariants (the message says how).

    `kind` is "not_found" (unknown host or MAC) or "conflict" (e.g. a MAC bound elsewhere).
    """

    def __init__(self, message: str, kind: str = "conflict") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class HostDelta:
    """What changes in one host's view: entries set/deleted, local vNICs set/unset."""

    entries: dict[Mac, frozenset[Lnid]] = field(default_factory=dict)
    removed: set[Mac] = field(default_factory=set)
    local: dict[Mac, PortName | None] = field(default_factory=dict)
    unlocal: set[Mac] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.entries or self.removed or self.local or self.unlocal)


def apply_delta(view: HostView, delta: HostDelta) -> HostView:
    entries = {m: ls for m, ls in view.entries.items() if m not in delta.removed}
    entries.update(delta.entries)
    local = {m: p for m, p in view.local.items() if m not in delta.unlocal}
    local.update(delta.local)
    return HostView(view.host, entries, local)


def merge_delta(acc: HostDelta, later: HostDelta) -> None:
    """Fold `later` into `acc`, as if both were applied in order."""
    for mac in later.removed:
        acc.entries.pop(mac, None)
    acc.removed |= later.removed
    for mac in later.entries:
        acc.removed.discard(mac)
    acc.entries.update(later.entries)
    for mac in later.unlocal:
        acc.local.pop(mac, None)
    acc.unlocal |= later.unlocal
    for mac in later.local:
        acc.unlocal.discard(mac)
    acc.local.update(later.local)


def _entry(lnids: frozenset[Lnid], scope: frozenset[Lnid] | set[Lnid], knows_all: bool) -> frozenset[Lnid] | None:
    """A MAC's entry in a host view whose host LNIDs ∪ {global} are `scope`."""
    if not lnids:
        return None
    value = lnids & scope
    return value if value or knows_all else None


class DataCenter:
    def __init__(self) -> None:
        self.table = LnidTable()
        self.locations: dict[Mac, Location] = {}
        self.hosts: set[HostId] = set()
        self._local: dict[HostId, set[Mac]] = {}
        self._host_lnids: dict[HostId, Counter[Lnid]] = {}
        self._hosts_by_lnid: dict[Lnid, set[HostId]] = {}

    # ----- reading -----------------------------------------------------------------------
    def host_lnids(self, host: HostId) -> frozenset[Lnid]:
        return frozenset(self._host_lnids.get(host, ()))

    def local_macs(self, host: HostId) -> frozenset[Mac]:
        return frozenset(self._local.get(host, ()))

    def view(self, host: HostId) -> HostView:
        lnids = self.host_lnids(host)
        scope = lnids | {GLOBAL}
        knows_all = GLOBAL in lnids
        if knows_all:
            candidates: set[Mac] = set(self.table)
        else:
            candidates = set()
            for lnid in scope:
                candidates |= self.table.macs(lnid)
        entries: dict[Mac, frozenset[Lnid]] = {}
        for mac in candidates:
            value = _entry(self.table.lnids(mac), scope, knows_all)
            if value is not None:
                entries[mac] = value
        local = {mac: self.locations[mac].port for mac in self._local.get(host, ())}
        return HostView(host, entries, local)

    def hosts_in(self, lnid: Lnid) -> frozenset[HostId]:
        return frozenset(self._hosts_by_lnid.get(lnid, ()))

    # ----- commands (validated here; each returns the per-host deltas) --------------------
    def state_of(self, mac: Mac) -> tuple[frozenset[Lnid], Location | None]:
        """A MAC's LNIDs and location, to restore with `restore` if a command cannot be made durable."""
        return self.table.lnids(mac), self.locations.get(mac)

    def restore(self, mac: Mac, state: tuple[frozenset[Lnid], Location | None]) -> None:
        self._change(mac, state[0], state[1] if state[0] else None)

    def add_host(self, host: HostId) -> None:
        self.hosts.add(host)

    def remove_host(self, host: HostId) -> None:
        if self._local.get(host):
            raise ModelError(f"host {host} still has {len(self._local[host])} registered vNIC(s)")
        self.hosts.discard(host)

    def reg(self, mac: Mac, lnid: Lnid, host: HostId | None, port: PortName | None = None) -> dict[HostId, HostDelta]:
        """Register `mac` in `lnid`, on `host` (None: external). Re-registering is a no-op."""
        if host is not None and host not in self.hosts:
            raise ModelError(f"unknown host {host!r} (register it with `hostvlan host add`)", "not_found")
        loc = self.locations.get(mac)
        if loc is not None and loc.host != host:
            where = f"on host {loc.host}" if loc.host else "as external"
            to = f"host {host}" if host else "external"
            raise ModelError(f"MAC {mac} is already registered {where}; use `move` to take it to {to}")
        new_port = port if port is not None else (loc.port if loc else None)
        return self._change(mac, self.table.lnids(mac) | {lnid}, Location(host, new_port))

    def unreg(self, mac: Mac, lnid: Lnid) -> dict[HostId, HostDelta]:
        lnids = self.table.lnids(mac)
        if lnid not in lnids:
            return {}
        rest = lnids - {lnid}
        return self._change(mac, rest, self.locations[mac] if rest else None)

    def rm(self, mac: Mac) -> dict[HostId, HostDelta]:
        if mac not in self.table:
            return {}
        return self._change(mac, _EMPTY, None)

    def move(self, mac: Mac, host: HostId | None, port: PortName | None = None) -> dict[HostId, HostDelta]:
        if mac not in self.table:
            raise ModelError(f"MAC {mac} is not registered", "not_found")
        if host is not None and host not in self.hosts:
            raise ModelError(f"unknown host {host!r} (register it with `hostvlan host add`)", "not_found")
        return self._change(mac, self.table.lnids(mac), Location(host, port))

    # ----- the calc graph -----------------------------------------------------------------
    def _change(self, mac: Mac, new_lnids: frozenset[Lnid], new_loc: Location | None) -> dict[HostId, HostDelta]:
        old_lnids = self.table.lnids(mac)
        old_loc = self.locations.get(mac)
        if old_lnids == new_lnids and old_loc == new_loc:
            return {}
        old_host = old_loc.host if old_loc else None
        new_host = new_loc.host if new_loc and new_lnids else None
        affected: set[HostId] = set(self._hosts_by_lnid.get(GLOBAL, ()))
        for lnid in (old_lnids | new_lnids) - {GLOBAL}:
            affected |= self._hosts_by_lnid.get(lnid, set())
        if GLOBAL in old_lnids or GLOBAL in new_lnids:
            affected |= self.hosts
        for h in (old_host, new_host):
            if h is not None:
                affected.add(h)
        before = {h: self.host_lnids(h) for h in affected}

        # mutate: table, location, host indexes
        if old_host is not None:
            self._unlocal(old_host, mac, old_lnids)
        for lnid in old_lnids - new_lnids:
            self.table.remove(mac, lnid)
        for lnid in new_lnids - old_lnids:
            self.table.add(mac, lnid)
        if new_lnids and new_loc is not None:
            self.locations[mac] = new_loc
        else:
            self.locations.pop(mac, None)
        if new_host is not None:
            self._enlocal(new_host, mac, new_lnids)

        deltas: dict[HostId, HostDelta] = {}
        for h in affected:
            d = self._host_delta(h, mac, old_lnids, new_lnids, before[h], self.host_lnids(h))
            if old_host == h and (new_host != h):
                d.unlocal.add(mac)
            if new_host == h and (old_host != h or (old_loc and new_loc and old_loc.port != new_loc.port)):
                assert new_loc is not None
                d.local[mac] = new_loc.port
            if d:
                deltas[h] = d
        return deltas

    def _host_delta(
        self,
        host: HostId,
        mac: Mac,
        old_lnids: frozenset[Lnid],
        new_lnids: frozenset[Lnid],
        l_old: frozenset[Lnid],
        l_new: frozenset[Lnid],
    ) -> HostDelta:
        d = HostDelta()
        s_old, s_new = l_old | {GLOBAL}, l_new | {GLOBAL}
        all_old, all_new = GLOBAL in l_old, GLOBAL in l_new
        candidates: set[Mac] = {mac}
        if l_old != l_new:
            if all_old != all_new:
                candidates |= set(self.table)
            else:
                for lnid in l_old ^ l_new:
                    candidates |= self.table.macs(lnid)
        for c in candidates:
            if c == mac:
                before = _entry(old_lnids, s_old, all_old)
                after = _entry(new_lnids, s_new, all_new)
            else:
                lnids = self.table.lnids(c)
                before = _entry(lnids, s_old, all_old)
                after = _entry(lnids, s_new, all_new)
            if after is None:
                if before is not None:
                    d.removed.add(c)
            elif after != before:
                d.entries[c] = after
        return d

    def _enlocal(self, host: HostId, mac: Mac, lnids: frozenset[Lnid]) -> None:
        self._local.setdefault(host, set()).add(mac)
        counts = self._host_lnids.setdefault(host, Counter())
        for lnid in lnids:
            if counts[lnid] == 0:
                self._hosts_by_lnid.setdefault(lnid, set()).add(host)
            counts[lnid] += 1

    def _unlocal(self, host: HostId, mac: Mac, lnids: frozenset[Lnid]) -> None:
        local = self._local.get(host)
        if local is None or mac not in local:
            return
        local.discard(mac)
        counts = self._host_lnids[host]
        for lnid in lnids:
            counts[lnid] -= 1
            if counts[lnid] == 0:
                del counts[lnid]
                hosts = self._hosts_by_lnid[lnid]
                hosts.discard(host)
                if not hosts:
                    del self._hosts_by_lnid[lnid]
