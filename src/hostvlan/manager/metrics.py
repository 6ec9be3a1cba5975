"""The manager's metrics (Prometheus), served by `hostvlan manager --metrics-listen`.

`ManagerMetrics` keeps a registry of its own. The service calls three hooks: a command's kind
and result (`command`), a store commit's time (`committed`), and the revision a command
published with the hosts it concerns (`published`), which `host_applied` (each status report)
turns into the time from the command's acknowledgement to the last affected host reporting
it applied (`hostvlan_manager_implementation_delay_seconds`, Cilium's
`cilium_policy_implementation_delay`). Everything else is read from the service when scraped,
on the event loop (the listener runs there, `hostvlan.scrape`): the revision, per host the
revision lag, connected and in-sync state, feed bytes.
May import the standard library, prometheus_client and the manager's own modules' types.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hostvlan.model.ids import HostId

COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
DELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
PENDING_MAX = 10_000  # revisions awaiting their hosts; beyond, the oldest are given up (counted)

HostRows = Callable[[], list[dict[str, Any]]]


class _State(Collector):
    """What the service knows, read when scraped."""

    def __init__(self, revision: Callable[[], int], hosts: HostRows, feed_bytes: Callable[[], dict[str, int]]) -> None:
        self._revision, self._hosts, self._bytes = revision, hosts, feed_bytes

    def collect(self) -> Iterator[Metric]:
        rev = GaugeMetricFamily("hostvlan_manager_revision", "The last durable revision of the LNID table")
        rev.add_metric([], self._revision())
        yield rev
        lag = GaugeMetricFamily(
            "hostvlan_host_revision_lag",
            "Revisions between the last one that concerned a host and the one its agent reports applied",
            labels=["host"],
        )
        applied = GaugeMetricFamily(
            "hostvlan_host_revision_applied", "The revision a host's agent last reported applied", labels=["host"]
        )
        connected = GaugeMetricFamily(
            "hostvlan_host_connected", "1 while the host's agent holds its feed open", labels=["host"]
        )
        in_sync = GaugeMetricFamily(
            "hostvlan_host_in_sync",
            "1 when the host is connected, has applied every revision due and its agent reports in sync",
            labels=["host"],
        )
        for h in self._hosts():
            name = str(h["name"])
            lag.add_metric([name], h["lag"])
            applied.add_metric([name], h["revision_applied"])
            connected.add_metric([name], 1 if h["connected"] else 0)
            in_sync.add_metric([name], 1 if h["in_sync"] else 0)
        yield from (lag, applied, connected, in_sync)
        sent = CounterMetricFamily(
            "hostvlan_manager_feed_bytes", "Bytes the manager sent on a host's feeds", labels=["host"]
        )
        for host, n in sorted(self._bytes().items()):
            sent.add_metric([host], n)
        yield sent


class ManagerMetrics:
    """The manager's metrics (docs/observability.md lists each with its meaning)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.commands = Counter(
            "hostvlan_manager_commands",
            "Commands and host changes by kind (reg, unreg, rm, move, batch, host add, ...) and result "
            "(ok, refused, failed)",
            ["kind", "result"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "hostvlan_manager_store_commit_seconds",
            "Time of one durable store transaction of a command (fsync included)",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.implementation_delay = Histogram(
            "hostvlan_manager_implementation_delay_seconds",
            "From a command's acknowledgement to every host it concerns reporting its revision applied",
            buckets=DELAY_BUCKETS,
            registry=r,
        )
        self.given_up = Counter(
            "hostvlan_manager_implementation_untracked",
            f"Revisions no longer awaited for the delay above (more than {PENDING_MAX} pending)",
            registry=r,
        )
        self._pending: OrderedDict[int, tuple[float, set[HostId]]] = OrderedDict()

    def watch(self, revision: Callable[[], int], hosts: HostRows, feed_bytes: Callable[[], dict[str, int]]) -> None:
        """Export the service's state (called once, by the service)."""
        self.registry.register(_State(revision, hosts, feed_bytes))

    # ----- the service's hooks --------------------------------------------------------------
    def command(self, kind: str, result: str) -> None:
        self.commands.labels(kind, result).inc()

    def committed(self, seconds: float) -> None:
        self.commit_seconds.observe(seconds)

    def published(self, revision: int, hosts: Iterable[HostId]) -> None:
        """Revision `revision` is acknowledged now; `hosts` are those it concerns."""
        waiting = set(hosts)
        if not waiting:
            self.implementation_delay.observe(0.0)  # concerns no host: in force at once
            return
        self._pending[revision] = (time.monotonic(), waiting)
        while len(self._pending) > PENDING_MAX:
            self._pending.popitem(last=False)
            self.given_up.inc()

    def host_applied(self, host: HostId, revision: int) -> None:
        """`host` reports `revision` applied (so every revision up to it)."""
        if not self._pending:
            return
        now = time.monotonic()
        done = []
        for rev, (t0, waiting) in self._pending.items():
            if rev > revision:
                break
            waiting.discard(host)
            if not waiting:
                self.implementation_delay.observe(now - t0)
                done.append(rev)
        for rev in done:
            del self._pending[rev]

    def host_gone(self, host: HostId) -> None:
        """A removed host is awaited no more."""
        self.host_applied(host, 1 << 62)


__all__ = ["ManagerMetrics"]
