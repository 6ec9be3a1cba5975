"""OVS: a port that joins the bridge while no agent runs is closed by construction, with real
frames. The bridge is `fail-mode=secure` (no NORMAL fallback, no flow of its own) and every
table of hostvlan's ends in a table-miss drop: a port no flow names (an unknown `in_port`)
matches no classification flow, and no output action names it (floods are one copy per
bound port, unicast goes to a bound port or the uplinks), so it neither sends nor receives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from hostvlan.testbed.traffic import BROADCAST, frame

from .ovsnet import BRIDGE, OvsHost, ovs_hosts
from .switchhost import FORGED, OUTSIDE, OUTSIDE_MAC, closed_port_traffic, host_state, received

pytestmark = pytest.mark.root


@pytest.fixture
def make_ovs(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def test_a_port_added_while_no_agent_runs_neither_sends_nor_receives(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(3, ports_on_bridge=2)  # vnet2 exists, not on the bridge yet
    a, b, c = host.vms
    # c's MAC is even known, in a's and b's LNID: only the binding is missing
    entries = {a.mac: [1], b.mac: [1], c.mac: [1], OUTSIDE_MAC: [1]}
    filt = host.boot(host_state(entries, {a.port: a.mac, b.port: b.mac}))
    filt.close()  # the agent is gone
    host.attach(c)  # a VM starts: its port joins the bridge
    host.up()
    ofport = host.db.ofports(BRIDGE)[c.port]
    every_flow = host.tools.ofctl("dump-flows", host.target)
    assert f"in_port={ofport}" not in every_flow and f"output:{ofport}" not in every_flow
    assert "NORMAL" not in every_flow
    for _ in range(host.CACHE_ROUNDS):
        probe = host.probe()
        got = closed_port_traffic(probe, a, b, c)
        assert got[c.name] == []
        assert got[b.name] == ["a-bcast", "a-to-b", "out-bcast"]  # bound VMs keep talking
        assert got[a.name] == ["out-bcast"]
        assert got[OUTSIDE] == ["a-bcast", "a-to-c"]  # c's MAC has no bound port: to the uplink

    agent = host.new_filter()  # an agent starts and binds c
    agent.sync(host_state(entries, {vm.port: vm.mac for vm in host.vms}))
    agent.apply()
    agent.refresh_ports()
    assert agent.read() == agent.desired()
    for _ in range(host.CACHE_ROUNDS):
        probe = host.probe()
        probe.send(c.name, frame(BROADCAST, c.mac, "c-bcast"))
        probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))
        probe.send(c.name, frame(b.mac, FORGED, "c-forged"))
        got = received(probe.collect())
        assert got[c.name] == ["a-to-c"]
        assert got[a.name] == ["c-bcast"] and got[b.name] == ["c-bcast"] and got[OUTSIDE] == ["c-bcast"]
