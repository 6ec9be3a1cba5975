"""The agent's observability: Prometheus metrics, and its drop reports to the manager.

`AgentMetrics` holds the agent's metrics in a registry of its own, served by `--metrics-listen`
(`hostvlan.scrape`, on the agent's event loop). The daemon calls its few hooks (an apply's
time, an audit's repairs, a link event, a feed (dis)connected, a report of its state); the
drop counters are the back end's `drops()`, read by `DropWatch`.

`DropWatch` runs every `interval` seconds on the kernel worker (between the daemon's jobs,
never during one): `drops()` (cumulative, per port and reason, read from the kernel) and
`drop_events()` (the data path's sampled drops); it keeps the counters for the scrape and
the recent events, and sends both to the manager (`POST /v1/hosts/{H}/drops`) whenever
something changed, so `hostvlan drops HOST` and `hostvlan status` work from the manager's
machine. A failed read or send is logged at debug level and retried at the next tick: drop
reporting never holds up the sync loop.
May import the standard library, httpx, prometheus_client, `hostvlan.datapath`, `hostvlan.model`
and its siblings `agent.status`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from pyroute2 import NetlinkError

from hostvlan.agent.status import Connection
from hostvlan.datapath.base import DatapathError, DropEvent, TenantFilter

log = logging.getLogger("hostvlan.agent")

READ_ERRORS = (DatapathError, OSError, NetlinkError)
EVENTS_KEPT = 256  # recent drop events the agent keeps (and sends at most per report)
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class _Drops(Collector):
    """`hostvlan_drops_total{port,reason}`: the back end's `drops()` as last read."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(
            "hostvlan_drops",
            "Frames the tenant filter dropped, per port (the port a frame came in by, or the one a copy "
            "would have left by; (unbound) for ports without a binding) and reason code",
            labels=["port", "reason"],
        )
        for (port, reason), n in sorted(self._m.drops.items()):
            fam.add_metric([port, reason], n)
        yield fam


