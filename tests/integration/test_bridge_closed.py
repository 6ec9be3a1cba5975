"""The closed Linux bridge (`bridge.closing.Closing`, part of the agent's default), with real frames: a port
that joins while no agent runs receives nothing and sends nothing into the switch (nothing
forwarded, nothing learned); bound VMs keep talking, also through the fast path; a new agent's
apply binds the port and it works.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.bridge.backend import BridgeFilter
from hostvlan.datapath.bridge.closing import FWD, Closing
from hostvlan.datapath.bridge.guard import PROG as GUARD
from hostvlan.datapath.bridge.tc import PROG
from hostvlan.datapath.kernel import bpf as bpflib
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import BRIDGE, ClosedHost, Host, _forwarding, closed_hosts
from .switchhost import FORGED, OUTSIDE, OUTSIDE_MAC, add_vm_veth, closed_port_traffic, host_state, received
from .test_bridge_tc import _wait_forwarding

pytestmark = pytest.mark.root


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[[int], Host]]:
    with closed_hosts(prefix) as make:
        yield make


def _programs(host: Host, port: str, hook: int) -> list[str]:
    with netns.iproute(host.ns) as ipr:
        ifindex = int(ipr.link_lookup(ifname=port)[0])
    with netns.inside(host.ns):
        return [name for _, name, _ in bpflib.tcx_egress_programs(ifindex, hook)]


def _fdb(host: Host) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", host.ns, "bridge", "fdb", "show", "br", BRIDGE],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()


def _rejoin(host: Host, index: int) -> None:
    """vm<index>'s port deleted and created anew on the bridge: what the kernel gives a new port
    (unlocked, learning, no program), as when libvirt starts a domain."""
    vm = host.vms[index]
    with netns.iproute(host.ns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=vm.port)[0])
        add_vm_veth(ipr, vm)
        ipr.link("set", index=ipr.link_lookup(ifname=vm.port)[0], master=ipr.link_lookup(ifname=BRIDGE)[0])
    host.up()
    _wait_forwarding(host, vm.port)


def _state(host: Host, bound: int, lnids: dict[int, int] | None = None) -> FilterState:
    v = host.vms
    lnids = lnids or {}
    return host_state(
        {vm.mac: [lnids.get(vm.index, 1)] for vm in v[:bound]} | {OUTSIDE_MAC: [1]},
        {vm.port: vm.mac for vm in v[:bound]},
    )


def test_a_port_joining_while_no_agent_runs_is_closed_until_bound(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    filt = host.boot(_state(host, 2))
    assert isinstance(filt, BridgeFilter) and isinstance(filt.closing, Closing)
    filt.close()  # the agent is gone: what it left in the kernel stays
    _rejoin(host, 2)
    assert _programs(host, c.port, bpflib.TCX_EGRESS) == [] == _programs(host, c.port, bpflib.TCX_INGRESS)
    with netns.iproute(host.ns) as ipr:
        assert _forwarding(ipr, c.port)  # the kernel forwards on it: only hostvlan's hooks close it
    probe = host.probe()
    got = closed_port_traffic(probe, a, b, c)
    assert got[c.name] == []  # nothing of any tenant, nor of the wire
    # bound VMs keep talking, nothing of c's reaches them (c's MAC is unknown to the bridge: frames
    # to it are flooded, as by any bridge, to the ports the receive filter allows)
    assert got[b.name] == ["a-bcast", "a-to-b", "a-to-c", "out-bcast", "out-to-c"]
    assert got[a.name] == ["out-bcast", "out-to-c"]
    assert got[OUTSIDE] == ["a-bcast", "a-to-c"]
    fdb = _fdb(host)
    assert FORGED not in fdb and c.mac not in fdb  # nothing c sent was learned
    with netns.iproute(host.ns) as ipr:
        assert _forwarding(ipr, c.port)

    # a new agent (a new filter object) binds c: it works, also over the fast path
    agent = host.new_filter()
    agent.sync(_state(host, 3))
    agent.apply()
    assert _programs(host, c.port, bpflib.TCX_EGRESS) == [PROG]
    assert _programs(host, c.port, bpflib.TCX_INGRESS) == [GUARD, FWD]  # the address guard runs first
    assert agent.read() == agent.desired()
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, c.mac, "c-bcast"))
    probe.send(c.name, frame(a.mac, c.mac, "c-to-a"))
    probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))
    probe.send(c.name, frame(b.mac, FORGED, "c-forged"))
    got = received(probe.collect())
    assert got[c.name] == ["a-to-c"]
    assert got[a.name] == ["c-bcast", "c-to-a"]
    assert got[b.name] == ["c-bcast"]
    assert got[OUTSIDE] == ["c-bcast"]
    assert FORGED not in _fdb(host)


def test_the_fast_path_keeps_the_send_check_and_the_receive_filter(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    filt = host.boot(_state(host, 3, {2: 2}))  # c in LNID 2
    probe = host.probe()
    probe.send(a.name, frame(b.mac, a.mac, "a-to-b"))
    probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))  # other tenant: the egress program drops it
    probe.send(a.name, frame(b.mac, FORGED, "forged-to-b"))  # send check: not redirected, the lock drops it
    probe.send(a.name, frame(b.mac, c.mac, "spoof-c-to-b"))
    got = received(probe.collect())
    assert got[b.name] == ["a-to-b"] and got[c.name] == []
    assert filt.counters()[c.port].rx_dropped == 1
    assert FORGED not in _fdb(host)
    reader = host.new_filter()  # a fresh object that wants nothing reads the kernel's facts back
    assert reader.read() == filt.desired()


def test_unbinding_closes_the_fast_path_and_the_hooks(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 2))
    filt.unbind(b.port)
    filt.apply()
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(b.mac, a.mac, "a-to-b"))
    probe.send(a.name, frame(BROADCAST, a.mac, "a-bcast"))
    probe.send(b.name, frame(a.mac, b.mac, "b-to-a"))
    got = received(probe.collect())
    assert got[b.name] == [] and got[a.name] == []
    assert got[OUTSIDE] == ["a-bcast", "a-to-b"]  # b's MAC is no longer in the FDB: flooded to the uplink


def test_the_uplink_and_the_hosts_stack_work_while_a_new_port_is_closed(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 1))
    filt.close()
    _rejoin(host, 1)
    probe = host.probe()
    probe.send(a.name, frame(OUTSIDE_MAC, a.mac, "a-to-out"))
    probe.send(OUTSIDE, frame(a.mac, OUTSIDE_MAC, "out-to-a"))
    got = received(probe.collect())
    assert got[OUTSIDE] == ["a-to-out"] and got[a.name] == ["out-to-a"] and got[b.name] == []
    assert isinstance(host, ClosedHost)


def test_a_bound_name_reused_by_a_new_port_while_no_agent_runs_is_closed(make_host: Callable[[int], Host]) -> None:
    """libvirt reuses tap names: b's VM stops and another one's tap comes back as vnet1 while no
    agent runs. `open` holds ifindexes, not names: the new device is closed until an agent
    enforces it."""
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 2))
    filt.close()
    _rejoin(host, 1)  # same name, new device
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-bcast"))
    probe.send(a.name, frame(b.mac, a.mac, "a-to-b"))
    probe.send(b.name, frame(BROADCAST, FORGED, "b-forged"))
    probe.send(b.name, frame(a.mac, b.mac, "b-to-a"))
    got = received(probe.collect())
    assert got[b.name] == [] and got[a.name] == []
    assert got[OUTSIDE] == ["a-bcast"]
    assert FORGED not in _fdb(host)

    agent = host.new_filter()  # the agent restarts: its first apply enforces the new device
    agent.sync(_state(host, 2))
    agent.apply()
    assert agent.read() == agent.desired()
    probe = host.probe()
    probe.send(a.name, frame(b.mac, a.mac, "a-to-b"))
    probe.send(b.name, frame(BROADCAST, b.mac, "b-bcast"))
    got = received(probe.collect())
    assert got[b.name] == ["a-to-b"] and got[a.name] == ["b-bcast"]
