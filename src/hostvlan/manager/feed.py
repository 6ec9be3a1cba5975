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

from hostvlan.model.datacenter import HostDelta
from hostvlan.model.hostview import HostView
from hostvlan.model.ids import HostId, Lnid, format_lnid


def lnid_json(lnid: Lnid) -> int | str:
    return "global" if lnid == 0 else int(lnid)


def _lnids(lnids: frozenset[Lnid]) -> list[int | str]:
    return [lnid_json(x) for x in sorted(lnids)]


def snapshot_line(view: HostView, revision: int) -> bytes:
    msg: dict[str, Any] = {
        "type": "snapshot",
        "revision": revision,
        "entries": {m: _lnids(ls) for m, ls in view.entries.items()},
        "local": dict(view.local),
    }
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


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
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


@dataclass
class HostStatus:
    due: int = 0  # last revision that concerned this host (or its snapshot's)
    applied: int = 0  # last revision the agent reported applied
    applied_at: float = 0.0
    connected_since: float | None = None
    bytes_sent: int = 0
    subscribers: set[asyncio.Queue[bytes]] = field(default_factory=set)

    @property
    def connected(self) -> bool:
        return bool(self.subscribers)


class Feed:
    def __init__(self) -> None:
        self.status: dict[HostId, HostStatus] = {}

    def _st(self, host: HostId) -> HostStatus:
        return self.status.setdefault(host, HostStatus())

    def subscribe(self, host: HostId, snapshot: bytes, revision: int) -> asyncio.Queue[bytes]:
        st = self._st(host)
        q: asyncio.Queue[bytes] = asyncio.Queue()
        q.put_nowait(snapshot)
        st.subscribers.add(q)
        st.due = max(st.due, revision)
        st.applied = 0  # a new connection has applied nothing until it reports its snapshot
        st.connected_since = time.time()
        return q

    def unsubscribe(self, host: HostId, q: asyncio.Queue[bytes]) -> None:
        st = self._st(host)
        st.subscribers.discard(q)
        if not st.subscribers:
            st.connected_since = None

    def publish(self, revision: int, deltas: dict[HostId, HostDelta]) -> None:
        for host, delta in deltas.items():
            st = self._st(host)
            st.due = revision
            if st.subscribers:
                line = delta_line(delta, revision)
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
                q.put_nowait(b"")

    def forget(self, host: HostId) -> None:
        self.close(host)
        self.status.pop(host, None)


def describe_lnid(lnid: Lnid) -> str:
    return format_lnid(lnid)
