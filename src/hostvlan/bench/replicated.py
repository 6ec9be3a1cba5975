"""`hostvlan bench control-plane --store etcd --managers N`: the same benchmark on replicas.

Runs, in one session, the SQLite configuration (`bench/control_plane.py`, one manager)
and then the replicated one: a 3-member etcd cluster (`testbed.etcd`, data in the work
dir) and N `hostvlan manager --store etcd://…` replicas; the simulated agents are spread
over the replicas (agent i starts on replica i mod N, fails over in order, resumes by
revision). Commands go to replica 0; a command's latency runs until every host it
concerns applied it, whichever replica feeds it (so the watch to the other replicas is
inside it). Phases as in the SQLite run, then:

- floor: etcd's own put → watch event latency, with N watchers (one per replica, on the
  members the replicas use), in the same run: what any store-backed manager must pay;
- failover: replica 1 is killed with SIGKILL; the time until every agent it fed has
  reported, to another replica, the revision it held (resumed, no snapshot).

Reports each configuration's figures, the RSS of every replica, etcd's database size,
and the ratios etcd / SQLite of load, `reg` and `move` latencies.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from hostvlan.bench.control_plane import (
    Bench,
    BenchConfig,
    ManagerProcess,
    _raise_nofile,
    _run_loop,
    latency_stats,
)
from hostvlan.bench.control_plane import run as run_sqlite
from hostvlan.sim.procs import Agents
from hostvlan.testbed.etcd import Cluster

FLOOR_PUTS = 200


class ReplicaProcess(ManagerProcess):
    """One replica: its own log, ready file and audit log; the table in etcd."""

    def __init__(self, workdir: Path, i: int, cluster: Cluster) -> None:
        super().__init__(workdir)
        self.cluster = cluster
        self.db = workdir / f"replica{i}.db"  # names only its token file and audit log
        self.ready = workdir / f"ready{i}"
        self.log = workdir / f"replica{i}.log"
        self.extra = ["--store", cluster.store_url, "--admin-token-file", str(workdir / "admin-token")]

    def db_mib(self) -> float:
        return round(self.cluster.db_size() / (1 << 20), 1)


class ReplicatedBench(Bench):
    def __init__(self, cfg: BenchConfig, out: Callable[[str], None], managers: int) -> None:
        super().__init__(cfg, out)
        self.n = managers
        self.replicas: list[ReplicaProcess] = []

    async def run(self, workdir: Path) -> dict[str, Any]:
        lay = self.layout
        self.result["config"] = {
            **{k: v for k, v in asdict(self.cfg).items() if k not in ("workdir", "progress")},
            "store": "etcd",
            "managers": self.n,
            "vms": lay.vms,
            "tenants": lay.tenants,
            "view_entries_expected": lay.view_entries,
            "nofile": _raise_nofile(),
        }
        cluster = Cluster(workdir, 3, prefix="hvbench")
        cluster.start()
        try:
            self.replicas = [ReplicaProcess(workdir, i, cluster) for i in range(self.n)]
            await self.replicas[0].start()  # writes the admin token the others share
            await asyncio.gather(*(r.start() for r in self.replicas[1:]))
            self.mgr = self.replicas[0]
            self.http = self._client()
            self.fleet = Agents(",".join(r.url for r in self.replicas), self.cfg.sim_procs)
            try:
                await self.phase_hosts()
                await self.phase_load()
                await self.check_views("after load")
                await self.phase_reg()
                await self.phase_move()
                await self.phase_lnid_add()
                await self.phase_floor(cluster)
                self.result["replica_rss_mib"] = [r.rss_mib()[0] for r in self.replicas]
                self.result["etcd_db_mib"] = round(cluster.db_size() / (1 << 20), 1)
                await self.phase_failover()
                await self.check_views("after failover")
            finally:
                await self.fleet.stop()
                await self.http.aclose()
                for r in self.replicas:
                    r.stop()
        finally:
            cluster.stop()
        return self.summary()

    async def phase_floor(self, cluster: Cluster) -> None:
        """put → watch event at N watchers (etcd alone), one put after the other."""
        key = base64.b64encode(b"/floor/").decode()
        end = base64.b64encode(b"/floor0").decode()
        seen: dict[str, int] = {}
        got = asyncio.Event()
        ready = 0

        async def watch(url: str) -> None:
            nonlocal ready
            body = {"create_request": {"key": key, "range_end": end}}
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as c,
                c.stream("POST", url + "/v3/watch", json=body) as resp,
            ):
                async for line in resp.aiter_lines():
                    res = json.loads(line).get("result", {})
                    if res.get("created"):
                        ready += 1
                    for ev in res.get("events") or []:
                        k = base64.b64decode(ev["kv"]["key"]).decode()
                        seen[k] = seen.get(k, 0) + 1
                        got.set()

        members = cluster.members
        tasks = [asyncio.create_task(watch(members[i % len(members)].client_url)) for i in range(self.n)]
        lat: list[float] = []
        try:
            while ready < self.n:
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(timeout=10.0) as c:
                for i in range(FLOOR_PUTS):
                    k = f"/floor/{i}"
                    body = {"key": base64.b64encode(k.encode()).decode(), "value": "eA=="}
                    t0 = time.perf_counter()
                    (await c.post(members[0].client_url + "/v3/kv/put", json=body)).raise_for_status()
                    while seen.get(k, 0) < self.n:
                        got.clear()
                        await asyncio.wait_for(got.wait(), 10.0)
                    lat.append(time.perf_counter() - t0)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.result["etcd_floor"] = latency_stats(lat)
        self.say(f"etcd floor: put -> event at {self.n} watchers p50 {latency_stats(lat)['p50_ms']} ms")

    async def phase_failover(self) -> None:
        """Kill replica 1; until every agent it fed reports, elsewhere, the revision it held."""
        victim = self.replicas[1 if self.n > 1 else 0]
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {self.mgr.token}"}, timeout=30.0) as c:
            fed = [h["name"] for h in (await c.get(victim.url + "/v1/hosts")).json() if h["connected"]]
        before = await self.fleet.states(fed)
        t_kill = time.perf_counter()
        victim.kill()
        self.say(f"failover: replica killed (SIGKILL) with {len(fed)} agents connected")
        deadline = t_kill + self.cfg.timeout
        while True:
            states = await self.fleet.states(fed)
            done = [n for n in fed if states[n].reported_at > t_kill and states[n].reported >= before[n].revision]
            if len(done) == len(fed):
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(fed) - len(done)} agents did not fail over")
            await asyncio.sleep(0.01)
        t_all = max((states[n].reported_at for n in fed), default=t_kill)
        snaps = sum(states[n].snapshots - before[n].snapshots for n in fed)
        self.result["failover"] = {"agents": len(fed), "in_sync_s": round(t_all - t_kill, 3), "snapshots": snaps}
        self.say(f"failover: {len(fed)} agents in sync on other replicas {t_all - t_kill:.2f}s after the kill")

    def summary(self) -> dict[str, Any]:
        r = self.result
        views = r.get("views", {})
        top = {
            "hosts": self.layout.hosts,
            "vms": self.layout.vms,
            "managers": self.n,
            "load_s": r["load"]["applied_s"],
            "replica_rss_mib": r["replica_rss_mib"],
            "etcd_db_mib": r["etcd_db_mib"],
            "views_correct": all(v["correct"] for v in views.values()),
            "reg_p50_ms": r["reg"]["p50_ms"],
            "reg_p99_ms": r["reg"]["p99_ms"],
            "move_p99_ms": r["move"]["p99_ms"],
            "lnid_add_p99_ms": r["lnid_add"]["p99_ms"],
            "floor_p50_ms": r["etcd_floor"]["p50_ms"],
            "floor_p99_ms": r["etcd_floor"]["p99_ms"],
            "failover_s": r["failover"]["in_sync_s"],
        }
        return {**top, **r}


def run_replicated(cfg: BenchConfig, managers: int, out: Callable[[str], None] | None = None) -> dict[str, Any]:
    def err(line: str) -> None:
        print(line, flush=True, file=sys.stderr)

    bench = ReplicatedBench(cfg, out or err, managers)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        with tempfile.TemporaryDirectory(prefix="hostvlan-bench-etcd-") as tmp:
            wd = Path(cfg.workdir) / "etcd" if cfg.workdir else Path(tmp)
            wd.mkdir(parents=True, exist_ok=True)
            return _run_loop(bench.run(wd))
    finally:
        if was_enabled:
            gc.enable()


def _ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else float("nan")


def run_compare(cfg: BenchConfig, managers: int, out: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The SQLite run, then the etcd run, and the ratios etcd / SQLite."""
    sqlite = run_sqlite(cfg, out)
    etcd = run_replicated(cfg, managers, out)
    ratios = {
        "load": _ratio(etcd["load_s"], sqlite["load_s"]),
        "reg_p50": _ratio(etcd["reg_p50_ms"], sqlite["reg_p50_ms"]),
        "reg_p99": _ratio(etcd["reg_p99_ms"], sqlite["reg_p99_ms"]),
        "move_p99": _ratio(etcd["move_p99_ms"], sqlite["move_p99_ms"]),
    }
    goals = {
        "reg_p99_le_1.5x": ratios["reg_p99"] <= 1.5,
        "load_le_1.5x": ratios["load"] <= 1.5,
        "failover_le_2s": etcd["failover_s"] <= 2.0,
    }
    keys = ("hosts", "vms", "load_s", "reg_p50_ms", "reg_p99_ms", "move_p99_ms")
    return {
        "ratios": ratios,
        "goals": goals,
        "sqlite_summary": {k: sqlite[k] for k in (*keys, "manager_rss_mib", "db_mib")},
        "etcd_summary": {
            k: etcd[k] for k in (*keys, "replica_rss_mib", "etcd_db_mib", "floor_p50_ms", "floor_p99_ms", "failover_s")
        },
        "sqlite": sqlite,
        "etcd": etcd,
    }


__all__ = ["ReplicatedBench", "run_compare", "run_replicated"]
