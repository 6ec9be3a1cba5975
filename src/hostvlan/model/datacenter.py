"""The whole data center and the per-host deltas each change causes (the calc graph).

`DataCenter` holds the authoritative LNID table and where every MAC lives, indexed so
that a change to one MAC computes, for exactly the hosts whose view changes, the
entries to set and delete (SPEC §5: a host getting its first VM of LNID 1 receives
every LNID-1 entry; hosts already in LNID 1 receive only the new entry; hosts without
LNID 1 receive nothing). Host views themselves are never stored: a snapshot is
derived from the indexes on demand, so memory grows with the table, not with
hosts × view size. Invariant (property-tested): applying the deltas of every change
to a host's snapshot gives `hostview.host_view` of the new data center.

Scale (Table 1: 8,192 hosts × 8,192-entry views): the work of a change is kept
proportional to the hosts and LNIDs it touches, never to entries one by one where a
whole LNID travels. A `Batch` applies many commands and computes each host's delta once,
from the states before and after; a host that gains an LNID gets it as `whole` (every
MAC whose only LNID it is, entry {LNID}: the common case of a tenant's VMs), which the
feed encodes once per LNID and shares between hosts. `DataCenter.reg` & co. are batches
of one command whose deltas are expanded to plain `HostDelta`s.

Addresses (issue 13): a MAC's addresses are kept as their compact text
(`model.addresses.addrs_text`, about 80 bytes for one IPv4 and one IPv6 address, where
`Addrs` objects would cost 1.2 kB) and indexed by net for the checks across the data
center: an address has one owner, unless registered shared, and then only MACs sharing an
LNID hold it. A host view holds the addresses of the entries it holds; an address change
is a delta (`HostDelta.addresses`) to exactly the hosts holding that MAC's entry.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from hostvlan.model.addresses import UNGUARDED, Addrs, AddrSet, IPNet, NetKey, addr_set, parse_addrs_text
from hostvlan.model.addrindex import AddressBook, AddressConflict
from hostvlan.model.delta import BulkDelta, HostDelta, apply_delta, merge_delta  # re-exported (see __all__)
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
        # members of each LNID split by how many LNIDs they have: a MAC whose only LNID is L
        # has the same entry {L} in every view that holds L (shared, encoded once per LNID)
        self._single: dict[Lnid, set[Mac]] = {}
        self._multi: dict[Lnid, set[Mac]] = {}
        self._single_version: dict[Lnid, int] = {}
        self._version = 0
        # addresses: the text of each MAC that has some, and the nets by key
        self.book = AddressBook(self.table)
        self._addr = self.book.text  # MAC -> its addresses' text (only MACs that have some)

    # ----- reading -----------------------------------------------------------------------
    def addr_text(self, mac: Mac) -> str:
        """The compact text of `mac`'s addresses ("" when it has none: unguarded)."""
        return self._addr.get(mac, "")

    def has_addresses(self) -> bool:
        """Whether any MAC has addresses (a MAC-only data center skips their encoding)."""
        return bool(self._addr)

    def addrs(self, mac: Mac) -> Addrs:
        text = self._addr.get(mac)
        return parse_addrs_text(text) if text else UNGUARDED

    def addresses(self) -> dict[Mac, Addrs]:
        """Every MAC's addresses (those that have some): the input of `hostview.host_view`."""
        return {m: parse_addrs_text(t) for m, t in self._addr.items()}

    def holders(self, mac: Mac) -> set[HostId]:
        """The hosts whose view holds `mac`'s entry (an empty entry included)."""
        lnids = self.table.lnids(mac)
        if not lnids:
            return set()
        if GLOBAL in lnids:
            return set(self.hosts)
        out = set(self._hosts_by_lnid.get(GLOBAL, ()))
        for lnid in lnids:
            out |= self._hosts_by_lnid.get(lnid, set())
        return out

    def host_lnids(self, host: HostId) -> frozenset[Lnid]:
        return frozenset(self._host_lnids.get(host, ()))

    def local_macs(self, host: HostId) -> frozenset[Mac]:
        return frozenset(self._local.get(host, ()))

    def singles(self, lnid: Lnid) -> frozenset[Mac]:
        """The MACs whose only LNID is `lnid`."""
        return frozenset(self._single.get(lnid, ()))

    def single_version(self, lnid: Lnid) -> int:
        """Changes whenever `singles(lnid)` does (a cache key for encodings of it)."""
        return self._single_version.get(lnid, 0)

    def view_parts(self, host: HostId) -> BulkDelta:
        """The host's view as a delta from nothing: whole LNIDs plus individual entries."""
        lnids = self.host_lnids(host)
        scope = lnids | {GLOBAL}
        knows_all = GLOBAL in lnids
        out = BulkDelta()
        entries = out.delta.entries
        for lnid in scope:
            if self._single.get(lnid):
                out.whole.append(lnid)
            for mac in self._multi.get(lnid, ()):
                entries[mac] = self.table.lnids(mac) & scope
        if knows_all:  # a global vNIC: every source is known, if only with an empty entry
            for mac in self.table:
                if mac not in entries and not (self.table.lnids(mac) & scope):
                    entries[mac] = _EMPTY
        if self._addr:
            texts = self._addr
            out.addrs = {m for m in entries if m in texts}
        out.delta.local = {mac: self.locations[mac].port for mac in self._local.get(host, ())}
        return out

    def view(self, host: HostId) -> HostView:
        d = self.expand(self.view_parts(host))
        return HostView(host, d.entries, d.local, d.addresses)

    def expand(self, bulk: BulkDelta) -> HostDelta:
        """`bulk` as a plain HostDelta (its whole LNIDs' entries listed one by one, the
        addresses parsed)."""
        if not bulk.whole and not bulk.addrs:
            return bulk.delta
        d = bulk.delta
        entries: dict[Mac, frozenset[Lnid]] = {}
        addresses: dict[Mac, Addrs] = {}
        texts = self._addr
        for lnid in bulk.whole:
            value = frozenset({lnid})
            for mac in self._single.get(lnid, ()):
                entries[mac] = value
                if mac in texts:
                    addresses[mac] = parse_addrs_text(texts[mac])
        entries.update(d.entries)
        addresses.update({m: self.addrs(m) for m in bulk.addrs})
        addresses.update(d.addresses)
        return HostDelta(entries, set(d.removed), dict(d.local), set(d.unlocal), addresses)

    # ----- commands (validated here; each returns the per-host deltas) --------------------
    def state_of(self, mac: Mac) -> tuple[frozenset[Lnid], Location | None]:
        """A MAC's LNIDs and location, to restore with `restore` if a command cannot be made durable."""
        return self.table.lnids(mac), self.locations.get(mac)

    def restore(self, mac: Mac, state: tuple[frozenset[Lnid], Location | None]) -> None:
        self._set(mac, state[0], state[1] if state[0] else None, None)

    def add_host(self, host: HostId) -> None:
        self.hosts.add(host)

    def remove_host(self, host: HostId) -> None:
        if self._local.get(host):
            raise ModelError(f"host {host} still has {len(self._local[host])} registered vNIC(s)")
        self.hosts.discard(host)

    def batch(self) -> Batch:
        """Apply many commands, then compute every host's delta once (`Batch.deltas`)."""
        return Batch(self)

    def load(self, rows: Iterable[tuple[Mac, HostId | None, PortName | None, frozenset[Lnid], str]]) -> None:
        """Fill from stored rows (MAC, host, port, LNIDs, addresses as text) without computing
        any delta. Stored addresses were checked when registered: they are indexed, not checked."""
        table, locations, hosts = self.table, self.locations, self.hosts
        single, multi = self._single, self._multi
        for mac, host, port, lnids, text in rows:
            if text and lnids:
                self.book.index(mac, text)
            if not lnids or mac in locations:
                self._set(mac, lnids, Location(host, port) if lnids else None, None)  # not the plain case
                continue
            if host is not None and host not in hosts:
                raise ModelError(f"stored MAC {mac} is on unknown host {host!r}", "not_found")
            for lnid in lnids:
                table.add(mac, lnid)
            locations[mac] = Location(host, port)
            if len(lnids) == 1:
                (lnid,) = lnids
                single.setdefault(lnid, set()).add(mac)
            else:
                for lnid in lnids:
                    multi.setdefault(lnid, set()).add(mac)
            if host is not None:
                self._enlocal(host, mac, lnids)
        self._version += 1
        for lnid in single:
            self._single_version[lnid] = self._version

    def reg(
        self,
        mac: Mac,
        lnid: Lnid,
        host: HostId | None,
        port: PortName | None = None,
        addrs: Addrs | AddrSet | None = None,
    ) -> dict[HostId, HostDelta]:
        """Register `mac` in `lnid`, on `host` (None: external). Re-registering is a no-op.
        `addrs` given: the MAC's addresses become exactly these (None: kept)."""
        b = self.batch()
        b.reg(mac, lnid, host, port, addrs)
        return self._expanded(b)

    def addr_add(self, mac: Mac, net: IPNet, shared: bool = False) -> dict[HostId, HostDelta]:
        b = self.batch()
        b.addr_add(mac, net, shared)
        return self._expanded(b)

    def addr_del(self, mac: Mac, net: IPNet) -> dict[HostId, HostDelta]:
        b = self.batch()
        b.addr_del(mac, net)
        return self._expanded(b)

    def unreg(self, mac: Mac, lnid: Lnid) -> dict[HostId, HostDelta]:
        b = self.batch()
        b.unreg(mac, lnid)
        return self._expanded(b)

    def rm(self, mac: Mac) -> dict[HostId, HostDelta]:
        b = self.batch()
        b.rm(mac)
        return self._expanded(b)

    def move(self, mac: Mac, host: HostId | None, port: PortName | None = None) -> dict[HostId, HostDelta]:
        b = self.batch()
        b.move(mac, host, port)
        return self._expanded(b)

    def _expanded(self, b: Batch) -> dict[HostId, HostDelta]:
        return {h: self.expand(d) for h, d in b.deltas().items()}

    # ----- addresses ----------------------------------------------------------------------
    def check_addrs(self, mac: Mac, addrs: AddrSet, lnids: frozenset[Lnid]) -> None:
        """Refuse addresses `mac` may not hold with LNIDs `lnids` (`AddressBook.check`)."""
        try:
            self.book.check(mac, addrs.keys, lnids)
        except AddressConflict as exc:
            raise ModelError(str(exc)) from None

    def _set_addrs(self, mac: Mac, addrs: AddrSet, batch: Batch) -> None:
        self._set_addr(mac, addrs.text, batch, addrs.keys)

    def _set_addr(
        self, mac: Mac, text: str, batch: Batch | None, keys: tuple[tuple[NetKey, bool], ...] | None = None
    ) -> bool:
        """Make `mac`'s addresses exactly `text`; records the before-state in `batch`."""
        old = self._addr.get(mac, "")
        if old == text:
            return False
        if batch is not None and mac not in batch.addr_before:
            batch.addr_before[mac] = old
        self.book.unindex(mac)
        if text:
            self.book.index(mac, text, keys)
        lnids = self.table.lnids(mac)
        if len(lnids) == 1:  # its LNID's shared encoding carries the addresses
            self._version += 1
            (lnid,) = lnids
            self._single_version[lnid] = self._version
        return True

    # ----- the indexes ----------------------------------------------------------------------
    def _set(self, mac: Mac, new_lnids: frozenset[Lnid], new_loc: Location | None, batch: Batch | None) -> bool:
        """Make `mac` have exactly these LNIDs and location; records the before-state in `batch`."""
        old_lnids = self.table.lnids(mac)
        old_loc = self.locations.get(mac)
        if not new_lnids:
            new_loc = None
        if old_lnids == new_lnids and old_loc == new_loc:
            return False
        if not new_lnids and mac in self._addr:  # a MAC gone takes its addresses with it
            self._set_addr(mac, "", batch)
        old_host = old_loc.host if old_loc else None
        new_host = new_loc.host if new_loc else None
        if batch is not None:
            if mac not in batch.before:
                batch.before[mac] = (old_lnids, old_loc)
            for h in (old_host, new_host):
                if h is not None and h not in batch.host_before:
                    batch.host_before[h] = self.host_lnids(h)
        if old_host is not None:
            self._unlocal(old_host, mac, old_lnids)
        if old_lnids != new_lnids:
            for lnid in old_lnids - new_lnids:
                self.table.remove(mac, lnid)
            for lnid in new_lnids - old_lnids:
                self.table.add(mac, lnid)
            self._reindex(mac, old_lnids, new_lnids)
        if new_loc is not None:
            self.locations[mac] = new_loc
        else:
            self.locations.pop(mac, None)
        if new_host is not None:
            self._enlocal(new_host, mac, new_lnids)
        return True

    def _reindex(self, mac: Mac, old: frozenset[Lnid], new: frozenset[Lnid]) -> None:
        self._version += 1
        if len(old) == 1:
            (lnid,) = old
            members = self._single[lnid]
            members.discard(mac)
            if not members:
                del self._single[lnid]
            self._single_version[lnid] = self._version
        else:
            for lnid in old:
                members = self._multi[lnid]
                members.discard(mac)
                if not members:
                    del self._multi[lnid]
        if len(new) == 1:
            (lnid,) = new
            self._single.setdefault(lnid, set()).add(mac)
            self._single_version[lnid] = self._version
        else:
            for lnid in new:
                self._multi.setdefault(lnid, set()).add(mac)

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


