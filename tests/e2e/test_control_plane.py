"""The control plane on a running testbed, judged by real frames (SPEC §5, §7).

The manager is driven from the root namespace over its HTTP API, as an administrator's
tools would; every claim is measured on frames between the testbed's VM namespaces:

- `reg`, `unreg` and `move` change what frames reach within 1 s of the call returning,
  and the model (`run_check` against the manager's mirrored table) then agrees;
- a port that appears after its MAC was registered is bound when it appears; a port with
  no registration stays closed until it is registered;
- `kill -9` of an agent: the kernel keeps enforcing (no cross-LNID frame, no allowed
  frame lost), the table is never re-created, the new agent changes no element;
- `kill -9` of the manager: the filters keep enforcing, agents keep running and
  reconnect to a manager started again on the same database; `kill -9` in the middle of
  a burst of registrations loses none that was acknowledged;
- the API refuses calls without a valid token, and host tokens on admin calls.

Topology: the paper's Fig. 7 (host1: vm1-1 L1, vm1-2 L2; host2: vm2-1 L1, vm2-3 L3;
host3: vm3-2-1 L2, vm3-2-2 L2, vm3-3 L3). Measured figures are printed (`-s` shows them).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from hostvlan.demo import fig7
from hostvlan.model.ids import Mac, int_to_mac
from hostvlan.testbed import control, netns
from hostvlan.testbed.check import run_check
from hostvlan.testbed.topology import Topology
from hostvlan.testbed.traffic import BROADCAST

from .cp_helpers import (
    ENFORCE_WITHIN,
    Flow,
    NftMonitor,
    Streams,
    admin,
    agent_log,
    kernel_facts,
    make_vm,
    plug,
    port_closed,
    post,
    probe_on,
    recable,
    remove_vm,
    table_handle,
    until,
    wait_for,
)
from .support import assert_model_agrees, reached, running

if TYPE_CHECKING:
    from hostvlan.testbed.build import Testbed

pytestmark = pytest.mark.root

VMS = ("vm1-1", "vm1-2", "vm2-1", "vm2-3", "vm3-2-1", "vm3-2-2", "vm3-3")
LATE1 = Mac("52:54:00:00:0a:01")
LATE2 = Mac("52:54:00:00:0a:02")


def fig7_on_bridges() -> Topology:
    """Fig. 7 with every host on the Linux bridge: these tests recable taps between hosts'
    bridges and read the nftables sets back; the other back ends have their own tiers."""
    topo = fig7()
    return dataclasses.replace(topo, hosts=tuple(dataclasses.replace(h, backend="bridge") for h in topo.hosts))


def figure(name: str, value: object) -> None:
    print(f"\nCP-FIGURE {name} = {value}")


def mac(tb: Testbed, name: str) -> Mac:
    return tb.vms[name].mac


def bcast(tb: Testbed, sender: str, reach: Iterable[str], among: Iterable[str] = VMS, vlan: int | None = None) -> Flow:
    """A broadcast from `sender` that must reach exactly `reach` among `among`."""
    want = set(reach)
    return Flow(sender, mac(tb, sender), BROADCAST, {r: r in want for r in among if r != sender}, vlan)


def uni(tb: Testbed, sender: str, dst: str, delivered: bool) -> Flow:
    """A tagged unicast frame from `sender` to `dst`: delivered to `dst` or not."""
    return Flow(sender, mac(tb, sender), mac(tb, dst), {dst: delivered}, 100)


def host_status(tb: Testbed, host: str) -> dict[str, object]:
    with admin(tb) as api:
        status: dict[str, object] = next(h for h in api.get("/v1/hosts").json() if h["name"] == host)
    return status


def check_model(tb: Testbed) -> None:
    """Mirror the manager's table and judge every kind of frame from every endpoint."""
    tb.refresh()
    assert_model_agrees(run_check(tb))


