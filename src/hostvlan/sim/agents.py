"""Simulated agents: thousands of end hosts in one process, speaking the real agent protocol.

Each `SimAgent` does what `hostvlan.agent.daemon.Agent` does on the wire, so the manager
cannot tell it from a real agent:

- `GET /v1/hosts/{H}/feed` over HTTP/1.1 with `Authorization: Bearer <host token>`,
  reading the chunked stream of JSON lines (snapshot, then deltas, heartbeats);
- applies the snapshot, then each delta in order, to its in-memory data path (the
  host's view: MAC → LNIDs, and its local vNICs → ports); a delta before a snapshot, or
  a revision that does not grow, is a protocol error the agent counts and reconnects on;
- reports the applied revision with `POST /v1/hosts/{H}/status` on a second, kept-alive
  connection, one report in flight at a time (coalescing, like the real agent; unlike
  it, a failed report is retried until answered, see `REPORT_PAUSE_MAX_S`), with its bindings
  (every local vNIC bound, on its registered port or on `sim-<n>`) whenever its local
  vNICs changed since the last report;
- reconnects with the real agent's backoff (0.1 s doubling to 5 s, jittered ×0.5–1.5).

Raw asyncio streams keep thousands of agents in one process affordable; every agent has
its own two TCP connections. Parsed MACs and LNID lists are shared across agents (see
`intern_entries`). Feed bytes of heartbeat lines are counted apart from the rest.

Lines are decoded and status bodies encoded by `hostvlan.wire` (the format's one home),
at its JSON level: entries stay JSON lists, shared across agents.

May import `hostvlan.model` and `hostvlan.wire` only (never the manager or the real
agent's data paths).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from hostvlan import wire
from hostvlan.model.ids import Mac, PortName

_loads: Callable[[bytes], Any] = json.loads
try:  # a faster parser if installed (optional dependency group `bench`)
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - exercised when orjson is absent
    pass

LnidsJson = list[int | str]

# Hosts of a data center hold many of the same entries: sharing the parsed objects keeps
# 8,192 simulated 8,192-entry views in a few GiB. LNID lists are shared for good (there are
# few distinct ones; never mutated); MAC strings through a small table renewed when full,
# which catches the hosts that receive the same entries at about the same time (a small
# table stays in the CPU's caches; a table of every MAC would cost more than the parsing).
_KEYS_MAX = 1 << 16
_keys: dict[str, str] = {}
_VALUES: dict[tuple[int | str, ...], LnidsJson] = {}


def intern_entries(entries: dict[str, LnidsJson]) -> dict[str, LnidsJson]:
    """A view's entries with MAC strings and LNID lists shared across agents (C-speed maps)."""
    global _keys
    if len(_keys) > _KEYS_MAX:
        _keys = {}
    ks = entries.keys()
    vs = entries.values()
    return dict(zip(map(_keys.setdefault, ks, ks), map(_VALUES.setdefault, map(tuple, vs), vs), strict=True))


REPORT_PAUSE_MAX_S = 2.0
REPORT_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
"""A status report is sent on a kept-alive connection; one the manager closed is replaced at
once, and further failures (or a busy manager's 408/503) are retried after a growing pause,
until one is answered (the real agent waits for the next change instead; a benchmark must
not leave a host unreported: on a loaded machine six quick tries were not enough at 8,192
hosts and the load phase waited for its timeout)."""


class ProtocolError(RuntimeError):
    """The manager's feed broke the protocol (bad HTTP, delta before snapshot, revision order)."""


@dataclass
class SimView:
    """The in-memory data path of one simulated host: what its tenant filter would enforce."""

    entries: dict[str, LnidsJson] = field(default_factory=dict)
    local: dict[str, str | None] = field(default_factory=dict)
    revision: int = -1  # -1: no snapshot yet (closed)

    local_version: int = 0  # grows whenever `local` may have changed

    def snapshot(self, msg: wire.Snapshot) -> None:
        if msg.entries != self.entries:  # like the real agent: diff against what the data path holds
            self.entries = intern_entries(msg.entries)
        self.local = dict(msg.local)
        self.revision = msg.revision
        self.local_version += 1

    def delta(self, msg: wire.Delta) -> None:
        if self.revision < 0:
            raise ProtocolError("delta before snapshot")
        if msg.revision <= self.revision:
            raise ProtocolError(f"delta r{msg.revision} after r{self.revision}")
        entries = self.entries
        for mac in msg.removed:
            entries.pop(mac, None)
        if msg.entries:
            entries.update(intern_entries(msg.entries))
        if msg.unlocal or msg.local:
            for mac in msg.unlocal:
                self.local.pop(mac, None)
            self.local.update(msg.local)
            self.local_version += 1
        self.revision = msg.revision

    def bindings(self) -> dict[Mac, wire.Binding]:
        """What a real agent would report: every local vNIC bound (the simulated host has every port)."""
        return {
            Mac(m): wire.Binding(PortName(p or f"sim-{i}"), "bound")
            for i, (m, p) in enumerate(sorted(self.local.items()))
        }


