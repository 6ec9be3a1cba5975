"""The QEMU stand-in (`python -m hostvlan.testbed.vmtap`): its life cycle, and what it costs.

It is test scaffolding (the data path is the kernel's macvtap and nftables); its cost
is measured and printed so the numbers in its module doc can be checked on any machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostvlan.testbed import netns
from hostvlan.testbed.traffic import frame
from hostvlan.testbed.vmtap import relay_binary

from .macvtapnet import OUTSIDE_IP, OUTSIDE_MAC, Host, host_factory, host_state

pytestmark = pytest.mark.root

CHUNK = 250  # frames per burst: below every queue on the way (tun 1000, macvtap 500)
CHUNKS = 80


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rtt_ms(ns: str, ip: str) -> float:
    got = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-q", "-c", "100", "-i", "0.005", "-W", "1", ip],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    m = re.search(r"= [\d.]+/([\d.]+)/", got.stdout)
    assert m, got.stdout
    return float(m.group(1))


@pytest.fixture(params=["c", "python"])
def relay(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with either copy loop (the stand-ins inherit the variable)."""
    monkeypatch.setenv("HOSTVLAN_VMTAP_RELAY", request.param)
    return str(request.param)


def test_relay_compiles(tmp_path: Path) -> None:
    binary = relay_binary(tmp_path)
    assert binary is not None and os.access(binary, os.X_OK)
    assert relay_binary(tmp_path) == binary  # cached by source hash


def test_standin_life_cycle(make_mvhost: Callable[[int], Host], relay: str) -> None:
    host = make_mvhost(1)
    (vm,) = host.vms
    host.start(host_state({vm.mac: [1]}, {vm.port: vm.mac}))  # ready line checked inside
    with netns.iproute(vm.ns) as ipr:
        (link,) = ipr.get_links(ifname="eth0")
        assert link.get_attr("IFLA_ADDRESS") == vm.mac and link["flags"] & 1
        assert [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"])] == [vm.ip]
    proc = host.standins[vm.port].proc
    log = host.stop_vm(vm)  # SIGTERM: exit 0, counts on stderr
    assert proc.returncode == 0 and "guest->macvtap" in log
    assert ("copy loop C " if relay == "c" else "copy loop Python") in log
    with netns.iproute(vm.ns) as ipr:
        assert ipr.link_lookup(ifname="eth0") == []  # the guest NIC went with the process


def test_standin_cost(make_mvhost: Callable[[int], Host], relay: str, capsys: pytest.CaptureFixture[str]) -> None:
    host = make_mvhost(2)
    a, b = host.vms
    state = host_state({a.mac: [1], b.mac: [1], OUTSIDE_MAC: [1]}, {a.port: a.mac, b.port: b.mac})
    host.start(state)
    rtt_vm = _rtt_ms(a.ns, b.ip)  # crosses two stand-ins each way
    rtt_wire = _rtt_ms(a.ns, OUTSIDE_IP)  # crosses one

    probe = host.probe(a.name, b.name)
    pids = [host.standins[vm.port].proc.pid for vm in (a, b)]
    cpu0 = sum(_cpu_seconds(p) for p in pids)
    t0 = time.perf_counter()
    received = 0
    for c in range(CHUNKS):
        for i in range(CHUNK):
            probe.send(a.name, frame(b.mac, a.mac, f"cost-{c}-{i}"))
        # wait for the whole chunk before the next (one chunk in flight at most, even when a
        # loaded machine holds a stand-in off the CPU for a while), no idle settle time
        quiet = time.perf_counter() + 2.0
        while received < (c + 1) * CHUNK and time.perf_counter() < quiet:
            got = probe.collect(settle=0.01)[b.name]
            if got:
                received += len(got)
                quiet = time.perf_counter() + 2.0
    secs = time.perf_counter() - t0
    cpu = sum(_cpu_seconds(p) for p in pids) - cpu0
    total = CHUNK * CHUNKS
    assert received == total, f"lost {total - received} of {total} frames"

    per_frame_us = cpu / total * 1e6  # both stand-ins: one copy guest->macvtap, one macvtap->guest
    with capsys.disabled():
        print(f"\n[hostvlan timing] QEMU stand-in ({relay} copy loop; per frame and direction = one stand-in copy):")
        print(f"[hostvlan timing]   ping RTT vm->vm (2 stand-ins)      {rtt_vm * 1000:8.1f} us")
        print(f"[hostvlan timing]   ping RTT vm->wire (1 stand-in)     {rtt_wire * 1000:8.1f} us")
        print(f"[hostvlan timing]   CPU per frame, 2 copies            {per_frame_us:8.1f} us")
        print(f"[hostvlan timing]   burst rate vm->vm (incl. probe)    {total / secs:8.0f} frames/s")
    assert rtt_vm < 50 and rtt_wire < 50  # ms: generous, a shared machine