class AgentMetrics:
    """The agent's metrics (docs/observability.md lists each with its meaning)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.revision_applied = Gauge(
            "hostvlan_revision_applied", "Revision of the manager's view the data path enforces", registry=r
        )
        self.revision_received = Gauge(
            "hostvlan_revision_received", "Revision of the last view or delta received from the manager", registry=r
        )
        self.apply_seconds = Histogram(
            "hostvlan_apply_seconds",
            "Time of one kernel job that applies the view (kind: full, delta, ports)",
            ["kind"],
            buckets=APPLY_BUCKETS,
            registry=r,
        )
        self.audit_repairs = Counter(
            "hostvlan_audit_repairs", "Drifted data-path elements the periodic audit repaired", registry=r
        )
        self.audits = Counter("hostvlan_audits", "Audits run (each reads the whole data path back)", registry=r)
        self.link_events = Counter(
            "hostvlan_link_events",
            "Link events (netlink, port polls) that made the agent re-read its ports",
            registry=r,
        )
        self.entries = Gauge("hostvlan_entries", "LNID table entries (MACs) in the host's view", registry=r)
        self.bindings = Gauge(
            "hostvlan_bindings", "Local vNICs by binding state (bound, unbound)", ["state"], registry=r
        )
        self.in_sync = Gauge(
            "hostvlan_in_sync", "1 when the data path enforces the view received (no kernel job failing)", registry=r
        )
        self.synced = Gauge("hostvlan_synced", "1 once a snapshot of the manager's has been enforced", registry=r)
        self.connected = Gauge("hostvlan_manager_connected", "1 while the agent's feed is connected", registry=r)
        self.drop_events = Counter(
            "hostvlan_drop_events",
            "Individual drops the data path sampled (rate-limited) and the agent read",
            registry=r,
        )
        self.drops_read = Gauge(
            "hostvlan_drops_read_timestamp_seconds", "When the drop counters were last read from the kernel", registry=r
        )
        self.drops: dict[tuple[str, str], int] = {}
        r.register(_Drops(self))

    # ----- the daemon's hooks ---------------------------------------------------------------
    def applied(self, kind: str, seconds: float) -> None:
        self.apply_seconds.labels(kind).observe(seconds)

    def state(
        self, revision: int, received: int, in_sync: bool, synced: bool, entries: int, bound: int, unbound: int
    ) -> None:
        self.revision_applied.set(revision)
        self.revision_received.set(received)
        self.in_sync.set(1 if in_sync else 0)
        self.synced.set(1 if synced else 0)
        self.entries.set(entries)
        self.bindings.labels("bound").set(bound)
        self.bindings.labels("unbound").set(unbound)


def event_json(e: DropEvent) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "time": round(e.time, 6),
        "port": e.port,
        "src": e.src,
        "dst": e.dst,
        "ethertype": e.ethertype,
        "reason": e.reason,
    }


class DropWatch:
    """Reads the drop counters and events every `interval` s and reports them (see module doc).
    `run_job` runs a function on the kernel worker (`KernelWorker.run`)."""

    def __init__(
        self,
        backend: TenantFilter,
        run_job: Callable[[Callable[[], Any]], Awaitable[Any]],
        conn: Connection,
        metrics: AgentMetrics,
        interval: float = 2.0,
    ) -> None:
        self.backend = backend
        self._run_job = run_job
        self.conn = conn
        self.metrics = metrics
        self.interval = interval
        self.events: deque[DropEvent] = deque(maxlen=EVENTS_KEPT)
        self._after = 0  # the last event seq read
        self._unsent: list[DropEvent] = []
        self._sent: dict[tuple[str, str], int] | None = None
        self._client: httpx.AsyncClient | None = None
        self.since = time.time()  # the counters are the kernel's, but this agent saw them from here

    def _read(self) -> tuple[dict[tuple[str, str], int], list[DropEvent]]:
        return self.backend.drops(), self.backend.drop_events()

    async def tick(self) -> bool:
        """One read and, when something changed, one report; True when the manager took it."""
        try:
            got: tuple[dict[tuple[str, str], int], list[DropEvent]] = await self._run_job(self._read)
        except READ_ERRORS as exc:
            log.debug("reading the drop counters failed: %s", exc)
            return False
        drops, events = got
        self.metrics.drops = dict(drops)
        self.metrics.drops_read.set(time.time())
        if events and max(e.seq for e in events) < self._after:
            self._after = 0  # the data path's ring was loaded afresh: its sequence started again
        new = [e for e in events if e.seq > self._after]
        if new:
            self._after = new[-1].seq
            self.events.extend(new)
            self._unsent = (self._unsent + new)[-EVENTS_KEPT:]
            self.metrics.drop_events.inc(len(new))
        if drops == self._sent and not self._unsent:
            return True
        return await self._post(drops)

    async def _post(self, drops: dict[tuple[str, str], int]) -> bool:
        body = {
            "drops": [{"port": p, "reason": r, "count": n} for (p, r), n in sorted(drops.items())],
            "events": [event_json(e) for e in self._unsent],
            "since": round(self.since, 3),
        }
        try:
            if self._client is None:
                self._client = self.conn.client()
            resp = await self._client.post(f"/v1/hosts/{self.conn.host}/drops", json=body, headers=self.conn.auth())
        except httpx.HTTPError as exc:
            log.debug("drop report failed: manager unreachable (%s)", exc)
            return False
        if resp.status_code >= 400:
            log.debug("drop report refused (%d): %s", resp.status_code, resp.text)
            return False
        self._sent, self._unsent = dict(drops), []
        return True

    async def run(self) -> None:
        try:
            while True:  # the first read at once: it also subscribes to OVS's packet-ins
                await self.tick()
                await asyncio.sleep(self.interval)
        finally:
            if self._client is not None:
                await self._client.aclose()


__all__ = ["AgentMetrics", "DropWatch", "event_json"]