class Batch:
    """Commands applied to a DataCenter one by one (each validated, mutating at once); the
    per-host deltas of all of them together are computed once, from before and after.

    `undo()` puts every MAC back as it was before the batch (a command refused midway,
    or a write that could not be made durable).
    """

    def __init__(self, dc: DataCenter) -> None:
        self.dc = dc
        self.before: dict[Mac, tuple[frozenset[Lnid], Location | None]] = {}  # MACs changed
        self.host_before: dict[HostId, frozenset[Lnid]] = {}  # LNIDs of hosts whose vNICs changed
        self.addr_before: dict[Mac, str] = {}  # MACs whose addresses changed: their text before

    @property
    def changed(self) -> bool:
        return bool(self.before) or any(self.dc.addr_text(m) != t for m, t in self.addr_before.items())

    def touched(self) -> set[Mac]:
        """Every MAC whose row this batch changed (LNIDs, location or addresses)."""
        return set(self.before) | set(self.addr_before)

    def reg(
        self,
        mac: Mac,
        lnid: Lnid,
        host: HostId | None,
        port: PortName | None = None,
        addrs: Addrs | AddrSet | None = None,
    ) -> None:
        dc = self.dc
        if host is not None and host not in dc.hosts:
            raise ModelError(f"unknown host {host!r} (register it with `hostvlan host add`)", "not_found")
        loc = dc.locations.get(mac)
        if loc is not None and loc.host != host:
            where = f"on host {loc.host}" if loc.host else "as external"
            to = f"host {host}" if host else "external"
            raise ModelError(f"MAC {mac} is already registered {where}; use `move` to take it to {to}")
        new_port = port if port is not None else (loc.port if loc else None)
        lnids = dc.table.lnids(mac) | {lnid}
        if isinstance(addrs, Addrs):
            addrs = addr_set(addrs)
        if addrs is not None:
            dc.check_addrs(mac, addrs, lnids)
        dc._set(mac, lnids, Location(host, new_port), self)
        if addrs is not None:
            dc._set_addrs(mac, addrs, self)

    def addr_add(self, mac: Mac, net: IPNet, shared: bool = False) -> None:
        """Let `mac` (registered) hold `net` too (`shared`: a VIP other MACs of its LNIDs may hold)."""
        dc = self.dc
        lnids = dc.table.lnids(mac)
        if not lnids:
            raise ModelError(f"MAC {mac} is not registered", "not_found")
        now = dc.addrs(mac)
        if net in now.nets and (net in now.shared) == shared:
            return
        nets = now.nets | {net}
        new = Addrs(nets, (now.shared | {net}) if shared else (now.shared - {net}), now.router, now.dhcp_server)
        prepared = addr_set(new)
        dc.check_addrs(mac, prepared, lnids)
        dc._set_addrs(mac, prepared, self)

    def addr_del(self, mac: Mac, net: IPNet) -> None:
        """`mac` no longer holds `net` (a no-op if it does not)."""
        dc = self.dc
        if not dc.table.lnids(mac):
            raise ModelError(f"MAC {mac} is not registered", "not_found")
        now = dc.addrs(mac)
        if net not in now.nets:
            return
        dc._set_addrs(mac, addr_set(Addrs(now.nets - {net}, now.shared - {net}, now.router, now.dhcp_server)), self)

    def unreg(self, mac: Mac, lnid: Lnid) -> None:
        dc = self.dc
        lnids = dc.table.lnids(mac)
        if lnid in lnids:
            rest = lnids - {lnid}
            if rest and dc._addr.get(mac, "").find("~") >= 0:  # its shared nets must stay within an LNID
                dc.check_addrs(mac, addr_set(dc.addrs(mac)), rest)
            dc._set(mac, rest, dc.locations[mac] if rest else None, self)

    def rm(self, mac: Mac) -> None:
        if mac in self.dc.table:
            self.dc._set(mac, _EMPTY, None, self)

    def move(self, mac: Mac, host: HostId | None, port: PortName | None = None) -> None:
        dc = self.dc
        if mac not in dc.table:
            raise ModelError(f"MAC {mac} is not registered", "not_found")
        if host is not None and host not in dc.hosts:
            raise ModelError(f"unknown host {host!r} (register it with `hostvlan host add`)", "not_found")
        dc._set(mac, dc.table.lnids(mac), Location(host, port), self)

    def put(
        self, mac: Mac, lnids: frozenset[Lnid], host: HostId | None, port: PortName | None, addrs: str = ""
    ) -> None:
        """Make `mac` exactly this (no LNIDs: gone; `addrs` as `addrs_text`), unchecked: a row
        another replica validated."""
        self.dc._set(mac, lnids, Location(host, port) if lnids else None, self)
        if lnids:
            self.dc._set_addr(mac, addrs, self)

    def undo(self) -> None:
        for mac, (lnids, loc) in self.before.items():
            self.dc._set(mac, lnids, loc, None)
        for mac, text in self.addr_before.items():
            self.dc._set_addr(mac, text, None)
        self.before.clear()
        self.host_before.clear()
        self.addr_before.clear()

    # ----- the calc graph -----------------------------------------------------------------
    def deltas(self) -> dict[HostId, BulkDelta]:
        """Every host whose view changed, and how (nothing for a host whose view did not)."""
        dc = self.dc
        table = dc.table
        out: dict[HostId, BulkDelta] = {}
        # touched MACs by each LNID they had or have: those now single in that LNID apart
        touched_single: dict[Lnid, list[Mac]] = {}
        touched_other: dict[Lnid, list[Mac]] = {}
        for mac, (old, _) in self.before.items():
            new = table.lnids(mac)
            if len(new) == 1 and not old:  # a new MAC in one LNID: the bulk of a load
                (lnid,) = new
                touched_single.setdefault(lnid, []).append(mac)
                continue
            only = next(iter(new)) if len(new) == 1 else None
            for lnid in old | new:
                (touched_single if lnid == only else touched_other).setdefault(lnid, []).append(mac)

        # 1. hosts whose LNIDs changed: whole LNIDs come and go, plus the touched MACs
        rescoped: dict[HostId, tuple[frozenset[Lnid], frozenset[Lnid]]] = {}
        for h, l0 in self.host_before.items():
            l1 = dc.host_lnids(h)
            if l1 != l0:
                rescoped[h] = (l0, l1)
        for h, (l0, l1) in rescoped.items():
            s0, s1 = l0 | {GLOBAL}, l1 | {GLOBAL}
            k0, k1 = GLOBAL in l0, GLOBAL in l1
            bulk = BulkDelta()
            joined: frozenset[Lnid] = _EMPTY
            candidates: set[Mac] = set()
            if k0 != k1:
                candidates.update(table)
                candidates.update(self.before)
            else:
                joined = l1 - l0
                for lnid in joined:
                    if dc._single.get(lnid):
                        bulk.whole.append(lnid)
                    candidates.update(dc._multi.get(lnid, ()))
                for lnid in l0 - l1:
                    candidates.update(table.macs(lnid))
                for lnid in s0 | s1:
                    candidates.update(touched_other.get(lnid, ()))
                    if lnid not in joined:
                        candidates.update(touched_single.get(lnid, ()))
                if k1:
                    candidates.update(self.before)
            self._entries(bulk, candidates, s0, s1, k0, k1, joined)
            out[h] = bulk

        # 2. every other host: only the touched MACs, in the LNIDs it holds
        todo: dict[HostId, set[Lnid]] = {}
        every = touched_single.keys() | touched_other.keys()
        if GLOBAL in every:
            interested: set[HostId] = set(dc.hosts)
        else:
            interested = set(dc._hosts_by_lnid.get(GLOBAL, ()))
        for h in interested:
            if h not in rescoped:
                todo[h] = set(every)
        for lnid in every:
            for h in dc._hosts_by_lnid.get(lnid, ()):
                if h not in rescoped:
                    todo.setdefault(h, set()).add(lnid)
        for h, lnids in todo.items():
            l1 = dc.host_lnids(h)
            scope = l1 | {GLOBAL}
            knows_all = GLOBAL in l1
            candidates = set()
            for lnid in lnids:
                candidates.update(touched_single.get(lnid, ()))
                candidates.update(touched_other.get(lnid, ()))
            bulk = BulkDelta()
            self._entries(bulk, candidates, scope, scope, knows_all, knows_all, _EMPTY)
            if bulk:
                out[h] = bulk

        # 3. addresses changed of entries a host held before and holds now (an entry new to a
        # view brought its addresses in `_entries`; one gone took them)
        wholes = {h: set(b.whole) for h, b in out.items() if b.whole}
        for mac, old_text in self.addr_before.items():
            text = dc._addr.get(mac, "")
            if text == old_text:
                continue
            now = table.lnids(mac)
            was = self.before.get(mac)
            if not now or (was is not None and not was[0]):
                continue  # gone, or new: no view held it, each holder got its entry with its addresses
            for h in dc.holders(mac):
                got = out.get(h)
                if got is None:
                    got = out[h] = BulkDelta()
                elif mac in got.addrs or mac in got.delta.removed:
                    continue  # came with its entry (or went)
                elif text and len(now) == 1 and next(iter(now)) in wholes.get(h, ()):
                    continue  # travels with its whole LNID (which says nothing of addresses taken away)
                got.addrs.add(mac)

        # 4. vNICs placed, moved, re-ported or gone
        for mac, (_, old_loc) in self.before.items():
            new_loc = dc.locations.get(mac)
            old_host = old_loc.host if old_loc else None
            new_host = new_loc.host if new_loc else None
            if old_host is not None and old_host != new_host:
                out.setdefault(old_host, BulkDelta()).delta.unlocal.add(mac)
            if new_host is not None and new_loc is not None:
                if old_host != new_host or (old_loc is not None and old_loc.port != new_loc.port):
                    out.setdefault(new_host, BulkDelta()).delta.local[mac] = new_loc.port
        return out

    def _entries(
        self,
        bulk: BulkDelta,
        candidates: Iterable[Mac],
        s0: frozenset[Lnid],
        s1: frozenset[Lnid],
        k0: bool,
        k1: bool,
        joined: frozenset[Lnid],
    ) -> None:
        """Entries of `candidates` that differ between scope s0 (before) and s1 (after)."""
        table = self.dc.table
        before = self.before
        texts = self.dc._addr
        d = bulk.delta
        for c in candidates:
            now = table.lnids(c)
            if len(now) == 1 and now <= joined:
                continue  # travels with its whole LNID
            was = before[c][0] if c in before else now
            e0 = _entry(was, s0, k0)
            e1 = _entry(now, s1, k1)
            if e1 is None:
                if e0 is not None:
                    d.removed.add(c)
            elif e1 != e0:
                d.entries[c] = e1
                if e0 is None and c in texts:
                    bulk.addrs.add(c)


__all__ = ["Batch", "BulkDelta", "DataCenter", "HostDelta", "ModelError", "apply_delta", "merge_delta"]
