"""The control daemon's sync loop.

    feed (event loop) ──► desired view at R ──► pending work ──► reconciler ──► kernel worker (one thread)
     snapshot, deltas        (in order)         (coalesced)      (retries,        back end: sync, apply,
            ▲                                                     backoff)        audit; links; macvtaps
            └── reconnect with backoff                               │
                                                                     └──► status report: applied R, in sync?, bindings

Invariants:
- at start the back end's kernel state is left as it is (never flushed); a host with no
  hostvlan objects gets them installed EMPTY, i.e. closed, until the first snapshot;
- the view only changes by a whole snapshot or by the next delta in order, so what the
  kernel enforces is always the manager's view at some revision (plus local ports);
- the event loop never waits on the kernel: the feed and its heartbeats keep being read
  while a slow apply runs, and deltas that arrive meanwhile go into the next apply;
- a failed apply, link-event repair or audit marks the agent out of sync (reported to the
  manager with the error) and is retried with jittered, capped exponential backoff until it
  succeeds; meanwhile the data path keeps what it enforced (fail closed, never flushed);
- a manager that rejects the host's token is said to do so (not "unreachable"); the token
  file is read again before every retry, so a rotated token needs no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pyroute2 import NetlinkError

from hostvlan import scrape, wire
from hostvlan.agent.kernel import KernelWorker, Links, Outcome
from hostvlan.agent.metrics import AgentMetrics, DropWatch
from hostvlan.agent.ports import LinkWatcher, link_mac
from hostvlan.agent.status import Backoff, Connection, Report, StatusReporter
from hostvlan.datapath.base import DatapathError, TenantFilter
from hostvlan.model.datacenter import HostDelta, apply_delta, merge_delta
from hostvlan.model.hostview import HostView, VnicBinding
from hostvlan.model.ids import HostId, Mac, PortName

log = logging.getLogger("hostvlan.agent")

KERNEL_ERRORS = (DatapathError, OSError, NetlinkError)  # what a job may raise; the kernel kept its state


@dataclass
class AgentConfig:
    manager: str
    host: HostId
    token: str  # the token to start with; `token_file`, when given, is read again before every retry
    uplinks: dict[PortName, Mac]
    cacert: str | None = None
    audit_interval: float = 60.0
    backoff_max: float = 5.0  # cap of the reconnect backoff (seconds)
    ready_file: Path | None = None
    guard_macvtaps: bool = False  # macvtap back end: the agent keeps unbound macvtaps down
    # where vNIC ports are found: None = this namespace's links (libvirt taps, macvtaps);
    # else a function giving vNIC MAC -> port (e.g. OVSDB's external_ids:attached-mac)
    port_source: Callable[[], dict[Mac, PortName]] | None = None
    poll_ports: float = 0.0  # > 0: also look for new ports this often (OVSDB has no netlink event)
    token_file: Path | None = None
    retry_first: float = 0.2  # first retry of a failed kernel job (seconds), doubled up to retry_max
    retry_max: float = 30.0
    read_links: Callable[[], Links] | None = None  # None: this namespace's links over netlink
    watch_links: bool = True  # False: no netlink watcher (tests call `Agent.links_changed`)
    metrics_listen: str | None = None  # HOST:PORT of the Prometheus scrape listener (agent.metrics)
    drops_interval: float = 2.0  # seconds between two reads (and reports) of the drop counters; 0: none


@dataclass
class AgentState:
    view: HostView | None = None  # the desired view (deltas folded in as the reconciler takes them)
    received: int = 0  # revision of the view last received from the manager
    revision: int = 0  # revision of the view the data path enforces
    ports: dict[Mac, PortName] = field(default_factory=dict)  # bound vNICs and their ports
    bindings: dict[Mac, VnicBinding] = field(default_factory=dict)  # every local vNIC: bound or why not
    synced: bool = False  # a snapshot has been enforced
    in_sync: bool = True  # False while a failed kernel job is being retried
    error: str | None = None


class TokenRejected(Exception):
    """The manager answered 401/403: the host's token is wrong (or rotated)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status


class FeedRefused(Exception):
    """The manager answered the feed with an error other than a token rejection."""


class ProtocolError(ValueError):
    """The feed broke its contract (e.g. a delta before the snapshot)."""


@dataclass
class _Work:
    """Kernel work waiting for the reconciler, coalesced."""

    install: bool = True  # at start: install the filter closed if absent
    full: bool = False  # a whole view (snapshot, or a retry after a failure)
    snapshot: bool = False  # `full` is for a new snapshot (logged as such)
    delta: HostDelta | None = None
    links: bool = False
    audit: bool = False


