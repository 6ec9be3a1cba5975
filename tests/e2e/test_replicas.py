"""A replicated control plane under faults: Fig. 7 (bridges) with `control: {managers: 3,
store: etcd}` — a real 3-member etcd cluster, three manager replicas, real agents spread
over them, real frames.

Each fault runs while allowed and forbidden flows stream at 200 frames/s per flow and
(where it says so) a burst of `reg` commands goes through the CLI's client with every
replica's URL: kill -9 of the etcd leader, then of a replica agents are connected to;
a replica cut off from etcd (its link frozen); the whole etcd cluster stopped and
started again. After each: no acknowledged command lost, every replica has the same
table, agents in sync again (the time is printed as CP-FIGURE), ≤ 1% of the allowed
frames lost, no forbidden frame delivered, and the frames agree with the model.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hostvlan.client import Client, ManagerError
from hostvlan.demo import fig7
from hostvlan.model.ids import Mac, int_to_mac
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.check import run_check
from hostvlan.testbed.replicas import Replicas
from hostvlan.testbed.topology import Control
from hostvlan.testbed.traffic import BROADCAST

from .cp_helpers import Flow, Streams, probe_on, wait_for
from .support import assert_model_agrees, running

pytestmark = pytest.mark.root

VMS = ("vm1-1", "vm1-2", "vm2-1", "vm2-3", "vm3-2-1", "vm3-2-2", "vm3-3")
HOSTS = ["host1", "host2", "host3"]


def figure(name: str, value: object) -> None:
    print(f"\nCP-FIGURE {name} = {value}")


@pytest.fixture(scope="module")
def tb() -> Iterator[Testbed]:
    topo = fig7()
    topo = dataclasses.replace(
        topo, hosts=tuple(dataclasses.replace(h, backend="bridge") for h in topo.hosts), control=Control(3)
    )
    with running(topo) as bed:
        yield bed


def reps(tb: Testbed) -> Replicas:
    assert tb.replicas is not None
    return tb.replicas


def flows(tb: Testbed) -> list[Flow]:
    m = {n: tb.vms[n].mac for n in VMS}
    cross = [r for r in VMS if r not in ("vm1-2", "vm3-2-1", "vm3-2-2")]
    return [
        Flow("vm1-1", m["vm1-1"], m["vm2-1"], {"vm2-1": True}, 100),  # allowed, host1 -> host2
        Flow("vm3-2-1", m["vm3-2-1"], BROADCAST, {"vm1-2": True, "vm3-2-2": True, "vm2-3": False}, 100),
        Flow("vm1-2", m["vm1-2"], m["vm1-1"], {r: False for r in cross}),  # cross-LNID on host1
        Flow("vm2-3", m["vm2-3"], BROADCAST, {"vm3-3": True, "vm1-1": False, "vm2-1": False, "vm1-2": False}),
    ]


def judge(name: str, res: Any, fl: list[Flow]) -> None:
    lost = res.lost(fl)
    sent = sum(res.sent.get(i, 0) * sum(1 for w in f.expect.values() if w) for i, f in enumerate(fl))
    figure(f"{name}_traffic", {"rounds": res.rounds, "expected": sent, "lost": sum(lost.values())})
    assert res.leaked(fl) == {}, f"{name}: forbidden frames delivered"
    assert sum(lost.values()) <= 0.01 * sent, f"{name}: allowed frames lost: {lost} of {sent}"


def agree(tb: Testbed) -> list[dict[str, Any]]:
    """Every live replica has the same table (at the highest revision); that table."""
    tables = reps(tb).tables()
    first = next(iter(tables.values()))
    strip = [{k: v for k, v in r.items() if k in ("mac", "lnids", "host", "port")} for r in first]
    for i, t in tables.items():
        assert [{k: v for k, v in r.items() if k in ("mac", "lnids", "host", "port")} for r in t] == strip, i
    return first


def check_model(tb: Testbed) -> None:
    tb.refresh()
    assert_model_agrees(run_check(tb))


class Burst:
    """Workers registering fresh MACs through one client with every replica's URL."""

    def __init__(self, tb: Testbed, base: int, workers: int = 3) -> None:
        self.tb, self.base = tb, base
        self.acked: list[str] = []
        self.at: list[float] = []  # when each was acknowledged
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(workers)]

    def __enter__(self) -> Burst:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30.0)

    def _run(self, worker: int) -> None:
        urls = ",".join(reps(self.tb).urls)
        with Client(urls, self.tb.manager_token) as api:
            i = 0
            while not self._stop.is_set():
                m = int_to_mac(self.base + (worker << 16) + i)
                i += 1
                try:
                    api.reg(1, m, "host2")
                except ManagerError as exc:
                    self.failed.append(f"{m}: {exc}")  # not acknowledged: may or may not be in
                    continue
                self.acked.append(m)
                self.at.append(time.monotonic())

    def pause_after(self, t: float, within: float = 5.0) -> float:
        """The longest time without an acknowledgement in the `within` s after `t`."""
        times = [t, *sorted(x for x in self.at if t < x < t + within)]
        return max(b - a for a, b in itertools.pairwise(times)) if len(times) > 1 else within


