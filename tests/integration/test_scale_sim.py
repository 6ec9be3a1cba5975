"""Simulated agents against a real manager process, at small sizes (seconds, not minutes).

- bulk host registration is one durable transaction, all or nothing;
- simulated agents load the Table 1 layout (scaled down) and hold exactly the layout's
  views; a `reg` reaches exactly the tenant's hosts (0 bytes to the others);
- a real agent (`hostvlan.agent.daemon.Agent`, in-memory data path) joins the same
  run: the manager serves both alike, and both agree with the model;
- after `kill -9` and a restart on the same database every agent resyncs;
- `hostvlan bench control-plane` itself, tiny, with its worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from hostvlan.agent import daemon
from hostvlan.agent.daemon import Agent, AgentConfig
from hostvlan.bench.control_plane import BenchConfig, ManagerProcess, run
from hostvlan.datapath.memory import MemoryFilter
from hostvlan.model.ids import HostId, Mac
from hostvlan.sim.layout import EXTRA_MAC_BASE, Layout, mac_of
from hostvlan.sim.procs import Agents

LAYOUT = Layout(hosts=16, vms_per_host=4, vms_per_tenant=4)
TIMEOUT = 20.0


async def _post(http: httpx.AsyncClient, path: str, body: Any, status: int = 200) -> Any:
    r = await http.post(path, json=body)
    assert r.status_code == status, r.text
    return r.json()


async def _scenario(workdir: Path) -> None:
    mgr = ManagerProcess(workdir)
    await mgr.start()
    http = httpx.AsyncClient(base_url=mgr.url, headers={"Authorization": f"Bearer {mgr.token}"}, trust_env=False)
    fleet = Agents(mgr.url, workers=0)
    real: asyncio.Task[None] | None = None
    try:
        names = [LAYOUT.host_name(h) for h in range(LAYOUT.hosts)]
        # bulk registration: all or nothing
        bad = await _post(http, "/v1/hosts/batch", {"names": ["ok1", "no/slash"]}, 400)
        assert bad["error"] == "names[1]"
        got = await _post(http, "/v1/hosts/batch", {"names": [*names, "real0"]}, 201)
        tokens = {h["name"]: h["token"] for h in got["hosts"]}
        dup = await _post(http, "/v1/hosts/batch", {"names": ["fresh", names[0]]}, 409)
        assert dup["error"] == "conflict"
        listed = {h["name"] for h in (await http.get("/v1/hosts")).json()}
        assert listed == {*names, "real0"}, "a refused batch registered something"

        fleet.start([(n, tokens[n]) for n in names])
        kernel = MemoryFilter()
        agent = Agent(AgentConfig(mgr.url, HostId("real0"), tokens["real0"], uplinks={}), kernel)
        real = asyncio.create_task(agent.run())
        await fleet.wait_applied(names, got["revision"], TIMEOUT, reported=True)

        # load, one pod per batch; each pod's hosts hear of their batch only
        for pod in range(LAYOUT.pods):
            hosts = LAYOUT.hosts_of_pod(pod)
            ans = await _post(http, "/v1/batch", {"ops": list(LAYOUT.reg_ops(hosts))})
            await fleet.wait_applied([names[h] for h in hosts], ans["revision"], TIMEOUT, reported=True)
        sizes, wrong = await fleet.check(LAYOUT)
        assert not wrong and set(sizes) == {LAYOUT.view_entries}

        # a VM of tenant 1 on the real agent's host: the sim hosts of tenant 1 and the real one change
        before = await fleet.bytes_in()
        vm = mac_of(1, EXTRA_MAC_BASE)
        ans = await _post(http, "/v1/reg", {"lnid": 1, "mac": vm, "host": "real0", "port": "vreal"})
        tenant = [names[h] for h in LAYOUT.tenant_hosts(1)]
        await fleet.wait_applied(tenant, ans["revision"], TIMEOUT)
        for _ in range(200):
            if agent.state.revision >= ans["revision"]:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # anything sent by mistake has time to arrive
        after = await fleet.bytes_in()
        assert {n for n in names if after[n] != before[n]} == set(tenant)
        states = await fleet.states(tenant)
        assert all(s.entries == LAYOUT.view_entries + 1 for s in states.values())
        want = {Mac(LAYOUT.mac(h, 0)) for h in LAYOUT.tenant_hosts(1)} | {Mac(vm)}
        assert set(kernel.state().entries) == want, "the real agent's data path holds tenant 1, nothing else"
        snap = json.loads(await _feed_first_line(mgr.url, "real0", tokens["real0"]))
        assert set(snap["entries"]) == want and snap["local"] == {vm: "vreal"}

        # kill -9 and start again on the same database: every agent resyncs
        snaps = {n: s.snapshots for n, s in (await fleet.states()).items()}
        mgr.kill()
        await mgr.start()
        rev = (await http.get("/v1/revision")).json()["revision"]
        assert rev == ans["revision"], "the restarted manager lost an acknowledged revision"
        for _ in range(300):
            now = await fleet.states()
            if all(s.snapshots > snaps[n] and s.reported >= rev for n, s in now.items()):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the simulated agents did not resync after the restart")
        sizes, _ = await fleet.check(LAYOUT)
        assert sizes == [LAYOUT.view_entries + (1 if n in tenant else 0) for n in names]
    finally:
        if real is not None:
            real.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await real
        await fleet.stop()
        await http.aclose()
        mgr.stop()


async def _feed_first_line(url: str, host: str, token: str) -> bytes:
    async with (
        httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, trust_env=False) as c,
        c.stream("GET", f"/v1/hosts/{host}/feed") as resp,
    ):
        async for line in resp.aiter_lines():
            return line.encode()
    raise AssertionError("the feed ended before its snapshot")


class _NoLinkEvents:
    """The agent's netlink link watcher, faked at the boundary: no port comes or goes here."""

    def __init__(self, callback: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_simulated_and_real_agents_on_one_manager(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(daemon, "LinkWatcher", _NoLinkEvents)
    asyncio.run(asyncio.wait_for(_scenario(tmp_path), 120))


def test_bench_control_plane_tiny(tmp_path: Path) -> None:
    cfg = BenchConfig(
        hosts=8,
        vms_per_host=4,
        vms_per_tenant=2,
        regs=5,
        moves=4,
        lnid_adds=5,
        restart_writes=5,
        sim_procs=2,
        workdir=str(tmp_path),
        progress=False,
        timeout=60,
    )
    out = run(cfg)
    for key in (
        "load_s",
        "manager_rss_mib",
        "db_mib",
        "view_entries_max",
        "reg_p50_ms",
        "reg_p99_ms",
        "unaffected_bytes",
        "move_p99_ms",
        "restart_resync_s",
        "lost_acknowledged",
    ):
        assert isinstance(out[key], int | float), key
    assert out["views_correct"] is True
    assert out["view_entries_max"] == 8
    assert out["unaffected_bytes"] == 0
    assert out["lost_acknowledged"] == 0
    assert out["reg"]["n"] == 5 and out["move"]["n"] == 4
