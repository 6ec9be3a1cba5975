"""Host deltas: what changes in one host's view, and how they fold (pure).

`DataCenter` (model/datacenter.py) computes them; the feed carries them (`wire`); the agent
folds and applies them. Re-exported by `model.datacenter`, where they were first defined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hostvlan.model.addresses import UNGUARDED, Addrs
from hostvlan.model.hostview import HostView
from hostvlan.model.ids import Lnid, Mac, PortName


@dataclass
class HostDelta:
    """What changes in one host's view: entries set/deleted, local vNICs set/unset, and the
    addresses of entries set (`UNGUARDED`: the MAC has none any more). An entry deleted
    takes its addresses with it; an entry new to the view comes with its addresses."""

    entries: dict[Mac, frozenset[Lnid]] = field(default_factory=dict)
    removed: set[Mac] = field(default_factory=set)
    local: dict[Mac, PortName | None] = field(default_factory=dict)
    unlocal: set[Mac] = field(default_factory=set)
    addresses: dict[Mac, Addrs] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.entries or self.removed or self.local or self.unlocal or self.addresses)


@dataclass
class BulkDelta:
    """One host's delta as a batch computes it: `delta`, plus every MAC whose only LNID is
    one of `whole`, with the entry {that LNID} (see `DataCenter.expand`), plus `addrs`: the
    MACs whose addresses (as the data center holds them now) travel with it. The manager's
    feed encodes their text as it is; `DataCenter.expand` parses them into the plain delta."""

    delta: HostDelta = field(default_factory=HostDelta)
    whole: list[Lnid] = field(default_factory=list)
    addrs: set[Mac] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.whole or self.delta or self.addrs)


def apply_delta(view: HostView, delta: HostDelta) -> HostView:
    entries = {m: ls for m, ls in view.entries.items() if m not in delta.removed}
    entries.update(delta.entries)
    local = {m: p for m, p in view.local.items() if m not in delta.unlocal}
    local.update(delta.local)
    addresses = {m: a for m, a in view.addresses.items() if m not in delta.removed}
    for m, a in delta.addresses.items():
        if a == UNGUARDED:
            addresses.pop(m, None)
        else:
            addresses[m] = a
    return HostView(view.host, entries, local, addresses)


def merge_delta(acc: HostDelta, later: HostDelta) -> None:
    """Fold `later` into `acc`, as if both were applied in order."""
    for mac in later.removed:
        acc.entries.pop(mac, None)
        acc.addresses.pop(mac, None)
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
    acc.addresses.update(later.addresses)
