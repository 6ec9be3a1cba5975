"""Per-host change feeds: one queue per connected agent, fed in revision order.

Everything here runs on the manager's event loop thread: `publish` is called right after
a command became durable and the calc graph produced its per-host deltas, and
`subscribe` registers a queue in the same loop step as the snapshot is taken, so an
agent can never miss or double-apply a revision.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from hostvlan.model.datacenter import BulkDelta, DataCenter, HostDelta
from hostvlan.model.hostview import HostView
from hostvlan.model.ids import HostId, Lnid

Line = list[bytes]
"""One feed line as the parts it is joined from (the newline included): an LNID's encoded
members are one shared `bytes`, so a line queued for many hosts costs little until sent.
An empty list ends the stream."""


def lnid_json(lnid: Lnid) -> int | str:
    return "global" if lnid == 0 else int(lnid)


def _lnids(lnids: frozenset[Lnid]) -> list[int | str]:
    return [lnid_json(x) for x in sorted(lnids)]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Encoder:
    """JSON lines of host views and deltas (docs/control-plane.md, "Agent feed").

    A whole LNID (`BulkDelta.whole`: every MAC whose only LNID it is) is encoded once
    per version of its membership and shared by every line that carries it, which is
    what keeps 8,192 hosts × 8,192-entry views affordable.
    """

    def __init__(self, dc: DataCenter) -> None:
        self.dc = dc
        self._sets: dict[frozenset[Lnid], bytes] = {}
        self._whole: dict[Lnid, tuple[int, bytes]] = {}

    def lnids(self, lnids: frozenset[Lnid]) -> bytes:
        got = self._sets.get(lnids)
        if got is None:
            got = _dumps(_lnids(lnids))
            if len(self._sets) < 65536:
                self._sets[lnids] = got
        return got

    def whole(self, lnid: Lnid) -> bytes:
        """`"mac":[lnid],…` for every MAC whose only LNID is `lnid` (b"" if none)."""
        version = self.dc.single_version(lnid)
        got = self._whole.get(lnid)
        if got is not None and got[0] == version:
            return got[1]
        value = self.lnids(frozenset({lnid})).decode()
        frag = ",".join([f'"{mac}":{value}' for mac in self.dc.singles(lnid)]).encode()
        self._whole[lnid] = (version, frag)
        return frag

    def _entries(self, bulk: BulkDelta) -> Line:
        parts: Line = []
        for lnid in bulk.whole:
            frag = self.whole(lnid)
            if frag:
                if parts:
                    parts.append(b",")
                parts.append(frag)
        if bulk.delta.entries:
            if parts:
                parts.append(b",")
            enc = self.lnids
            parts.append(b",".join([b'"%s":%s' % (m.encode(), enc(ls)) for m, ls in bulk.delta.entries.items()]))
        return parts

    def snapshot(self, view: BulkDelta, revision: int) -> Line:
        return [
            b'{"type":"snapshot","revision":%d,"entries":{' % revision,
            *self._entries(view),
            b'},"local":' + _dumps(dict(view.delta.local)) + b"}\n",
        ]

    def delta(self, bulk: BulkDelta, revision: int) -> Line:
        d = bulk.delta
        parts: Line = [b'{"type":"delta","revision":%d' % revision]
        entries = self._entries(bulk)
        if entries:
            parts += [b',"entries":{', *entries, b"}"]
        if d.removed:
            parts.append(b',"removed":' + _dumps(sorted(d.removed)))
        if d.local:
            parts.append(b',"local":' + _dumps(dict(d.local)))
        if d.unlocal:
            parts.append(b',"unlocal":' + _dumps(sorted(d.unlocal)))
        parts.append(b"}\n")
        return parts


def snapshot_line(view: HostView, revision: int) -> bytes:
    msg: dict[str, Any] = {
        "type": "snapshot",
        "revision": revision,
        "entries": {m: _lnids(ls) for m, ls in view.entries.items()},
        "local": dict(view.local),
    }
    return _dumps(msg) + b"\n"


def delta_line(delta: HostDelta, revision: int) -> bytes:
    msg: dict[str, Any] = {"type": "delta", "revision": revision}
    if delta.entries:
        msg["entries"] = {m: _lnids(ls) for m, ls in delta.entries.items()}
    if delta.removed:
        msg["removed"] = sorted(delta.removed)
    if delta.local:
        msg["local"] = dict(delta.local)
    if delta.unlocal:
        msg["unlocal"] = sorted(delta.unlocal)
    return _dumps(msg) + b"\n"


@dataclass
class HostStatus:
    due: int = 0  # last revision that concerned this host (or its snapshot's)
    applied: int = 0  # last revision the agent reported applied
    applied_at: float = 0.0
    connected_since: float | None = None
    bytes_sent: int = 0
    subscribers: set[asyncio.Queue[Line]] = field(default_factory=set)

    @property
    def connected(self) -> bool:
        return bool(self.subscribers)


class Feed:
    def __init__(self) -> None:
        self.status: dict[HostId, HostStatus] = {}

    def _st(self, host: HostId) -> HostStatus:
        return self.status.setdefault(host, HostStatus())

    def subscribe(self, host: HostId, snapshot: Line, revision: int) -> asyncio.Queue[Line]:
        st = self._st(host)
        q: asyncio.Queue[Line] = asyncio.Queue()
        q.put_nowait(snapshot)
        st.subscribers.add(q)
        st.due = max(st.due, revision)
        st.applied = 0  # a new connection has applied nothing until it reports its snapshot
        st.connected_since = time.time()
        return q

    def unsubscribe(self, host: HostId, q: asyncio.Queue[Line]) -> None:
        st = self._st(host)
        st.subscribers.discard(q)
        if not st.subscribers:
            st.connected_since = None

    def publish(self, revision: int, deltas: dict[HostId, BulkDelta], encoder: Encoder) -> None:
        """Queue each host's delta (non-empty) for its open streams; encoded only if one is open."""
        for host, delta in deltas.items():
            st = self._st(host)
            st.due = revision
            if st.subscribers:
                line = encoder.delta(delta, revision)
                for q in st.subscribers:
                    q.put_nowait(line)

    def report(self, host: HostId, revision: int) -> None:
        st = self._st(host)
        st.applied = max(st.applied, revision)
        st.applied_at = time.time()

    def close(self, host: HostId) -> None:
        """End every open stream of `host` (its token was rotated, or it was removed).

        The empty line is the end marker the API's stream generator stops on.
        """
        st = self.status.get(host)
        if st is not None:
            for q in st.subscribers:
                q.put_nowait([])

    def forget(self, host: HostId) -> None:
        self.close(host)
        self.status.pop(host, None)
