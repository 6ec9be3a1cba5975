"""Real frames through a real bridge get exactly the model's verdicts (SPEC §3)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac
from hostvlan.model.ports import FilterState
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import (
    OUTSIDE,
    UNBOUND,
    UPLINK,
    Host,
    Sent,
    counter_delta,
    drops,
    expect,
    flood_set,
    host_state,
    received,
    send_all,
)

pytestmark = pytest.mark.root

BIG = 2**32 + 1  # an LNID past 32 bits whose low word collides with LNID 1
EXT_1 = Mac("02:aa:00:00:00:01")  # registered behind the wire, LNID 1
EXT_BIG = Mac("02:aa:00:00:00:02")  # registered behind the wire, LNID 2**32+1
UNKNOWN = Mac("02:bb:00:00:00:99")  # registered nowhere


def _mixed_host(make_host: Callable[[int], Host]) -> tuple[Host, FilterState]:
    host = make_host(7)
    v = host.vms
    lnids: list[list[int]] = [[1], [1], [2], [1, 2], [GLOBAL], [BIG], [1]]
    entries = {vm.mac: ls for vm, ls in zip(v, lnids, strict=True)}
    entries |= {EXT_1: [1], EXT_BIG: [BIG]}
    # vm6 is known (LNID 1) but its VM has not started: its port stays unbound
    state = host_state(entries, {vm.port: vm.mac for vm in v[:6]})
    return host, state


def test_floods_follow_the_model(make_host: Callable[[int], Host]) -> None:
    host, state = _mixed_host(make_host)
    filt = host.start(state)
    assert filt.read() == filt.desired()
    probe = host.probe()
    rx0, tx0 = drops(filt)

    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "own")
    for src in (EXT_1, EXT_BIG, UNKNOWN):
        frames += flood_set(OUTSIDE, UPLINK, src, "wire")
    sent = send_all(probe, frames)
    got = received(probe.collect())

    want = expect(state, host, sent)
    assert got == want.delivered
    rx1, tx1 = drops(filt)
    assert counter_delta(rx0, rx1) == want.rx_dropped
    assert counter_delta(tx0, tx1) == want.tx_dropped

    # spot checks of the model itself, so the test cannot pass on a vacuous expectation
    v = host.vms
    d = want.delivered
    assert any(t.endswith(f"/{v[0].name}/{v[0].mac}") for t in d[v[1].name])  # same LNID
    assert not any(f"/{v[0].name}/" in t for t in d[v[2].name])  # LNID 1 ↛ LNID 2
    assert any(f"/{v[2].name}/" in t for t in d[v[3].name])  # multi-LNID VM hears LNID 2 …
    assert any(f"/{v[0].name}/" in t for t in d[v[3].name])  # … and LNID 1
    assert all(any(f"/{v[4].name}/" in t for t in d[vm.name]) for vm in v[:6] if vm != v[4])  # global source
    assert any(f"/{v[5].name}/" in t for t in d[OUTSIDE]) and not any(f"/{v[5].name}/" in t for t in d[v[0].name])
    assert any(str(EXT_BIG) in t for t in d[v[5].name]) and not any(str(EXT_BIG) in t for t in d[v[0].name])
    assert d[v[6].name] == [] and not any(f"/{v[6].name}/" in t for ts in d.values() for t in ts)
    assert not any(str(UNKNOWN) in t for ts in d.values() for t in ts)
    assert want.rx_dropped and want.tx_dropped == {UNBOUND: 3}


def test_forged_sources_are_dropped_and_counted(make_host: Callable[[int], Host]) -> None:
    host, state = _mixed_host(make_host)
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)
    v = host.vms
    other_tenant = {vm.port: (v[2].mac if 1 in state.entries[vm.mac] else v[0].mac) for vm in v}

    sent: list[Sent] = []
    expected_tx: Counter[str] = Counter()
    for vm in v:
        for forged in (other_tenant[vm.port], UNKNOWN, EXT_1, v[4].mac):  # another tenant, unknown, wire, global
            if forged == vm.mac:
                continue
            assert not verdict.send(state, vm.port, forged).allow
            tag = f"forged/{vm.name}/{forged}"
            probe.send(vm.name, frame(BROADCAST, forged, tag))
            sent.append(Sent(vm.name, vm.port, forged, tag))
            expected_tx[vm.port if vm.port in state.bindings else UNBOUND] += 1
    got = received(probe.collect())

    assert got == {name: [] for name in got}, "a forged frame was delivered"
    rx1, tx1 = drops(filt)
    assert counter_delta(tx0, tx1) == expected_tx
    assert counter_delta(rx0, rx1) == {}  # stopped at the ingress port: no copy ever made
    assert expect(state, host, sent).tx_dropped == expected_tx

    # the forged frames did not poison the bridge: the real owners still talk
    probe.send(v[0].name, frame(BROADCAST, v[0].mac, "after"))
    got = received(probe.collect())
    assert got[v[1].name] == ["after"] and got[OUTSIDE] == ["after"] and got[v[2].name] == []


def test_membership_change_takes_effect_at_once(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [3], c.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.start(state)
    probe = host.probe()

    def round_trip(label: str) -> dict[str, list[str]]:
        probe.send(a.name, frame(BROADCAST, a.mac, f"{label}-a"))
        probe.send(b.name, frame(BROADCAST, b.mac, f"{label}-b"))
        return received(probe.collect())

    got = round_trip("before")
    assert got[b.name] == [] and got[a.name] == [] and got[c.name] == ["before-a"]

    filt.set_entry(a.mac, [Lnid(1), Lnid(3)])  # VM a joins LNID 3 while running
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    got = round_trip("joined")  # no wait: the very next frames see the change
    assert got[b.name] == ["joined-a"] and got[a.name] == ["joined-b"] and got[c.name] == ["joined-a"]

    filt.set_entry(a.mac, [Lnid(1)])  # and leaves it again
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    got = round_trip("left")
    assert got[b.name] == [] and got[a.name] == [] and got[c.name] == ["left-a"]
    assert filt.read() == filt.desired()
