"""Real frames through a real Open vSwitch (userspace datapath) get exactly the model's verdicts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac
from hostvlan.model.ports import FilterState
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, frame

from .hostnet import OUTSIDE, UPLINK, UPLINK_MAC, flood_set, host_state, send_all
from .ovsnet import UNBOUND, UNKNOWN, OvsHost, Uni, drops, expect, ovs_hosts, received

pytestmark = pytest.mark.root

BIG = 2**32 + 1
EXT_1 = Mac("02:aa:00:00:00:01")  # registered behind the wire, LNID 1
EXT_BIG = Mac("02:aa:00:00:00:02")  # registered behind the wire, LNID 2**32+1
UNKNOWN_MAC = Mac("02:bb:00:00:00:99")  # registered nowhere


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def _mixed_host(make_host: Callable[..., OvsHost]) -> tuple[OvsHost, FilterState]:
    host = make_host(7)
    v = host.vms
    lnids: list[list[int]] = [[1], [1], [2], [1, 2], [GLOBAL], [BIG], [1]]
    entries = {vm.mac: ls for vm, ls in zip(v, lnids, strict=True)}
    entries |= {EXT_1: [1], EXT_BIG: [BIG]}
    # vm6 is known (LNID 1) but its VM has not started: its port stays unbound
    return host, host_state(entries, {vm.port: vm.mac for vm in v[:6]})


def test_floods_follow_the_model(make_host: Callable[..., OvsHost]) -> None:
    host, state = _mixed_host(make_host)
    filt = host.start(state)
    assert filt.read() == filt.desired()
    probe = host.probe()
    rx0, tx0 = drops(filt)

    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "own")
    for src in (EXT_1, EXT_BIG, UNKNOWN_MAC):
        frames += flood_set(OUTSIDE, UPLINK, src, "wire")
    sent = send_all(probe, frames)
    got = received(probe.collect())

    want = expect(state, host, sent)
    assert got == want.delivered
    rx1, tx1 = drops(filt)
    assert rx1 - rx0 == want.rx_dropped
    assert tx1 - tx0 == want.tx_dropped

    v = host.vms
    d = want.delivered
    assert any(t.endswith(f"/{v[0].name}/{v[0].mac}") for t in d[v[1].name])  # same LNID
    assert not any(f"/{v[0].name}/" in t for t in d[v[2].name])  # LNID 1 ↛ LNID 2
    assert any(f"/{v[2].name}/" in t for t in d[v[3].name]) and any(f"/{v[0].name}/" in t for t in d[v[3].name])
    assert all(any(f"/{v[4].name}/" in t for t in d[vm.name]) for vm in v[:6] if vm != v[4])  # global source
    assert any(f"/{v[5].name}/" in t for t in d[OUTSIDE]) and not any(f"/{v[5].name}/" in t for t in d[v[0].name])
    assert any(str(EXT_BIG) in t for t in d[v[5].name]) and not any(str(EXT_BIG) in t for t in d[v[0].name])
    assert d[v[6].name] == [] and not any(f"/{v[6].name}/" in t for ts in d.values() for t in ts)
    assert not any(str(UNKNOWN_MAC) in t for ts in d.values() for t in ts)
    assert want.rx_dropped[UNKNOWN] == 3 and want.tx_dropped == {UNBOUND: 3}
    assert sum(want.rx_dropped.values()) > 3  # cross-LNID copies really were dropped, per port


def test_unicast_follows_the_model(make_host: Callable[..., OvsHost]) -> None:
    """Unicast from every VM and from the wire to every local MAC, a remote known MAC and an
    unknown MAC: a local MAC's frames reach only its port; nothing is hairpinned."""
    host, state = _mixed_host(make_host)
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)

    dsts = [vm.mac for vm in host.vms] + [EXT_1, UNKNOWN_MAC, UPLINK_MAC]
    frames: list[Uni] = []
    senders = [(vm.name, vm.port, vm.mac) for vm in host.vms]
    senders += [(OUTSIDE, UPLINK, EXT_1), (OUTSIDE, UPLINK, EXT_BIG), (OUTSIDE, UPLINK, UNKNOWN_MAC)]
    for name, port, src in senders:
        for dst in dsts:
            for vlan in (None, 100):
                tag = f"uni/{name}/{src}/{dst}/{vlan}"
                probe.send(name, frame(dst, src, tag, vlan=vlan))
                frames.append(Uni(name, port, src, dst, tag))
    got = received(probe.collect())
    want = expect(state, host, frames)
    assert got == want.delivered
    rx1, tx1 = drops(filt)
    assert rx1 - rx0 == want.rx_dropped
    assert tx1 - tx0 == want.tx_dropped

    v = host.vms
    # unicast to a local MAC reaches only its port
    assert got[v[1].name].count(f"uni/{v[0].name}/{v[0].mac}/{v[1].mac}/None") == 1
    assert not any(f"/{v[0].mac}/{v[1].mac}/" in t for n, ts in got.items() if n != v[1].name for t in ts)
    # a remote known MAC goes to the wire only; the wire never gets its own frames back
    assert any(f"/{v[0].mac}/{EXT_1}/" in t for t in got[OUTSIDE])
    assert not any(f"/{v[0].mac}/{EXT_1}/" in t for n, ts in got.items() if n != OUTSIDE for t in ts)
    assert not any(t.startswith(f"uni/{OUTSIDE}/") for t in got[OUTSIDE])
    # unknown unicast floods, filtered per copy
    assert any(f"/{v[0].mac}/{UNKNOWN_MAC}/" in t for t in got[v[1].name])
    assert not any(f"/{v[0].mac}/{UNKNOWN_MAC}/" in t for t in got[v[2].name])


