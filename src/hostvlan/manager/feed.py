"""Per-host change feeds: one queue per connected agent, fed in revision order.

Everything here runs on the manager's event loop thread: `publish` is called right after
a command became durable and the calc graph produced its per-host deltas, and
`subscribe` registers a queue in the same loop step as the snapshot is taken, so an
agent can never miss or double-apply a revision.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from hostvlan.model.addresses import addrs_text
from hostvlan.model.datacenter import BulkDelta, DataCenter
from hostvlan.model.ids import HostId, Lnid, Mac
from hostvlan.wire import Binding, Status, dumps, encode_heartbeat, lnids_json

CHUNK = 1 << 16
"""About how many bytes of a feed line are joined and sent at a time (`chunks`)."""

Line = list[bytes]
"""One feed line as the parts it is joined from (the newline included): an LNID's encoded
members are one shared `bytes`, so a line queued for many hosts costs little until sent.
An empty list ends the stream."""


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
        self._whole_addrs: dict[Lnid, tuple[int, bytes]] = {}

    def lnids(self, lnids: frozenset[Lnid]) -> bytes:
        got = self._sets.get(lnids)
        if got is None:
            got = dumps(lnids_json(lnids))
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

    def whole_addrs(self, lnid: Lnid) -> bytes:
        """`"mac":"addresses",…` for every MAC whose only LNID is `lnid` and that has addresses."""
        version = self.dc.single_version(lnid)
        got = self._whole_addrs.get(lnid)
        if got is not None and got[0] == version:
            return got[1]
        text = self.dc.addr_text
        frag = ",".join([f'"{mac}":"{t}"' for mac in self.dc.singles(lnid) if (t := text(mac))]).encode()
        self._whole_addrs[lnid] = (version, frag)
        return frag

    def _addrs(self, bulk: BulkDelta) -> Line:
        """The members of `addrs`: the whole LNIDs' (shared) and the delta's own."""
        parts: Line = []
        if self.dc.has_addresses():
            for lnid in bulk.whole:
                frag = self.whole_addrs(lnid)
                if frag:
                    if parts:
                        parts.append(b",")
                    parts.append(frag)
        if bulk.addrs:
            if parts:
                parts.append(b",")
            text = self.dc.addr_text
            parts.append(b",".join([b'"%s":"%s"' % (m.encode(), text(m).encode()) for m in bulk.addrs]))
        if bulk.delta.addresses:
            if parts:
                parts.append(b",")
            parts.append(
                b",".join(
                    [b'"%s":"%s"' % (m.encode(), addrs_text(a).encode()) for m, a in bulk.delta.addresses.items()]
                )
            )
        return parts

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
        addrs = self._addrs(view)
        return [
            b'{"type":"snapshot","revision":%d,"entries":{' % revision,
            *self._entries(view),
            b'},"local":' + dumps(dict(view.delta.local)),
            *([b',"addrs":{', *addrs, b"}}\n"] if addrs else [b"}\n"]),
        ]

    def delta(self, bulk: BulkDelta, revision: int) -> Line:
        d = bulk.delta
        parts: Line = [b'{"type":"delta","revision":%d' % revision]
        entries = self._entries(bulk)
        if entries:
            parts += [b',"entries":{', *entries, b"}"]
        if d.removed:
            parts.append(b',"removed":' + dumps(sorted(d.removed)))
        if d.local:
            parts.append(b',"local":' + dumps(dict(d.local)))
        if d.unlocal:
            parts.append(b',"unlocal":' + dumps(sorted(d.unlocal)))
        addrs = self._addrs(bulk)
        if addrs:
            parts += [b',"addrs":{', *addrs, b"}"]
        parts.append(b"}\n")
        return parts


@dataclass
class HostStatus:
    """What the manager knows of one host's agent: its feeds and its last report.

    The last report (in sync or not, error, bindings) outlives the connection: the data
    path keeps enforcing what it reported while its agent is away ("host down").
    """

    due: int = 0  # last revision that concerned this host (or its snapshot's)
    applied: int = 0  # last revision the agent reported applied
    applied_at: float = 0.0
    connected_since: float | None = None
    bytes_sent: int = 0
    subscribers: set[asyncio.Queue[Line]] = field(default_factory=set)
    in_sync: bool = True  # the agent's own word (its last apply, repair or audit succeeded)
    error: str | None = None
    bindings: dict[Mac, Binding] = field(default_factory=dict)  # local vNIC -> how the agent enforces it
    unbound: int = 0  # of `bindings`, those not bound
    reported: bool = False  # the agent has reported bindings at least once
    placed: dict[Mac, int] = field(default_factory=dict)  # vNIC -> revision it was (un)placed here, until reported
    history: deque[tuple[int, Line]] = field(default_factory=deque)  # its last HISTORY delta lines
    floor: int | None = None  # `history` holds every delta of this host after this revision

    @property
    def connected(self) -> bool:
        return bool(self.subscribers)


class Subscription:
    """One open feed of one host: its snapshot, then its lines as they are published.

    `next` waits for the next line, answering a heartbeat after `heartbeat_s` of
    silence, and None once the feed is closed (token rotated, host removed).
    """

    def __init__(self, feed: Feed, host: HostId, queue: asyncio.Queue[Line], heartbeat: Callable[[], int]) -> None:
        self._feed = feed
        self.host = host
        self._q = queue
        self._revision = heartbeat

    def _count(self, line: bytes) -> bytes:
        st = self._feed.status.get(self.host)  # gone if the host was removed meanwhile
        if st is not None:
            st.bytes_sent += len(line)
        return line

    def snapshot(self) -> bytes:
        """The first line (queued at subscription)."""
        return self._count(b"".join(self._q.get_nowait()))

    async def next(self, heartbeat_s: float) -> bytes | None:
        parts = await self.next_parts(heartbeat_s)
        return None if parts is None else b"".join(parts)

    async def next_parts(self, heartbeat_s: float) -> Line | None:
        """The next line as its parts (shared between hosts; send them with `chunks`, which
        joins one piece at a time: every host's whole copy of a pod's line at once, hundreds
        of kB each while its agent reads, would be the manager's largest memory)."""
        if self._q.empty():
            try:
                parts = await asyncio.wait_for(self._q.get(), heartbeat_s)
            except TimeoutError:
                return [encode_heartbeat(self._revision())]
        else:
            parts = self._q.get_nowait()
        if not parts:  # Feed.close
            return None
        st = self._feed.status.get(self.host)
        if st is not None:
            st.bytes_sent += sum(len(p) for p in parts)
        return parts

    def close(self) -> None:
        self._feed.unsubscribe(self.host, self._q)


def chunks(parts: Line, size: int = CHUNK) -> Iterator[bytes]:
    """`parts` joined into pieces of about `size` bytes, one at a time."""
    start, n = 0, 0
    for i, part in enumerate(parts):
        n += len(part)
        if n >= size:
            yield part if i == start else b"".join(parts[start : i + 1])
            start, n = i + 1, 0
    if start < len(parts):
        yield b"".join(parts[start:])


HISTORY = 64
"""Delta lines kept per host, so an agent can resume from its revision, on any replica (all
compute the same lines), without a snapshot."""


class Feed:
    def __init__(self) -> None:
        self.status: dict[HostId, HostStatus] = {}
        self.floor = 0  # the revision the history of every host starts after (the service's first)
        self.keep = 0  # delta lines kept per host (HISTORY with a replicated store; 0: none)

    def since(self, host: HostId, revision: int, now: int) -> Line | None:
        """Every delta line of `host` after `revision` (up to `now`), or None if not all are kept."""
        st = self.status.get(host)
        floor = self.floor if st is None or st.floor is None else st.floor
        if not self.keep or revision < floor or revision > now:
            return None
        out: Line = []
        if st is not None:
            for rev, line in st.history:
                if rev > revision:
                    out += line
        return out or encode_heartbeat_line(now)

    def _st(self, host: HostId) -> HostStatus:
        return self.status.setdefault(host, HostStatus())

    def subscribe(self, host: HostId, snapshot: Line, revision: int) -> asyncio.Queue[Line]:
        """A new stream of `host`, whose first line is `snapshot` (or the lines it resumes with)."""
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
        """Queue each host's delta (non-empty) for its open streams; encoded only if one is open.

        A vNIC placed on or taken off a host loses the binding its agent reported: it is
        pending until the agent reports again.
        """
        for host, delta in deltas.items():
            st = self._st(host)
            st.due = revision
            d = delta.delta
            if d.local or d.unlocal:
                for mac in (*d.local, *d.unlocal):
                    gone = st.bindings.pop(mac, None)
                    if gone is not None and not gone.bound:
                        st.unbound -= 1
                    st.placed[mac] = revision
            if not self.keep and not st.subscribers:
                continue
            line = encoder.delta(delta, revision)
            if self.keep:
                st.history.append((revision, line))
                if len(st.history) > self.keep:
                    st.floor = st.history.popleft()[0]
            for q in st.subscribers:
                q.put_nowait(line)

    def report(self, host: HostId, status: Status, local: Callable[[Mac], bool] = lambda m: True) -> None:
        """Keep a status report; of its bindings only those of vNICs `local` to the host."""
        st = self._st(host)
        st.applied = max(st.applied, status.revision)
        st.applied_at = time.time()
        st.in_sync = status.in_sync
        st.error = status.error
        if status.bindings is not None:
            # a report of revision R cannot speak for a vNIC placed here after R
            placed, rev = st.placed, status.revision
            st.bindings = {m: b for m, b in status.bindings.items() if placed.get(m, -1) <= rev and local(m)}
            st.unbound = sum(1 for b in st.bindings.values() if not b.bound)
            st.reported = True
            if placed:
                st.placed = {m: r for m, r in placed.items() if r > rev}

    def close(self, host: HostId) -> None:
        """End every open stream of `host` (its token was rotated, or it was removed).

        The empty line is the end marker `Subscription.next` stops on.
        """
        st = self.status.get(host)
        if st is not None:
            for q in st.subscribers:
                q.put_nowait([])

    def forget(self, host: HostId) -> None:
        self.close(host)
        self.status.pop(host, None)


def encode_heartbeat_line(revision: int) -> Line:
    return [encode_heartbeat(revision)]