def fig7_reach(tb: Testbed) -> dict[str, set[str]]:
    """Who receives whose broadcast now (judged by the model too)."""
    rep = run_check(tb, kinds=("broadcast",), forged=False)
    assert_model_agrees(rep)
    return {s: reached(rep, s) for s in VMS}


FIG7 = {
    "vm1-1": {"vm2-1"},
    "vm1-2": {"vm3-2-1", "vm3-2-2"},
    "vm2-1": {"vm1-1"},
    "vm2-3": {"vm3-3"},
    "vm3-2-1": {"vm1-2", "vm3-2-2"},
    "vm3-2-2": {"vm1-2", "vm3-2-1"},
    "vm3-3": {"vm2-3"},
}


@pytest.fixture(scope="module")
def tb() -> Iterator[Testbed]:
    with running(fig7_on_bridges()) as bed:
        assert tuple(bed.vms) == VMS
        yield bed


# ----- authentication --------------------------------------------------------------------
def test_api_refuses_missing_or_wrong_tokens_and_host_tokens_on_admin_calls(tb: Testbed) -> None:
    url = tb.manager_url
    body = {"lnid": 9, "mac": "52:54:00:00:0f:01", "host": "host1"}
    host1 = (tb.workdir / "host1.token").read_text().strip()
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic abc"}):
        for method, path, payload in (("GET", "/v1/hosts", None), ("POST", "/v1/reg", body), ("GET", "/v1/macs", None)):
            r = httpx.request(method, url + path, json=payload, headers=headers, timeout=5)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"] == "auth"
    as_host = {"Authorization": f"Bearer {host1}"}
    for method, path, payload in (
        ("GET", "/v1/hosts", None),
        ("POST", "/v1/reg", body),
        ("POST", "/v1/hosts", {"name": "intruder"}),
        ("GET", "/v1/macs", None),
        ("GET", "/v1/hosts/host2/feed", None),  # another host's feed
        ("POST", "/v1/hosts/host2/status", {"revision": 1}),
    ):
        r = httpx.request(method, url + path, json=payload, headers=as_host, timeout=5)
        assert r.status_code == 403, (method, path, r.text)
    with admin(tb) as api:
        assert api.get("/v1/macs", params={"mac": body["mac"]}).json() == []
        assert "intruder" not in {h["name"] for h in api.get("/v1/hosts").json()}


# ----- reg / unreg / move on real frames -----------------------------------------------
def test_reg_and_unreg_reach_real_frames_within_a_second(tb: Testbed) -> None:
    """vm1-1 joins LNID 3 (the paper's example) and leaves it again."""
    joined = [
        bcast(tb, "vm1-1", {"vm2-1", "vm2-3", "vm3-3"}),
        bcast(tb, "vm2-3", {"vm1-1", "vm3-3"}),
        uni(tb, "vm3-3", "vm1-1", True),
    ]
    left = [bcast(tb, "vm1-1", {"vm2-1"}), bcast(tb, "vm2-3", {"vm3-3"}), uni(tb, "vm3-3", "vm1-1", False)]
    with probe_on(tb) as probe:
        until(probe, left, time.monotonic())  # the measurement sees the state before
        t = post(tb, "/v1/reg", {"lnid": 3, "mac": mac(tb, "vm1-1"), "host": "host1"})
        reg_s = until(probe, joined, t)
    figure("reg_to_frames_s", round(reg_s, 4))
    assert reg_s <= ENFORCE_WITHIN
    check_model(tb)
    assert fig7_reach(tb)["vm1-1"] == {"vm2-1", "vm2-3", "vm3-3"}

    with probe_on(tb) as probe:
        t = post(tb, "/v1/unreg", {"lnid": 3, "mac": mac(tb, "vm1-1")})
        unreg_s = until(probe, left, t)
    figure("unreg_to_frames_s", round(unreg_s, 4))
    assert unreg_s <= ENFORCE_WITHIN
    check_model(tb)
    assert fig7_reach(tb) == FIG7