@dataclass
class Counters:
    bytes_in: int = 0  # feed bytes of snapshot and delta lines (heartbeats excluded)
    lines_in: int = 0
    heartbeats: int = 0
    snapshots: int = 0
    connects: int = 0
    errors: int = 0
    reports: int = 0
    report_retries: int = 0


class SimAgent:
    def __init__(self, fleet: Fleet, name: str, token: str) -> None:
        self.fleet = fleet
        self.name = name
        self.token = token
        self.view = SimView()
        self.counters = Counters()
        self.applied_at = 0.0  # perf_counter() when view.revision was applied
        self.reported = -1  # last revision the manager acknowledged in a status report
        self.bindings_reported = 0  # `view.local_version` of the bindings last reported
        self.reported_at = 0.0
        self.connected = False
        self.last_error = ""
        self._status: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._feed_w: asyncio.StreamWriter | None = None
        self.at = len(fleet.agents) % len(fleet.addrs)  # the replica in use (agents spread over them)

    # ----- feed ----------------------------------------------------------------------------------
    async def run(self) -> None:
        backoff = 0.1
        while True:
            snapshots, lines = self.counters.snapshots, self.counters.lines_in
            try:
                await self._follow()
                self.last_error = "feed closed by the manager"
            except (OSError, EOFError, asyncio.IncompleteReadError, ValueError, ProtocolError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ProtocolError):
                    self.counters.errors += 1
            finally:
                self.connected = False
                if self._feed_w is not None:
                    self._feed_w.close()
                    self._feed_w = None
            if self.counters.snapshots != snapshots or self.counters.lines_in != lines:
                backoff = 0.1
            if len(self.fleet.addrs) > 1:  # the next replica; status reports follow the feed
                self.at = (self.at + 1) % len(self.fleet.addrs)
                self._close_status()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(self.fleet.backoff_max, backoff * 2)

    async def _follow(self) -> None:
        reader, writer = await self.fleet.connect(self.at)
        self._feed_w = writer
        since = f"?since={self.view.revision}" if self.view.revision >= 0 else ""
        writer.write(self.fleet.request("GET", f"/v1/hosts/{self.name}/feed{since}", self.token))
        status, headers = await _read_head(reader)
        if status != 200:
            body = await _read_body(reader, headers)
            raise ProtocolError(f"manager refused the feed ({status}): {body[:200]!r}")
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise ProtocolError("the feed is not a chunked stream")
        self.connected = True
        self.counters.connects += 1
        if since and (self._status_task is None or self._status_task.done()):  # resumed: report here
            self._status_task = asyncio.get_running_loop().create_task(self._post_status())
        # a line's pieces until its newline comes: joined once, and only the new chunk is
        # searched (a pod's line is hundreds of kB in 64 KiB chunks: gluing each chunk to
        # what came before and searching it all again copied and scanned it chunks² times)
        pending: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            chunk = (await reader.readexactly(size + 2))[:-2]
            start = 0
            while True:
                end = chunk.find(b"\n", start)
                if end < 0:
                    if start < len(chunk):
                        pending.append(chunk[start:] if start else chunk)
                    break
                if pending:
                    pending.append(chunk[start:end])
                    self._line(b"".join(pending))
                    pending = []
                elif end > start:
                    self._line(chunk[start:end])
                start = end + 1

    def _line(self, line: bytes) -> None:
        try:
            msg = wire.decode_feed(_loads(line))
        except wire.WireError as exc:
            raise ProtocolError(f"bad feed line: {exc}") from None
        if isinstance(msg, wire.Heartbeat):
            self.counters.heartbeats += 1
            return
        self.counters.bytes_in += len(line) + 1
        self.counters.lines_in += 1
        if isinstance(msg, wire.Snapshot):
            self.view.snapshot(msg)
            self.counters.snapshots += 1
        elif isinstance(msg, wire.Delta):
            self.view.delta(msg)
        else:
            return
        self.applied_at = time.perf_counter()
        self.fleet.applied(self)
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.get_running_loop().create_task(self._post_status())

    # ----- status ----------------------------------------------------------------------------------
    async def _post_status(self) -> None:
        sent = -1
        status = 0
        while sent != self.view.revision:
            sent = self.view.revision
            version = self.view.local_version
            bindings = self.view.bindings() if version != self.bindings_reported else None
            body = wire.dumps(wire.encode_status(wire.Status(sent, bindings=bindings)))
            attempt = 0
            while True:
                attempt += 1
                if attempt > 2:  # the manager is busy or restarting: try again a little later
                    self.counters.report_retries += 1
                    await asyncio.sleep(min(REPORT_PAUSE_MAX_S, 0.2 * attempt))
                try:
                    if self._status is None:
                        self._status = await self.fleet.connect(self.at)
                    reader, writer = self._status
                    writer.write(self.fleet.request("POST", f"/v1/hosts/{self.name}/status", self.token, body))
                    status, headers = await _read_head(reader)
                    await _read_body(reader, headers)
                    if headers.get("connection", "").lower() == "close":
                        self._close_status()
                except (OSError, EOFError, asyncio.IncompleteReadError, ValueError, ProtocolError) as exc:
                    self._close_status()
                    self.last_error = f"status report failed: {type(exc).__name__}: {exc}"
                    continue
                if status not in REPORT_RETRY_STATUSES:
                    break
                self.last_error = f"status report refused ({status}), trying again"
            if status != 200:
                self.last_error = f"status report refused ({status})"
                return
            self.counters.reports += 1
            if bindings is not None:
                self.bindings_reported = version
            self.reported = sent
            self.reported_at = time.perf_counter()
            self.fleet.reported(self)

    def _close_status(self) -> None:
        if self._status is not None:
            self._status[1].close()
            self._status = None

    def close(self) -> None:
        self._close_status()
        if self._feed_w is not None:
            self._feed_w.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"not an HTTP answer: {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return out
            out += (await reader.readexactly(size + 2))[:-2]
    return await reader.readexactly(int(headers.get("content-length", "0")))


