"""Fail closed (SPEC §7): an empty filter passes nothing; an unbound port neither sends nor receives."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hostvlan.model import verdict
from hostvlan.model.ids import Mac
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, frame

from .hostnet import OUTSIDE, UNBOUND, UPLINK, Host, counter_delta, drops, flood_set, host_state, send_all

pytestmark = pytest.mark.root

EXT = Mac("02:aa:00:00:00:01")  # a router / client behind the wire


def test_empty_filter_passes_nothing_in_any_direction(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    filt = host.start()  # installed, no entries, no bindings; links come up only afterwards
    assert filt.read() == filt.desired()
    probe = host.probe()
    rx0, tx0 = drops(filt)

    frames = []
    for vm in host.vms:  # VM → VM and VM → outside
        frames += flood_set(vm.name, vm.port, vm.mac, "empty")
    frames += flood_set(OUTSIDE, UPLINK, EXT, "empty")  # outside → VM
    sent = send_all(probe, frames)
    got = probe.collect()

    assert {name: [r.tag for r in rs] for name, rs in got.items()} == {vm.name: [] for vm in host.vms} | {OUTSIDE: []}
    rx1, tx1 = drops(filt)
    # every frame stopped at the door, by the fail-closed rule of unbound ports
    assert counter_delta(tx0, tx1) == {UNBOUND: len(sent)}
    assert counter_delta(rx0, rx1) == {}


def test_unbound_port_neither_sends_nor_receives(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    a, b, unbound = host.vms
    # all three MACs are known and in LNID 1, but only a and b are bound to their ports
    state = host_state(
        {a.mac: [1], b.mac: [1], unbound.mac: [1], EXT: [1]},
        {a.port: a.mac, b.port: b.mac},
    )
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)

    probe.send(a.name, frame(BROADCAST, a.mac, "from-a"))
    probe.send(unbound.name, frame(BROADCAST, unbound.mac, "from-unbound"))
    probe.send(unbound.name, frame(MULTICAST, unbound.mac, "from-unbound-mc"))
    probe.send(OUTSIDE, frame(BROADCAST, EXT, "from-outside"))
    got = {name: sorted(r.tag for r in rs) for name, rs in probe.collect().items()}

    assert got == {
        a.name: ["from-outside"],
        b.name: ["from-a", "from-outside"],
        unbound.name: [],  # receives nothing, not even from its own LNID or the outside
        OUTSIDE: ["from-a"],  # the unbound port's frames never reach the wire
    }
    rx1, tx1 = drops(filt)
    assert counter_delta(tx0, tx1) == {UNBOUND: 2}
    assert counter_delta(rx0, rx1) == {UNBOUND: 2}  # the copies of from-a and from-outside
    # the model agrees
    assert not verdict.send(state, unbound.port, unbound.mac).allow
    assert not verdict.receive(state, a.mac, unbound.port).allow
    assert verdict.receive(state, a.mac, b.port).allow