def all_in(tb: Testbed, macs: list[str]) -> None:
    table = {Mac(r["mac"]) for r in agree(tb)}
    lost = [m for m in macs if m not in table]
    assert not lost, f"{len(lost)} acknowledged registrations lost, e.g. {lost[:5]}"


def test_etcd_leader_then_a_replica_killed_mid_burst(tb: Testbed) -> None:
    r = reps(tb)
    fl = flows(tb)
    with probe_on(tb) as probe, Streams(probe, fl, rate=200) as streams, Burst(tb, 0x52_54_02_00_00_00) as burst:
        wait_for(lambda: len(burst.acked) >= 100, 30.0, "registrations acknowledged", step=0.001)
        leader = r.cluster.leader()
        before = len(burst.acked)
        t0 = time.monotonic()
        r.kill_member(leader.name)
        wait_for(lambda: len(burst.acked) >= before + 50, 30.0, "acknowledged after the leader's kill", step=0.001)
        figure("etcd_leader_kill_to_next_50_acks_s", round(time.monotonic() - t0, 3))
        # the replica the agent of host2 (index 1) is connected to
        at = r.revision()
        t1 = time.monotonic()
        r.kill_replica(1)
        failover = r.wait_applied(["host2"], at, 10.0)  # on another replica, resumed where it was
        before = len(burst.acked)
        wait_for(lambda: len(burst.acked) >= before + 50, 30.0, "acknowledged after the replica's kill", step=0.001)
        figure("replica_kill_agent_resumed_elsewhere_s", round(failover, 3))
        time.sleep(0.3)
    figure("burst_pause_after_leader_kill_s", round(burst.pause_after(t0), 3))
    figure("burst_pause_after_replica_kill_s", round(burst.pause_after(t1), 3))
    judge("leader_and_replica_kill", streams.result, fl)
    figure("burst", {"acknowledged": len(burst.acked), "refused": len(burst.failed)})
    assert failover <= 2.0, "the agents of a killed replica resume on another within 2 s"
    r.wait_synced(HOSTS, 10.0)  # the burst is over: everyone catches up
    all_in(tb, burst.acked)
    r.start_member(leader.name)
    r.start_replica(1)
    r.wait_synced(HOSTS, 10.0)
    all_in(tb, burst.acked)  # the restarted replica has every one of them too
    check_model(tb)