class Agent:
    """One host's control daemon: feed → desired view → kernel worker, with retries and reports.

    `transport` replaces the HTTP transport (tests: an in-process fake manager)."""

    def __init__(
        self, config: AgentConfig, backend: TenantFilter, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.cfg = config
        self.backend = backend
        self.state = AgentState()
        self.kernel = KernelWorker(
            backend,
            config.uplinks,
            read_links=config.read_links,
            port_source=config.port_source,
            guard_macvtaps=config.guard_macvtaps,
        )
        self.conn = Connection(
            config.manager,
            config.host,
            config.token,
            token_file=config.token_file,
            cacert=config.cacert,
            transport=transport,
        )
        self.status = StatusReporter(self.conn, self._status_now, config.backoff_max)
        self.metrics = AgentMetrics()
        self.drop_watch = DropWatch(backend, self.kernel.run, self.conn, self.metrics, config.drops_interval)
        self.metrics_address: tuple[str, int] | None = None  # where the scrape listener is bound
        self._work = _Work()
        self._unfolded: HostDelta | None = None  # deltas received, not yet folded into state.view
        self._failing: set[str] = set()  # kinds of kernel work that failed and await their retry
        self._retry_at: dict[str, float] = {}  # loop time of each retry
        self._wake = asyncio.Event()
        self._bindings_known = False  # bindings computed since the last snapshot
        self._warned: dict[Mac, str] = {}  # unbound vNICs logged, with the reason logged
        self._ready = False
        self._stopping = False
        self._snapshots_seen = 0

    # ----- feed (event loop) -------------------------------------------------------------------
    async def handle(self, msg: dict[str, Any]) -> None:
        """Take one feed line into the desired view; the reconciler programs it (never awaited here)."""
        kind = msg.get("type")
        if kind == "snapshot":
            self.state.view = wire.decode_snapshot(self.cfg.host, msg)
            self._unfolded = None
            self.state.received = int(msg["revision"])
            self._work.full = self._work.snapshot = True
            self._work.delta = None
            self._bindings_known = False  # sent again with the first report after this snapshot
            self.status.new_snapshot()
            self._snapshots_seen += 1
        elif kind == "delta":
            if self.state.view is None:
                raise ProtocolError("delta before snapshot")
            self._snapshots_seen += 1  # lines came: the connection worked
            delta = wire.decode_delta(msg)
            self.state.received = int(msg["revision"])
            if self._unfolded is None:  # folded into the view when the next job takes it: one copy
                self._unfolded = HostDelta()  # of the view per apply, not per delta
            merge_delta(self._unfolded, delta)
            if not self._work.full:
                if self._work.delta is None:
                    self._work.delta = HostDelta()
                merge_delta(self._work.delta, delta)
        else:
            return
        self._wake.set()

    def links_changed(self) -> None:
        """A link came, went or changed (event loop thread); bursts within 10 ms make one repair."""
        self.metrics.link_events.inc()
        if not self._work.links:
            self._work.links = True
            asyncio.get_running_loop().call_later(0.01, self._wake.set)

    # ----- reconciler: kernel work, one job at a time, retried until it succeeds ----------------
    async def _reconcile(self) -> None:
        """Run the pending work, one job at a time; a failed job waits for its retry (backoff),
        work of other kinds goes on meanwhile (an audit that fails does not hold up deltas)."""
        loop = asyncio.get_running_loop()
        backoff = Backoff(self.cfg.retry_first, self.cfg.retry_max)
        while True:
            job = self._take(loop.time())
            if job is None:
                waits = [t - loop.time() for t in self._retry_at.values()]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(0.0, min(waits)) if waits else None)
                self._wake.clear()
                continue
            kind, retry, run = job
            try:
                await run()
            except KERNEL_ERRORS as exc:
                delay = backoff.next()
                self._failed(retry, f"{kind} failed: {exc}", loop.time() + delay)
                log.error(
                    "%s failed: %s; out of sync, the data path keeps what it enforced (r%d); retrying in %.1f s",
                    kind,
                    exc,
                    self.state.revision,
                    delay,
                )
                continue
            self._failing.discard(retry)
            self._retry_at.pop(retry, None)
            if retry == "apply" and not self._work.install:  # a whole view installs the filter too
                self._failing.discard("install")
                self._retry_at.pop("install", None)
            if not self._failing:
                backoff.reset()
                if not self.state.in_sync:
                    self.state.in_sync, self.state.error = True, None
                    log.warning("back in sync: the data path enforces r%d", self.state.revision)
                    self.status.report()

    def _take(self, now: float) -> tuple[str, str, Callable[[], Any]] | None:
        """The next job whose retry time has come: (what it is, what to retry if it fails, the job)."""
        w, view, rev = self._work, self._folded_view(), self.state.received

        def due(retry: str) -> bool:
            return self._retry_at.get(retry, 0.0) <= now

        if w.full and view is not None:
            if not due("apply"):  # deltas and link events wait too: they go into this whole view
                return self._take_audit(due("audit"))
            snapshot = w.snapshot
            w.full = w.snapshot = w.install = w.links = False
            w.delta = None
            return "apply", "apply", lambda: self._run_full(view, rev, snapshot)
        if w.install and due("install"):
            w.install = False
            return "install", "install", self._run_install
        if w.delta is not None and view is not None:
            delta, w.delta = w.delta, None
            return "apply", "apply", lambda: self._run_delta(view, delta, rev)
        if w.links and view is not None:
            w.links = False
            return "port repair", "apply", lambda: self._run_links(view, rev)
        return self._take_audit(due("audit"))

    def _folded_view(self) -> HostView | None:
        """The view at `state.received`: the deltas received since the last job folded in."""
        if self._unfolded is not None and self.state.view is not None:
            self.state.view = apply_delta(self.state.view, self._unfolded)
            self._unfolded = None
        return self.state.view

    def _take_audit(self, due: bool) -> tuple[str, str, Callable[[], Any]] | None:
        if self._work.audit and self.state.synced and due:
            self._work.audit = False
            return "audit", "audit", self._run_audit
        return None

    def _failed(self, retry: str, error: str, at: float) -> None:
        """Out of sync: keep the failed work for its retry at loop time `at`, and say so."""
        self._failing.add(retry)
        self._retry_at[retry] = at
        self.state.in_sync, self.state.error = False, error
        if retry == "install":
            self._work.install = True
        elif retry == "audit":
            self._work.audit = True
        else:  # a whole view again: the back end reconciles from a fresh read-back
            self._work.full = True
        self.status.report()

    async def _run_install(self) -> None:
        if await self.kernel.run(self.kernel.install):
            log.info("no tenant filter found: installed it empty (closed) until the first snapshot")
        else:
            log.info("kept the tenant filter the kernel already enforces until the first snapshot")
        self._mark_ready()

    async def _run_full(self, view: HostView, revision: int, snapshot: bool) -> None:
        t0 = time.monotonic()
        try:
            out = await self.kernel.run(self.kernel.full, view)
        except KERNEL_ERRORS:
            self._work.snapshot = self._work.snapshot or snapshot  # its retry is still this snapshot's
            raise
        assert out.report is not None
        self.state.synced = True
        self._bindings_known = True
        self._done(revision, out, "full", t0)
        log.info(
            "%s: r%d, %d element changes%s",
            "snapshot enforced" if snapshot else "view enforced again",
            revision,
            out.report.elements,
            " (reconciled with what the kernel held)" if out.report.full else "",
        )
        self._mark_ready()

    async def _run_delta(self, view: HostView, delta: HostDelta, revision: int) -> None:
        t0 = time.monotonic()
        self._done(revision, await self.kernel.run(self.kernel.delta, view, delta), "delta", t0)

    async def _run_links(self, view: HostView, revision: int) -> None:
        t0 = time.monotonic()
        self._done(revision, await self.kernel.run(self.kernel.links, view), "ports", t0)

    async def _run_audit(self) -> None:
        rep = await self.kernel.run(self.kernel.audit)
        self.metrics.audits.inc()
        self.metrics.audit_repairs.inc(rep.elements)
        if rep.elements:
            log.warning("audit repaired %d drifted elements", rep.elements)

    def _done(self, revision: int, out: Outcome, kind: str, t0: float) -> None:
        self.metrics.applied(kind, time.monotonic() - t0)
        self.state.revision = revision
        if out.bindings is not None:
            self._note_bindings(out.bindings.report)
        if out.report is not None:
            log.debug("r%d enforced (%d element changes)", revision, out.report.elements)
        self.status.report()

    def _note_bindings(self, report: Mapping[Mac, VnicBinding]) -> None:
        """Keep the vNICs' bindings; log an unbound vNIC once (per reason), at warning level."""
        for mac, b in sorted(report.items()):
            if b.reason is not None and self._warned.get(mac) != b.reason:
                log.warning("vNIC %s is not bound: %s", mac, b.reason)
                self._warned[mac] = b.reason
            elif b.reason is None and mac in self._warned:
                del self._warned[mac]
                log.info("vNIC %s is bound to %s now", mac, b.port)
        for mac in [m for m in self._warned if m not in report]:
            del self._warned[mac]
        self.state.bindings = dict(report)
        self.state.ports = {m: b.port for m, b in report.items() if b.port is not None}

    def _status_now(self) -> Report:
        st = self.state
        bound = len(st.ports)
        entries = len(st.view.entries) if st.view is not None else 0
        self.metrics.state(st.revision, st.received, st.in_sync, st.synced, entries, bound, len(st.bindings) - bound)
        return Report(st.revision, st.in_sync, st.error, st.bindings if self._bindings_known else None)

    def _mark_ready(self) -> None:
        if not self._ready:
            self._ready = True
            if self.cfg.ready_file:
                self.cfg.ready_file.write_text(json.dumps({"host": self.cfg.host}))

    async def _follow_feed(self) -> None:
        url = f"/v1/hosts/{self.cfg.host}/feed"
        if self.state.view is not None:  # resume: the deltas since (on any replica), else a snapshot
            url += f"?since={self.state.received}"
        async with (
            self.conn.client(httpx.Timeout(10.0, read=60.0)) as client,
            client.stream("GET", url, headers=self.conn.auth()) as resp,
        ):
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                if resp.status_code in (401, 403):
                    raise TokenRejected(resp.status_code, body)
                raise FeedRefused(f"manager refused the feed ({resp.status_code}): {body}")
            log.info("connected to %s as %s", self.conn.manager, self.cfg.host)
            self.metrics.connected.set(1)
            self.status.reconnected()
            first = True
            async for line in resp.aiter_lines():
                if line.strip():
                    msg = json.loads(line)
                    await self.handle(msg)
                    if first and msg.get("type") != "snapshot":  # resumed: tell this replica where we are
                        self.status.report()
                    first = False

    async def _feed_loop(self) -> None:
        backoff = Backoff(0.1, self.cfg.backoff_max)
        while not self._stopping:
            self.conn.reread_token()
            try:
                await self._follow_feed()
                log.warning("feed closed by the manager; reconnecting")
                self.metrics.connected.set(0)
            except TokenRejected as exc:
                log.error(
                    "manager rejected the token of host %s (%s); enforcing the last view (r%d); "
                    "re-reading the token before the next try",
                    self.cfg.host,
                    exc,
                    self.state.revision,
                )
            except FeedRefused as exc:
                log.error("%s; enforcing the last view (r%d)", exc, self.state.revision)
            except (httpx.HTTPError, OSError) as exc:
                log.warning("manager unreachable (%s); enforcing the last view (r%d)", exc, self.state.revision)
            except (ValueError, KeyError) as exc:  # a line that breaks the feed's contract: start again
                log.error("feed line not understood (%r); reconnecting", exc)
            self.metrics.connected.set(0)
            if self._snapshots_seen:  # the connection worked: the next outage starts the backoff anew
                self._snapshots_seen = 0
                backoff.reset()
            # with several replicas the next try goes to the next one; the data path keeps
            # enforcing the last view meanwhile (nothing here touches it)
            self.conn.fail_over()
            await asyncio.sleep(backoff.next())

    # ----- main loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until cancelled; a bug in the feed or the reconciler ends it (loudly), nothing else."""
        loop = asyncio.get_running_loop()
        scraper = None
        if self.cfg.metrics_listen:
            scraper = await scrape.serve(self.metrics.registry, *scrape.parse_listen(self.cfg.metrics_listen))
            self.metrics_address = scraper.sockets[0].getsockname()[:2]
            log.info("metrics on http://%s:%d/metrics", *self.metrics_address)

        def links_changed() -> None:  # from the watcher's thread
            loop.call_soon_threadsafe(self.links_changed)

        watcher = LinkWatcher(links_changed) if self.cfg.watch_links else None
        if watcher is not None:
            watcher.start()
        main = [loop.create_task(self._reconcile()), loop.create_task(self._feed_loop())]
        helpers = [loop.create_task(self._audit_loop())]
        if self.cfg.drops_interval > 0:
            helpers.append(loop.create_task(self.drop_watch.run()))
        if self.cfg.poll_ports > 0:
            helpers.append(loop.create_task(self._poll_ports()))
        try:
            done, _ = await asyncio.wait(main, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
        finally:
            self._stopping = True
            if watcher is not None:
                watcher.stop()
            rest = [*main, *helpers]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
            if scraper is not None:
                scraper.close()
            await self.status.close()
            self.kernel.close()  # waits for a kernel transaction in flight

    async def _poll_ports(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_ports)
            self.links_changed()

    async def _audit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.audit_interval)
            if self.state.synced:
                self._work.audit = True
                self._wake.set()


def uplinks_from_args(specs: tuple[str, ...]) -> dict[PortName, Mac]:
    """`NAME` or `NAME=MAC`; a missing MAC is read from the link."""
    from hostvlan.model.ids import parse_mac, parse_port

    out: dict[PortName, Mac] = {}
    for spec in specs:
        name, _, mac = spec.partition("=")
        port = parse_port(name)
        got = parse_mac(mac) if mac else link_mac(port)
        if got is None:
            raise ValueError(f"uplink {port} not found in this network namespace")
        out[port] = got
    return out


__all__ = ["Agent", "AgentConfig"]
