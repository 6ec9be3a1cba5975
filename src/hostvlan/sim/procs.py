"""Simulated agents spread over worker processes, driven from one place.

One Python process parses about one 8,192-entry view per few milliseconds: for 8,192
hosts that is the simulator, not the manager, setting the pace. `Agents` shards the
hosts over `workers` processes (contiguous ranges, so a pod's hosts stay together),
each running a `Fleet` on its own event loop; the driver talks to them over pipes.
Times are `time.perf_counter()` (CLOCK_MONOTONIC, the same clock in every process).
`workers=0` keeps the fleet in the driver's own process (tests, small runs).

May import `hostvlan.sim` only (never the manager or the real agent).
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import multiprocessing
import resource
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from hostvlan.sim.agents import Fleet
from hostvlan.sim.layout import Layout


@dataclass(frozen=True)
class AgentState:
    """What the driver may ask of one simulated agent."""

    revision: int  # revision of the view its data path holds (-1: none yet)
    applied_at: float
    reported: int  # last revision the manager acknowledged in a status report
    reported_at: float
    snapshots: int
    bytes_in: int  # feed bytes of snapshots and deltas (heartbeats excluded)
    entries: int  # entries of its view
    last_error: str


def _states(fleet: Fleet, names: list[str] | None) -> dict[str, AgentState]:
    agents = fleet.agents
    out = {}
    for n in agents if names is None else names:
        a = agents[n]
        c = a.counters
        out[n] = AgentState(
            a.view.revision,
            a.applied_at,
            a.reported,
            a.reported_at,
            c.snapshots,
            c.bytes_in,
            len(a.view.entries),
            a.last_error,
        )
    return out


def _check(fleet: Fleet, layout: Layout, hosts: list[int]) -> tuple[list[int], list[str]]:
    """(entries per host, hosts whose view differs from the layout's)."""
    sizes: list[int] = []
    wrong: list[str] = []
    cache: dict[int, dict[str, list[int | str]]] = {}
    for h in hosts:
        pod = layout.pod(h)
        if pod not in cache:
            cache.clear()
            cache[pod] = {m: list(v) for m, v in layout.pod_entries(pod).items()}
        name = layout.host_name(h)
        view = fleet.agents[name].view
        sizes.append(len(view.entries))
        if view.entries != cache[pod] or view.local != layout.expected_local(h):
            wrong.append(name)
    return sizes, wrong


async def _serve(fleet: Fleet, conn: Connection) -> None:
    """A worker: answer the driver's requests until told to stop."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    _reader(conn, lambda msg: loop.call_soon_threadsafe(inbox.put_nowait, msg))

    async def answer(rid: int, coro: Any) -> None:
        try:
            conn.send((rid, True, await coro))
        except Exception as exc:  # sent back to the driver, which raises it
            conn.send((rid, False, f"{type(exc).__name__}: {exc}"))

    async def value(v: Any) -> Any:
        return v

    tasks = set()
    while True:
        rid, cmd, args = await inbox.get()
        if cmd == "stop":
            await fleet.stop()
            conn.send((rid, True, None))
            return
        if cmd == "wait":
            coro: Any = fleet.wait_applied(*args)
        elif cmd == "states":
            coro = value(_states(fleet, args))
        elif cmd == "check":
            coro = value(_check(fleet, Layout(*args[0]), args[1]))
        else:
            coro = value(None)
        t = loop.create_task(answer(rid, coro))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


def _reader(conn: Connection, deliver: Callable[[Any], object]) -> None:
    """Blocking reads of `conn` in a thread (an event loop would make the pipe non-blocking
    under a message read halfway); each message, or None at EOF, goes to `deliver`."""

    def run() -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                deliver(None)
                return
            deliver(msg)

    threading.Thread(target=run, name="sim-pipe", daemon=True).start()


def _worker(conn: Connection, url: str, agents: list[tuple[str, str]]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    gc.disable()  # millions of long-lived, acyclic view entries

    async def main() -> None:
        fleet = Fleet(url)
        for name, token in agents:
            fleet.add(name, token)
        fleet.start()
        await _serve(fleet, conn)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())


class Agents:
    """Simulated agents for `agents` [(host name, host token)], in `workers` processes."""

    def __init__(self, url: str, workers: int = 2) -> None:
        self.url = url
        self.workers = workers
        self.names: list[str] = []
        self._shard: dict[str, int] = {}
        self._conns: list[Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self.local: Fleet | None = None  # workers=0: the fleet itself

    def start(self, agents: list[tuple[str, str]]) -> None:
        self.names = [n for n, _ in agents]
        if self.workers == 0:
            self.local = Fleet(self.url)
            for name, token in agents:
                self.local.add(name, token)
            self.local.start()
            return
        ctx = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        size = -(-len(agents) // self.workers)
        for i in range(self.workers):
            part = agents[i * size : (i + 1) * size]
            if not part:
                break
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(theirs, self.url, part), name=f"hostvlan-sim-{i}", daemon=True)
            proc.start()
            theirs.close()
            for name, _ in part:
                self._shard[name] = len(self._conns)
            _reader(mine, lambda msg: loop.call_soon_threadsafe(self._received, msg))
            self._conns.append(mine)
            self._procs.append(proc)

    def _received(self, msg: Any) -> None:
        if msg is None:
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(RuntimeError("a simulator worker died"))
            return
        rid, ok, value = msg
        fut = self._pending.pop(rid) if rid in self._pending else None
        if fut is not None and not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(RuntimeError(value))

    async def _ask(self, worker: int, cmd: str, args: Any) -> Any:
        rid = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._conns[worker].send((rid, cmd, args))
        return await fut

    def _split(self, names: list[str]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for n in names:
            out.setdefault(self._shard[n], []).append(n)
        return out

    async def wait_applied(
        self, names: list[str], revision: int, timeout: float, reported: bool = False
    ) -> dict[str, float]:
        """When each agent had applied (or reported) `revision` or later; TimeoutError if not in time."""
        if self.local is not None:
            return await self.local.wait_applied(names, revision, timeout, reported)
        parts = self._split(names)
        try:
            got = await asyncio.gather(
                *(self._ask(w, "wait", (ns, revision, timeout, reported)) for w, ns in parts.items())
            )
        except RuntimeError as exc:
            if "TimeoutError" in str(exc):
                raise TimeoutError(str(exc)) from None
            raise
        out: dict[str, float] = {}
        for g in got:
            out.update(g)
        return out

    async def states(self, names: list[str] | None = None) -> dict[str, AgentState]:
        if self.local is not None:
            return _states(self.local, names)
        if names is None:
            parts: dict[int, list[str] | None] = dict.fromkeys(range(len(self._conns)))
        else:
            parts = dict(self._split(names))
        got = await asyncio.gather(*(self._ask(w, "states", ns) for w, ns in parts.items()))
        out: dict[str, AgentState] = {}
        for g in got:
            out.update(g)
        return out

    async def bytes_in(self) -> dict[str, int]:
        return {n: s.bytes_in for n, s in (await self.states()).items()}

    async def check(self, layout: Layout) -> tuple[list[int], list[str]]:
        """Every agent's view against the layout: (entries per host, names of wrong views)."""
        hosts = list(range(layout.hosts))
        if self.local is not None:
            return _check(self.local, layout, hosts)
        args = (layout.hosts, layout.vms_per_host, layout.vms_per_tenant)
        parts: dict[int, list[int]] = {}
        for h in hosts:
            parts.setdefault(self._shard[layout.host_name(h)], []).append(h)
        got = await asyncio.gather(*(self._ask(w, "check", (args, hs)) for w, hs in parts.items()))
        sizes: list[int] = []
        wrong: list[str] = []
        for s, w in got:
            sizes += s
            wrong += w
        return sizes, wrong

    async def stop(self) -> None:
        if self.local is not None:
            await self.local.stop()
            return
        for w in range(len(self._conns)):
            try:
                await asyncio.wait_for(self._ask(w, "stop", None), 30)
            except (TimeoutError, RuntimeError, OSError):
                pass
        for conn in self._conns:
            conn.close()
        for proc in self._procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()


__all__ = ["AgentState", "Agents"]
