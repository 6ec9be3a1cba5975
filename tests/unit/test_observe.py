"""Observability without root (issue 15): the manager's metrics and its drop log, the agent's
metrics and drop reports, the scrape listener, on a temporary store and a fake back end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hostvlan import scrape
from hostvlan.agent.metrics import AgentMetrics, DropWatch
from hostvlan.agent.status import Connection
from hostvlan.datapath.base import DropEvent
from hostvlan.datapath.memory import MemoryFilter
from hostvlan.manager.audit import Audit
from hostvlan.manager.observe import DropLog, status
from hostvlan.manager.service import InputError, Service
from hostvlan.manager.store.sqlite import Store
from hostvlan.model.ids import HostId, Mac
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID

H1, H2 = HostId("EHS1"), HostId("EHS2")
A, B = Mac("52:54:00:30:00:01"), Mac("52:54:00:30:00:02")


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    s = Service(Store(tmp_path / "m.db"), audit=Audit(tmp_path / "audit.jsonl"))
    for h in (H1, H2):
        s.add_host(h)
    yield s
    s.store.close()
    s.audit.close()


def samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_manager_metrics_count_commands_lag_and_the_implementation_delay(svc: Service) -> None:
    m = svc.metrics
    svc.reg(1, A, H1, "vnet0")
    svc.reg(1, B, H2, "vnet0")
    with pytest.raises(InputError):
        svc.reg(1, "not-a-mac", H1)
    got = samples(m.registry)
    assert got[("hostvlan_manager_commands_total", (("kind", "reg"), ("result", "ok")))] == 2
    assert got[("hostvlan_manager_commands_total", (("kind", "reg"), ("result", "refused")))] == 1
    assert got[("hostvlan_manager_revision", ())] == svc.revision
    assert got[("hostvlan_host_revision_lag", (("host", "EHS1"),))] == svc.revision
    assert got[("hostvlan_host_connected", (("host", "EHS2"),))] == 0
    assert got[("hostvlan_manager_store_commit_seconds_count", ())] == 2
    assert got[("hostvlan_manager_implementation_delay_seconds_count", ())] == 0  # nobody applied yet
    svc.record_status(H1, {"revision": svc.revision})
    assert samples(m.registry)[("hostvlan_manager_implementation_delay_seconds_count", ())] == 1  # A's reg: H1 only
    svc.record_status(H2, {"revision": svc.revision})
    got = samples(m.registry)
    assert got[("hostvlan_manager_implementation_delay_seconds_count", ())] == 2  # B's reg concerned both hosts
    assert got[("hostvlan_host_revision_lag", (("host", "EHS1"),))] == 0


def _report(drops: dict[tuple[str, str], int], events: int = 0, since: float | None = None) -> dict[str, Any]:
    out = {
        "drops": [{"port": p, "reason": r, "count": n} for (p, r), n in drops.items()],
        "events": [
            {
                "time": 1.0 + i,
                "port": "vnet0",
                "src": "02:de:ad:be:ef:01",
                "dst": B,
                "ethertype": 0x800,
                "reason": FORGED_SOURCE,
            }
            for i in range(events)
        ],
    }
    return out if since is None else {**out, "since": since}


def test_the_drop_log_keeps_events_counters_and_the_last_minute(svc: Service) -> None:
    log = DropLog()
    assert log.report(H1, _report({("vnet0", FORGED_SOURCE): 2}, events=2, since=time.time())) == 2
    assert log.report(H1, _report({("vnet0", FORGED_SOURCE): 5, ("vnet1", NO_SHARED_LNID): 1}, events=1)) == 1
    ans = log.events(H1, 0, None)
    assert [e["id"] for e in ans["events"]] == [1, 2, 3] and ans["last"] == 3
    assert log.events(H1, 2, None)["events"][0]["id"] == 3
    assert log.events(H1, 0, NO_SHARED_LNID)["events"] == []
    assert ans["counters"] == [
        {"port": "vnet0", "reason": FORGED_SOURCE, "count": 5},
        {"port": "vnet1", "reason": NO_SHARED_LNID, "count": 1},
    ]
    st = status(svc, log)
    assert st["drops_last_minute"] == {FORGED_SOURCE: 5, NO_SHARED_LNID: 1}  # the agent started this minute
    h = log.hosts[H1]
    h.history = type(h.history)([(t - 120, tot) for t, tot in h.history], maxlen=h.history.maxlen)
    log.report(H1, _report({("vnet0", FORGED_SOURCE): 9, ("vnet1", NO_SHARED_LNID): 1}))
    assert status(svc, log)["drops_last_minute"] == {FORGED_SOURCE: 4}  # since the report a minute old
    assert st["summary"]["hosts"] == 2 and st["store"]["kind"] == "sqlite"
    for bad in ({"drops": [{"port": "x", "reason": "nope", "count": 1}]}, {"drops": [{"port": "", "count": 1}]}, []):
        with pytest.raises(InputError):
            log.report(H1, bad)


class _Dropping(MemoryFilter):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def drops(self) -> dict[tuple[str, str], int]:
        return {("vnet0", FORGED_SOURCE): self.n} if self.n else {}

    def drop_events(self, after: int = 0) -> list[DropEvent]:
        return [DropEvent(i, 1.0, "vnet0", A, B, 0x806, FORGED_SOURCE) for i in range(1, self.n + 1) if i > after]


def test_the_agent_reads_drops_exports_them_and_reports_them_to_the_manager() -> None:
    posted: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        import json

        posted.append((request.url.path, json.loads(request.content)))
        return httpx.Response(200, json={"ok": True})

    async def run() -> None:
        backend = _Dropping()
        metrics = AgentMetrics()
        conn = Connection("http://manager", H1, "t", transport=httpx.MockTransport(handler))

        async def job(f: Any) -> Any:
            return f()

        watch = DropWatch(backend, job, conn, metrics, interval=0.01)
        assert await watch.tick()
        assert posted[-1][1]["drops"] == [] and len(posted) == 1
        assert await watch.tick() and len(posted) == 1  # nothing changed: nothing sent
        backend.n = 2
        assert await watch.tick()
        path, body = posted[-1]
        assert path == "/v1/hosts/EHS1/drops"
        assert body["drops"] == [{"port": "vnet0", "reason": FORGED_SOURCE, "count": 2}]
        assert [e["seq"] for e in body["events"]] == [1, 2] and body["events"][0]["ethertype"] == 0x806
        got = samples(metrics.registry)
        assert got[("hostvlan_drops_total", (("port", "vnet0"), ("reason", FORGED_SOURCE)))] == 2
        assert got[("hostvlan_drop_events_total", ())] == 2
        backend.n = 3
        await watch.tick()
        assert [e["seq"] for e in posted[-1][1]["events"]] == [3]  # only the new one
        # the scrape listener serves the same text
        server = await scrape.serve(metrics.registry, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{port}/metrics")
            assert r.status_code == 200 and 'hostvlan_drops_total{port="vnet0",reason="forged_source"} 3.0' in r.text
            assert (await c.get(f"http://127.0.0.1:{port}/other")).status_code == 404
        server.close()
        await watch._client.aclose() if watch._client else None

    asyncio.run(run())


def test_parse_listen() -> None:
    assert scrape.parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert scrape.parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError):
        scrape.parse_listen("9464")