@dataclass
class _Waiter:
    revision: int
    pending: set[str]
    times: dict[str, float]
    done: asyncio.Event
    reported: bool


class Fleet:
    """Many `SimAgent`s against one manager (`http://HOST:PORT`), in the running event loop.

    `wait_applied(names, revision)` resolves once each named agent's data path holds
    `revision` (or later) and returns when each got there; `on_line` hooks see nothing:
    measurements read each agent's `counters`.
    """

    def __init__(self, url: str, backoff_max: float = 5.0) -> None:
        self.addrs: list[tuple[str, int]] = []  # `URL1,URL2,...`: replicas, agent i starts on i mod n
        for u in url.split(","):
            if not u.startswith("http://"):
                raise ValueError("simulated agents speak plain HTTP (http://HOST:PORT)")
            host, _, port = u[len("http://") :].rstrip("/").rpartition(":")
            self.addrs.append((host.strip("[]"), int(port)))
        self.host, self.port = self.addrs[0]
        self.backoff_max = backoff_max
        self.agents: dict[str, SimAgent] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[str, list[_Waiter]] = {}
        self.on_applied: Callable[[SimAgent], None] | None = None

    def request(self, method: str, path: str, token: str, body: bytes = b"") -> bytes:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAuthorization: Bearer {token}\r\n"
        if body:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return head.encode() + b"\r\n" + body

    async def connect(self, at: int = 0) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = self.addrs[at]
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    def add(self, name: str, token: str) -> SimAgent:
        agent = SimAgent(self, name, token)
        self.agents[name] = agent
        return agent

    def start(self, names: Iterable[str] | None = None) -> None:
        loop = asyncio.get_running_loop()
        for name in self.agents if names is None else names:
            self._tasks.append(loop.create_task(self.agents[name].run(), name=f"sim-{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for a in self.agents.values():
            a.close()

    # ----- waiting --------------------------------------------------------------------------------
    def applied(self, agent: SimAgent) -> None:
        self._notify(agent, reported=False)
        if self.on_applied is not None:
            self.on_applied(agent)

    def reported(self, agent: SimAgent) -> None:
        self._notify(agent, reported=True)

    def _notify(self, agent: SimAgent, reported: bool) -> None:
        waiters = self._waiters.get(agent.name)
        if not waiters:
            return
        rev = agent.reported if reported else agent.view.revision
        t = agent.reported_at if reported else agent.applied_at
        for w in list(waiters):
            if w.reported == reported and rev >= w.revision:
                w.times[agent.name] = t
                w.pending.discard(agent.name)
                waiters.remove(w)
                if not w.pending:
                    w.done.set()

    async def wait_applied(
        self, names: Iterable[str], revision: int, timeout: float, reported: bool = False
    ) -> dict[str, float]:
        """perf_counter() time at which each agent applied (or reported) `revision` or later.

        Raises TimeoutError naming how many are missing.
        """
        w = _Waiter(revision, set(), {}, asyncio.Event(), reported)
        for name in names:
            a = self.agents[name]
            rev = a.reported if reported else a.view.revision
            if rev >= revision:
                w.times[name] = a.reported_at if reported else a.applied_at
            else:
                w.pending.add(name)
                self._waiters.setdefault(name, []).append(w)
        if w.pending:
            try:
                await asyncio.wait_for(w.done.wait(), timeout)
            except TimeoutError:
                for name in w.pending:
                    lst = self._waiters.get(name, [])
                    if w in lst:
                        lst.remove(w)
                some = sorted(w.pending)[:3]
                errs = {n: self.agents[n].last_error for n in some}
                raise TimeoutError(f"{len(w.pending)} agents did not reach r{revision} in {timeout}s: {errs}") from None
        return w.times

    def bytes_in(self) -> dict[str, int]:
        return {n: a.counters.bytes_in for n, a in self.agents.items()}


__all__ = ["Fleet", "ProtocolError", "SimAgent", "SimView", "intern_entries"]
