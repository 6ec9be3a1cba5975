"""macvtap with the guard (`macvtap_guard.MacvtapGuard`), real frames through the QEMU stand-ins: a
macvtap created on the uplink and brought up while no agent runs (what libvirt does when a
domain starts) receives nothing and sends nothing; bound VMs keep talking; once a new agent
binds it, it works.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from hostvlan.datapath.factory import build_backend
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.datapath.macvtap_guard import GUARD_TABLE
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, frame

from .macvtapnet import OUTSIDE, OUTSIDE_MAC, Host, build_host, host_state, received
from .switchhost import FORGED, RecordingNft, closed_port_traffic, one_host_per_test

pytestmark = pytest.mark.root


@dataclass
class GuardedHost(Host):
    OPTIONS: ClassVar[dict[str, Any]] = {"guard": True}

    def new_filter(self) -> Any:
        with netns.inside(self.ns):
            filt = build_backend(self.spec(), nft=RecordingNft(), **self.OPTIONS)
        assert isinstance(filt, MacvtapFilter) and filt.guard is not None
        self._closers.append(filt.close)
        return filt


def _build(prefix: str, n: int) -> GuardedHost:
    h = build_host(prefix, n)
    return GuardedHost(h.prefix, h.ns, h.outside_ns, h.vms, h.nodes)


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[[int], GuardedHost]]:
    yield from one_host_per_test(prefix, _build)


def test_a_macvtap_raised_while_no_agent_runs_is_closed_until_bound(make_host: Callable[[int], GuardedHost]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    entries = {a.mac: [1], b.mac: [1], c.mac: [1], OUTSIDE_MAC: [1]}  # only c's binding is missing
    filt = host.boot(host_state(entries, {a.port: a.mac, b.port: b.mac}))
    assert filt.read() == filt.desired()
    filt.close()  # the agent is gone
    host.stop_vm(c)
    host.del_macvtap(c.port)
    host.add_macvtap(c.port, c.mac)  # libvirt creates the macvtap and QEMU brings it up at once
    host.start_vm(c)
    probe = host.probe()
    got = closed_port_traffic(probe, a, b, c)
    assert got[c.name] == []
    assert got[b.name] == ["a-bcast", "a-to-b", "out-bcast"]  # bound VMs keep talking
    assert got[a.name] == ["out-bcast"]
    assert got[OUTSIDE] == ["a-bcast"]

    agent = host.new_filter()  # an agent starts and binds c
    agent.sync(host_state(entries, {vm.port: vm.mac for vm in host.vms}))
    agent.apply()
    assert agent.read() == agent.desired()
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, c.mac, "c-bcast"))
    probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))
    probe.send(c.name, frame(b.mac, FORGED, "c-forged"))
    got = received(probe.collect())
    assert got[c.name] == ["a-to-c"]
    assert got[a.name] == ["c-bcast"] and got[b.name] == ["c-bcast"] and got[OUTSIDE] == ["c-bcast"]

    agent.remove()  # both tables in one transaction
    assert not host.nft_cli("list", "tables").stdout.count(GUARD_TABLE)