def test_a_replica_cut_off_from_etcd_stops_serving_and_agents_move(tb: Testbed) -> None:
    r = reps(tb)
    fl = flows(tb)
    alone = Client(r.urls[0], tb.manager_token)  # the agent of host1 (index 0) starts on replica 0
    with probe_on(tb) as probe, Streams(probe, fl, rate=200) as streams:
        t0 = time.monotonic()
        r.cut(0)
        try:
            # within about a second it acknowledges nothing more and ends its feeds
            def refuses() -> bool:
                try:
                    alone.reg(1, "52:54:02:ff:00:01", "host2")
                except ManagerError as exc:
                    return exc.status == 503
                return False

            at = r.revision()
            wait_for(refuses, 10.0, "the cut-off replica refuses writes")
            refused_s = time.monotonic() - t0
            # it ends its feeds once it has had no etcd for LOST_AFTER_S: host1's agent moves
            moved_s = r.wait_applied(["host1"], at, 10.0, on=[1, 2]) + refused_s
            r.wait_synced(HOSTS, 10.0)
            with Client(",".join(r.urls), tb.manager_token) as api:  # the others take commands
                done = api.reg(1, "52:54:02:ff:00:02", "host2")
            time.sleep(0.3)
        finally:
            r.cut(0, down=False)
    figure("cut_off", {"refuses_writes_s": round(refused_s, 3), "agent_moved_s": round(moved_s, 3)})
    judge("cut_off", streams.result, fl)
    # back: it catches up before it serves again
    wait_for(lambda: alone.call("GET", "/v1/revision", params={"min_revision": str(done["revision"])}), 10.0, "r0")
    table = {Mac(x["mac"]) for x in agree(tb)}
    assert "52:54:02:ff:00:02" in table and "52:54:02:ff:00:01" not in table
    alone.close()
    check_model(tb)


def test_whole_etcd_cluster_stopped_and_started(tb: Testbed) -> None:
    r = reps(tb)
    fl = flows(tb)
    with probe_on(tb) as probe, Streams(probe, fl, rate=200) as streams:
        r.cluster.stop()
        try:
            with Client(r.urls[2], tb.manager_token) as api:

                def refuses() -> bool:
                    try:
                        api.reg(1, "52:54:02:fe:00:01", "host2")
                    except ManagerError as exc:
                        return exc.status == 503
                    return False

                wait_for(refuses, 10.0, "no replica acknowledges without etcd")
            time.sleep(1.0)  # agents are without a manager: the kernels alone enforce
        finally:
            t0 = time.monotonic()
            r.cluster.start()
        for m in r.cluster.members:
            tb.pids[f"etcd:{m.name}"] = m.pid
        with Client(",".join(r.urls), tb.manager_token) as api:
            api.reg(1, "52:54:02:fe:00:02", "host2")
        synced = r.wait_synced(HOSTS, 15.0)
        figure("cluster_restart_agents_in_sync_s", round(time.monotonic() - t0, 3))
        time.sleep(0.3)
    judge("cluster_restart", streams.result, fl)
    assert synced < 15.0
    table = {Mac(x["mac"]) for x in agree(tb)}
    assert "52:54:02:fe:00:02" in table and "52:54:02:fe:00:01" not in table
    check_model(tb)


def test_cli_with_every_url_reads_its_writes(tb: Testbed) -> None:
    """`HOSTVLAN_MANAGER=URL1,URL2,URL3 hostvlan reg …` then `show` on another replica."""
    r = reps(tb)
    env = {**os.environ, "HOSTVLAN_MANAGER": ",".join(r.urls), "HOSTVLAN_TOKEN": tb.manager_token}
    cli = [sys.executable, "-m", "hostvlan.cli"]
    subprocess.run([*cli, "reg", "5", "52:54:02:fd:00:01", "host3"], env=env, check=True, capture_output=True)
    got = httpx.get(
        r.urls[2] + "/v1/macs",
        params={"mac": "52:54:02:fd:00:01", "min_revision": str(r.revision())},
        headers={"Authorization": f"Bearer {tb.manager_token}"},
    ).json()
    assert got and got[0]["host"] == "host3"


def test_etcd_client_urls_on_loopback_and_on_the_management_network(tb: Testbed) -> None:
    """The testbed JSON's members answer on 127.0.0.1 (root namespace) and, from a host's
    namespace, on the management network."""
    from hostvlan.testbed import netns

    body = {"key": "L2hvc3R2bGFuL3Jldg=="}  # /hostvlan/rev
    members = tb.to_json()["etcd"]["members"]
    assert len(members) == 3 and len({m["pid"] for m in members}) == 3
    for m in members:
        assert httpx.post(m["client_url"] + "/v3/kv/range", json=body, timeout=5).json()["kvs"]
        with netns.inside(tb.hosts["host1"].netns):
            got = httpx.post(m["mgmt_url"] + "/v3/kv/range", json=body, timeout=5)
        assert got.status_code == 200 and got.json()["kvs"], m
    assert [x["url"] for x in tb.to_json()["managers"]] == reps(tb).urls