def test_move_rebinds_the_port_on_the_new_host_within_a_second(tb: Testbed) -> None:
    """vm1-2 (LNID 2) migrates from host1 to host3 and back: its new tap is cabled first
    (and stays closed: the MAC is not placed there), then `move` opens it."""
    moved = [
        bcast(tb, "vm1-2", {"vm3-2-1", "vm3-2-2"}),  # first: re-teaches the FDBs where vm1-2 now is
        uni(tb, "vm3-2-1", "vm1-2", True),
        bcast(tb, "vm1-1", {"vm2-1"}),
    ]
    cut_off = [bcast(tb, "vm1-2", set()), uni(tb, "vm3-2-1", "vm1-2", False), bcast(tb, "vm1-1", {"vm2-1"})]
    try:
        recable(tb, "vm1-2", "host3", "vnet9")
        with probe_on(tb) as probe:
            until(probe, cut_off, time.monotonic(), confirm=0.3)  # fail closed: tap there, MAC not placed
            assert port_closed(tb, "host3", "vnet9")  # dropped by host3's bridge: a locked, unbound port
            t = post(tb, "/v1/move", {"mac": mac(tb, "vm1-2"), "host": "host3"})
            move_s = until(probe, moved, t)
        figure("move_to_frames_s", round(move_s, 4))
        assert move_s <= ENFORCE_WITHIN
        check_model(tb)
        assert fig7_reach(tb)["vm1-2"] == {"vm3-2-1", "vm3-2-2"}
    finally:
        recable(tb, "vm1-2", "host1", "vnet1")
    with probe_on(tb) as probe:
        t = post(tb, "/v1/move", {"mac": mac(tb, "vm1-2"), "host": "host1"})
        back_s = until(probe, moved, t)
    figure("move_back_to_frames_s", round(back_s, 4))
    assert back_s <= ENFORCE_WITHIN
    check_model(tb)
    assert fig7_reach(tb) == FIG7


# ----- ports that appear later -------------------------------------------------------------
def test_port_appearing_after_its_registration_is_bound_when_it_appears(tb: Testbed) -> None:
    among = (*VMS, "late1")
    try:
        late = {"late1": make_vm(tb, "late1", LATE1, "vnet7"), "late2": make_vm(tb, "late2", LATE2, "vnet8")}
        # registered first: host1 knows the MAC and binds no port to it (there is none yet)
        post(tb, "/v1/reg", {"lnid": 1, "mac": LATE1, "host": "host1"})
        tb.program()
        facts = kernel_facts(tb, "host1")
        assert LATE1 in facts.known
        assert not [b for b in facts.bound if b[1] == LATE1]
        with probe_on(tb, late) as probe:
            appeared = plug(tb, "late1", "host1", "vnet7")
            flows = [
                Flow("late1", LATE1, BROADCAST, {r: r in ("vm1-1", "vm2-1") for r in VMS}),
                Flow("vm2-1", mac(tb, "vm2-1"), LATE1, {"late1": True}, 100),
                bcast(tb, "vm1-2", {"vm3-2-1", "vm3-2-2"}, among),
            ]
            bind_s = until(probe, flows, appeared)
            figure("port_appeared_to_frames_s", round(bind_s, 4))
            assert bind_s <= ENFORCE_WITHIN
            assert ("vnet7", LATE1) in kernel_facts(tb, "host1").bound

            # a port whose MAC nobody registered stays closed both ways (fail closed) …
            plug(tb, "late2", "host2", "vnet8")
            netns.wait_operstate_up([tb.hosts["host2"].netns, late["late2"]])
            closed = [
                Flow("late2", LATE2, BROADCAST, {r: False for r in among}),
                Flow("vm2-1", mac(tb, "vm2-1"), LATE2, {"late2": False}, 100),
                Flow("late1", LATE1, BROADCAST, {"late2": False, "vm2-1": True}),
            ]
            until(probe, closed, time.monotonic(), confirm=0.5)
            assert port_closed(tb, "host2", "vnet8")  # dropped by host2's bridge: a locked, unbound port
            # … until it is registered
            t = post(tb, "/v1/reg", {"lnid": 1, "mac": LATE2, "host": "host2"})
            opened = [
                Flow("late2", LATE2, BROADCAST, {r: r in ("vm1-1", "vm2-1", "late1") for r in among}),
                Flow("vm2-1", mac(tb, "vm2-1"), LATE2, {"late2": True}, 100),
                Flow("late1", LATE1, BROADCAST, {"late2": True, "vm2-1": True}),
            ]
            reg_s = until(probe, opened, t)
        figure("reg_of_present_port_to_frames_s", round(reg_s, 4))
        assert reg_s <= ENFORCE_WITHIN
    finally:
        for name in ("late1", "late2"):
            remove_vm(tb, name)
        with admin(tb) as api:
            for m in (LATE1, LATE2):
                api.post("/v1/rm", json={"mac": m})
        tb.program()
    check_model(tb)
    assert fig7_reach(tb) == FIG7