def test_forged_sources_are_dropped_and_counted(make_host: Callable[..., OvsHost]) -> None:
    host, state = _mixed_host(make_host)
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)
    v = host.vms
    other_tenant = {vm.port: (v[2].mac if 1 in state.entries[vm.mac] else v[0].mac) for vm in v}

    expected_tx: Counter[str] = Counter()
    for vm in v:
        for forged in (other_tenant[vm.port], UNKNOWN_MAC, EXT_1, v[4].mac):
            if forged == vm.mac:
                continue
            assert not verdict.send(state, vm.port, forged).allow
            for dst in (BROADCAST, v[1].mac if vm != v[1] else v[0].mac):
                probe.send(vm.name, frame(dst, forged, f"forged/{vm.name}/{forged}/{dst}"))
                expected_tx[vm.port if vm.port in state.bindings else UNBOUND] += 1
    got = received(probe.collect())

    assert got == {name: [] for name in got}, "a forged frame was delivered"
    rx1, tx1 = drops(filt)
    assert tx1 - tx0 == expected_tx
    assert rx1 - rx0 == Counter()  # stopped at the ingress port: no copy ever made

    probe.send(v[0].name, frame(BROADCAST, v[0].mac, "after"))
    got = received(probe.collect())
    assert got[v[1].name] == ["after"] and got[OUTSIDE] == ["after"] and got[v[2].name] == []


def test_empty_filter_passes_nothing_in_any_direction(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    host.up()  # links up BEFORE any flow exists: fail-mode=secure forwards nothing
    assert host.dump_flows() == []
    probe_before = host.probe()
    for vm in host.vms:
        probe_before.send(vm.name, frame(BROADCAST, vm.mac, f"noflows-{vm.name}"))
    probe_before.send(OUTSIDE, frame(BROADCAST, EXT_1, "noflows-outside"))
    assert received(probe_before.collect()) == {vm.name: [] for vm in host.vms} | {OUTSIDE: []}

    filt = host.new_filter()
    filt.sync(FilterState())
    filt.apply()  # installed, no entries, no bindings
    assert filt.read() == filt.desired()
    probe = host.probe()
    rx0, tx0 = drops(filt)
    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "empty")
    frames += flood_set(OUTSIDE, UPLINK, EXT_1, "empty")
    sent = send_all(probe, frames)
    got = received(probe.collect())
    assert got == {vm.name: [] for vm in host.vms} | {OUTSIDE: []}
    rx1, tx1 = drops(filt)
    assert tx1 - tx0 == {UNBOUND: len(sent)}
    assert rx1 - rx0 == Counter()


def test_unbound_port_neither_sends_nor_receives(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    a, b, unbound = host.vms
    state = host_state({a.mac: [1], b.mac: [1], unbound.mac: [1], EXT_1: [1]}, {a.port: a.mac, b.port: b.mac})
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)

    probe.send(a.name, frame(BROADCAST, a.mac, "from-a"))
    probe.send(a.name, frame(unbound.mac, a.mac, "a-to-unbound"))
    probe.send(unbound.name, frame(BROADCAST, unbound.mac, "from-unbound"))
    probe.send(unbound.name, frame(MULTICAST, unbound.mac, "from-unbound-mc"))
    probe.send(OUTSIDE, frame(BROADCAST, EXT_1, "from-outside"))
    got = received(probe.collect())
    want = expect(
        state,
        host,
        [
            Uni(a.name, a.port, a.mac, BROADCAST, "from-a"),
            Uni(a.name, a.port, a.mac, unbound.mac, "a-to-unbound"),
            Uni(unbound.name, unbound.port, unbound.mac, BROADCAST, "from-unbound"),
            Uni(unbound.name, unbound.port, unbound.mac, MULTICAST, "from-unbound-mc"),
            Uni(OUTSIDE, UPLINK, EXT_1, BROADCAST, "from-outside"),
        ],
    )
    assert got == want.delivered
    assert got[unbound.name] == [] and got[b.name] == ["from-a", "from-outside"]
    assert got[OUTSIDE] == ["a-to-unbound", "from-a"]  # a known MAC with no local port is remote
    rx1, tx1 = drops(filt)
    assert tx1 - tx0 == {UNBOUND: 2}
    assert rx1 - rx0 == Counter()  # no copy is ever made for an unbound port


def test_membership_change_takes_effect_at_once(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [3], c.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.start(state)
    probe = host.probe()

    def round_trip(label: str) -> dict[str, list[str]]:
        probe.send(a.name, frame(BROADCAST, a.mac, f"{label}-a"))
        probe.send(b.name, frame(BROADCAST, b.mac, f"{label}-b"))
        probe.send(a.name, frame(b.mac, a.mac, f"{label}-a2b"))
        return received(probe.collect())

    for _ in range(3):  # warm the datapath cache with the old verdicts first
        got = round_trip("before")
    assert got[b.name] == [] and got[a.name] == [] and got[c.name] == ["before-a"]

    filt.set_entry(a.mac, [Lnid(1), Lnid(3)])
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    got = round_trip("joined")  # no wait: the very next frames see the change
    assert got[b.name] == ["joined-a", "joined-a2b"] and got[a.name] == ["joined-b"] and got[c.name] == ["joined-a"]
    got = round_trip("joined2")

    filt.set_entry(a.mac, [Lnid(1)])
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    got = round_trip("left")
    assert got[b.name] == [] and got[a.name] == [] and got[c.name] == ["left-a"]
    assert filt.read() == filt.desired()