# ----- agent restart -----------------------------------------------------------------------
def test_agent_kill_and_restart_keeps_enforcing_without_losing_allowed_frames(tmp_path: Path) -> None:
    with running(fig7_on_bridges()) as tb, probe_on(tb) as probe:
        cross = [r for r in VMS if r not in ("vm1-2", "vm3-2-1", "vm3-2-2")]
        flows = [
            uni(tb, "vm1-1", "vm2-1", True),  # allowed, leaves host1
            bcast(tb, "vm3-2-1", {"vm1-2", "vm3-2-2"}, vlan=100),  # allowed, into host1
            Flow("vm1-2", mac(tb, "vm1-2"), mac(tb, "vm1-1"), {r: False for r in cross}),  # cross-LNID on host1
            bcast(tb, "vm2-3", {"vm3-3"}),  # cross-LNID broadcast into host1
        ]
        handle = table_handle(tb, "host1")
        mon = NftMonitor(tb, "host1", tmp_path / "nft-monitor.jsonl")
        try:
            with Streams(probe, flows, rate=200) as streams:
                time.sleep(0.5)
                old_pid = tb.pids["agent:host1"]
                tb.kill("agent:host1")
                assert not control.running(old_pid)
                wait_for(lambda: not host_status(tb, "host1")["connected"], 2.0, "the manager sees host1's agent gone")
                assert not host_status(tb, "host1")["in_sync"]
                time.sleep(1.0)  # nobody programs host1 now: the kernel alone enforces
                restart_s = tb.restart_agent("host1")
                time.sleep(0.5)
            res = streams.result
            changes = mon.events()
            # the monitor sees changes made to host1 (so its silence above means something)
            post(tb, "/v1/reg", {"lnid": 3, "mac": mac(tb, "vm1-1"), "host": "host1"})
            tb.program()
            wait_for(lambda: len(mon.events()) > 0, 5.0, "nft monitor sees a change")
        finally:
            mon.close()
        lost = res.lost(flows)
        figure("agent_restart", {"restart_to_in_sync_s": round(restart_s, 3), "rounds": res.rounds, "lost": lost})
        assert res.rounds >= 300  # ≥ 1.5 s of traffic at 200 frames/s per flow
        assert res.leaked(flows) == {}, "cross-LNID frames delivered during the agent's restart"
        assert sum(lost.values()) == 0, f"allowed frames lost during the agent's restart: {lost}"
        assert changes == [], f"host1's ruleset changed during the agent's restart: {changes[:5]}"
        assert table_handle(tb, "host1") == handle
        log = agent_log(tb, "host1")
        assert tb.pids["agent:host1"] != old_pid
        new_run = log[log.rindex("kept the tenant filter") :]  # the restarted agent's lines
        assert "snapshot enforced" in new_run
        assert "0 element changes (reconciled with what the kernel held)" in new_run
        assert restart_s < 5.0
        check_model(tb)


# ----- manager down ------------------------------------------------------------------------
def test_manager_kill_keeps_filters_and_agents_then_a_new_manager_takes_over() -> None:
    with running(fig7_on_bridges()) as tb:
        tb.refresh()
        agents = {k: v for k, v in tb.pids.items() if k.startswith("agent:")}
        tb.kill("manager")
        with pytest.raises(httpx.TransportError):
            httpx.get(tb.manager_url + "/healthz", timeout=2)
        # every agent noticed, keeps running, keeps its view in the kernel
        for key in agents:
            host = key.split(":", 1)[1]
            wait_for(
                lambda h=host: "enforcing the last view" in agent_log(tb, h), 10.0, f"{host} sees the manager gone"
            )
        assert fig7_reach(tb) == FIG7
        assert_model_agrees(run_check(tb))  # with the table mirrored before the crash
        assert all(control.running(pid) for pid in agents.values())

        waited = tb.restart_manager()  # same database, same argv; agents reconnect by themselves
        figure("manager_restart_agents_resynced_s", round(waited, 3))
        assert {k: v for k, v in tb.pids.items() if k.startswith("agent:")} == agents
        with admin(tb) as api:
            hosts = api.get("/v1/hosts").json()
        assert all(h["connected"] and h["in_sync"] for h in hosts), hosts
        with probe_on(tb) as probe:
            t = post(tb, "/v1/reg", {"lnid": 3, "mac": mac(tb, "vm1-1"), "host": "host1"})
            reg_s = until(probe, [bcast(tb, "vm1-1", {"vm2-1", "vm2-3", "vm3-3"})], t)
        figure("reg_after_manager_restart_to_frames_s", round(reg_s, 4))
        assert reg_s <= ENFORCE_WITHIN
        check_model(tb)


# ----- manager killed in the middle of a burst ---------------------------------------------
def test_manager_kill_mid_burst_loses_no_acknowledged_registration() -> None:
    with running(fig7_on_bridges()) as tb:
        acked: list[Mac] = []
        ended: list[str] = []

        def burst(worker: int) -> None:
            with admin(tb) as api:
                for i in range(5000):
                    m = int_to_mac(0x52_54_01_00_00_00 + (worker << 16) + i)
                    try:
                        r = api.post("/v1/reg", json={"lnid": 1, "mac": m, "host": "host2"})
                    except httpx.TransportError as exc:
                        ended.append(f"{m}: {type(exc).__name__}")
                        return
                    if r.status_code != 200:
                        ended.append(f"{m}: {r.status_code} {r.text}")
                        return
                    acked.append(m)
                ended.append("finished")

        workers = [threading.Thread(target=burst, args=(w,)) for w in range(4)]
        for w in workers:
            w.start()
        burst_s = wait_for(lambda: len(acked) >= 300, 30.0, "registrations acknowledged", step=0.001)
        tb.kill("manager")
        for w in workers:
            w.join(30.0)
        assert len(ended) == 4 and "finished" not in ended, ended  # the crash cut every worker short

        tb.restart_manager()
        with admin(tb) as api:
            rows = {Mac(r["mac"]): r for r in api.get("/v1/macs").json()}
        lost = [m for m in acked if m not in rows]
        stored = len(rows) - len(VMS)
        figure("burst", {"acknowledged": len(acked), "in": round(burst_s, 2), "stored": stored, "lost": len(lost)})
        assert not lost, f"{len(lost)} acknowledged registrations lost, e.g. {lost[:5]}"
        new = {m for m in rows if m.startswith("52:54:01:")}
        assert all(rows[m]["lnids"] == [1] and rows[m]["host"] == "host2" for m in new)
        assert len(new) - len(acked) <= 4  # at most the in-flight ones, stored whole
        # every agent resynced: LNID 1 concerns host1 (vm1-1) and host2, not host3
        assert new <= kernel_facts(tb, "host1").known
        assert new <= kernel_facts(tb, "host2").known
        assert not new & kernel_facts(tb, "host3").known
        check_model(tb)
