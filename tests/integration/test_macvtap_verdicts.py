"""Real frames through real macvtaps get exactly the model's verdicts (SPEC §3, §4.3)."""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .macvtapnet import (
    OUTSIDE,
    OUTSIDE_IP,
    OUTSIDE_MAC,
    UPLINK,
    Host,
    Sent,
    counter_delta,
    drops,
    expect,
    flood_set,
    host_factory,
    host_state,
    received,
    send_all,
    unicast,
)

pytestmark = pytest.mark.root

BIG = 2**32 + 1  # an LNID past 32 bits whose low word collides with LNID 1
EXT_1 = Mac("02:aa:00:00:00:01")  # registered behind the wire, LNID 1
EXT_BIG = Mac("02:aa:00:00:00:02")  # registered behind the wire, LNID 2**32+1
UNKNOWN = Mac("02:bb:00:00:00:99")  # registered nowhere


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _mixed_host(make_mvhost: Callable[[int], Host]) -> tuple[Host, FilterState]:
    host = make_mvhost(8)
    v = host.vms
    lnids: list[list[int]] = [[1], [1], [2], [1, 2], [GLOBAL], [BIG], [1]]
    entries = {vm.mac: ls for vm, ls in zip(v, lnids, strict=False)}
    entries |= {EXT_1: [1], EXT_BIG: [BIG], OUTSIDE_MAC: [2]}
    # vm6 is known (LNID 1) but its VM has not started: its port is unbound, its macvtap down.
    # vm7 runs bound to its MAC, which the table does not know (it shares nothing).
    bindings = {vm.port: vm.mac for vm in v[:6]} | {v[7].port: v[7].mac}
    return host, host_state(entries, bindings)


def test_empty_table_passes_nothing(make_mvhost: Callable[[int], Host]) -> None:
    """Every port bound, no LNID table at all: no copy crosses, each one counted."""
    host = make_mvhost(3)
    bindings = {vm.port: PortBinding(vm.port, vm.mac) for vm in host.vms}
    bindings[UPLINK] = PortBinding(UPLINK, Mac("02:00:00:00:0f:01"), uplink=True)
    state = FilterState(entries={}, bindings=bindings)
    filt = host.start(state)
    assert filt.read() == filt.desired()
    probe = host.probe()
    rx0, tx0 = drops(filt)

    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "empty")
        frames.append(unicast(vm.name, vm.port, vm.mac, OUTSIDE_MAC, "empty"))
        frames += [unicast(vm.name, vm.port, vm.mac, o.mac, "empty") for o in host.vms if o != vm]
    frames += flood_set(OUTSIDE, UPLINK, EXT_1, "empty")
    frames += [unicast(OUTSIDE, UPLINK, EXT_1, vm.mac, "empty") for vm in host.vms]
    sent = send_all(probe, frames)
    got = received(probe.collect())

    assert got == {name: [] for name in got}
    want = expect(state, host, sent)
    assert all(ts == [] for ts in want.delivered.values())
    rx1, tx1 = drops(filt)
    assert counter_delta(rx0, rx1) == want.rx_dropped
    assert counter_delta(tx0, tx1) == {}
    assert sum(want.rx_dropped.values()) == 3 * (3 * 3 + 1 + 2) + 3 * 3 + 3  # every copy, counted once


def test_empty_facts_with_the_contract_nothing_crosses(make_mvhost: Callable[[int], Host]) -> None:
    """Empty facts (nothing bound): the VMs' "QEMU"s run but, per the contract, their
    unbound macvtaps stay down: nothing crosses in any direction."""
    host = make_mvhost(3)
    filt = host.start()  # installed, no entries, no bindings: no port chain exists
    assert filt.read() == filt.desired()
    for vm in host.vms:
        host.start_vm(vm, up=False)
    assert filt.unguarded(host.links()) == []
    probe = host.probe()
    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "none")
        frames.append(unicast(vm.name, vm.port, vm.mac, OUTSIDE_MAC, "none"))
    frames += flood_set(OUTSIDE, UPLINK, EXT_1, "none")
    send_all(probe, frames)
    assert received(probe.collect()) == {name: [] for name in [vm.name for vm in host.vms] + [OUTSIDE]}


def test_floods_follow_the_model(make_mvhost: Callable[[int], Host]) -> None:
    host, state = _mixed_host(make_mvhost)
    filt = host.start(state)
    assert filt.read() == filt.desired()
    probe = host.probe()
    rx0, tx0 = drops(filt)

    frames = []
    for vm in host.vms:
        if vm.port in host.standins:
            frames += flood_set(vm.name, vm.port, vm.mac, "own")
    for src in (EXT_1, EXT_BIG, UNKNOWN, OUTSIDE_MAC):
        frames += flood_set(OUTSIDE, UPLINK, src, "wire")
    sent = send_all(probe, frames)
    got = received(probe.collect())

    want = expect(state, host, sent)
    assert got == want.delivered
    rx1, tx1 = drops(filt)
    assert counter_delta(rx0, rx1) == want.rx_dropped
    assert counter_delta(tx0, tx1) == want.tx_dropped == {}

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
    assert v[6].name not in d  # unbound: down, no output port, sends nothing
    assert not any(str(UNKNOWN) in t for ts in d.values() for t in ts)
    # the bound VM the table does not know: its floods pass its send check but reach nobody,
    # not even the wire (the uplink is global: it takes known sources only) …
    assert not any(f"/{v[7].name}/" in t for ts in d.values() for t in ts) and want.rx_dropped[UPLINK] >= 3
    # … and it hears only the global source vm4
    assert {t.split("/")[2] for t in d[v[7].name]} == {v[4].name}
    assert want.rx_dropped and got[OUTSIDE]


def test_unicast_follows_the_model(make_mvhost: Callable[[int], Host]) -> None:
    host, state = _mixed_host(make_mvhost)
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)
    running = [vm for vm in host.vms if vm.port in host.standins]

    frames = []
    for vm in running:  # VM → every sibling (plain and tagged), VM → wire (known / unknown MAC)
        for other in running:
            if other != vm:
                frames.append(unicast(vm.name, vm.port, vm.mac, other.mac, "u"))
                frames.append(unicast(vm.name, vm.port, vm.mac, other.mac, "u", vlan=7))
        frames.append(unicast(vm.name, vm.port, vm.mac, EXT_1, "u"))
        frames.append(unicast(vm.name, vm.port, vm.mac, UNKNOWN, "u"))
    for src in (EXT_1, EXT_BIG, UNKNOWN, OUTSIDE_MAC):  # wire → every VM
        for vm in running:
            frames.append(unicast(OUTSIDE, UPLINK, src, vm.mac, "w"))
    sent = send_all(probe, frames)
    got = received(probe.collect())

    want = expect(state, host, sent)
    assert got == want.delivered
    rx1, tx1 = drops(filt)
    assert counter_delta(rx0, rx1) == want.rx_dropped
    assert counter_delta(tx0, tx1) == {}

    v = host.vms
    d = want.delivered
    assert f"u/uc/{v[0].name}/{v[0].mac}>{v[1].mac}" in d[v[1].name]
    assert f"u/ucq/{v[0].name}/{v[0].mac}>{v[1].mac}" in d[v[1].name]
    assert not any(t.startswith(f"u/uc/{v[0].name}/") for t in d[v[2].name])
    assert f"w/uc/{OUTSIDE}/{EXT_1}>{v[0].mac}" in d[v[0].name]
    assert f"w/uc/{OUTSIDE}/{EXT_1}>{v[2].mac}" not in d[v[2].name]
    assert f"u/uc/{v[0].name}/{v[0].mac}>{UNKNOWN}" in d[OUTSIDE]  # the wire takes known sources
    assert not any(str(UNKNOWN) in t.split("/")[3].split(">")[0] for ts in d.values() for t in ts)


def test_forged_sources_are_dropped_and_counted(make_mvhost: Callable[[int], Host]) -> None:
    host, state = _mixed_host(make_mvhost)
    filt = host.start(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)
    v = host.vms
    running = [vm for vm in v if vm.port in host.standins]
    other_tenant = {vm.port: (v[2].mac if 1 in state.entries.get(vm.mac, ()) else v[0].mac) for vm in running}

    sent: list[Sent] = []
    expected_tx: Counter[str] = Counter()
    for vm in running:
        for forged in (other_tenant[vm.port], UNKNOWN, EXT_1, v[4].mac, OUTSIDE_MAC):
            if forged == vm.mac:
                continue
            assert not verdict.send(state, vm.port, forged).allow
            for dst in (BROADCAST, v[1].mac if vm != v[1] else v[0].mac, OUTSIDE_MAC):
                tag = f"forged/{vm.name}/{forged}>{dst}"
                probe.send(vm.name, frame(dst, forged, tag))
                sent.append(Sent(vm.name, vm.port, forged, dst, tag))
                expected_tx[vm.port] += 1
    got = received(probe.collect())

    assert got == {name: [] for name in got}, "a forged frame was delivered"
    rx1, tx1 = drops(filt)
    assert counter_delta(tx0, tx1) == expected_tx
    assert counter_delta(rx0, rx1) == {}  # stopped at the VM's egress: no copy ever made
    assert expect(state, host, sent).tx_dropped == expected_tx

    # the real owners still talk
    probe.send(v[0].name, frame(BROADCAST, v[0].mac, "after"))
    got = received(probe.collect())
    assert got[v[1].name] == ["after"] and got[OUTSIDE] == ["after"] and got[v[2].name] == []


def test_membership_change_takes_effect_at_once(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [3], c.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.start(state)
    probe = host.probe()

    def round_trip(label: str) -> dict[str, list[str]]:
        probe.send(a.name, frame(BROADCAST, a.mac, f"{label}-a"))
        probe.send(b.name, frame(BROADCAST, b.mac, f"{label}-b"))
        got = received(probe.collect())
        del got[OUTSIDE]
        return got

    assert round_trip("before") == {a.name: [], b.name: [], c.name: ["before-a"]}
    filt.set_entry(a.mac, [Lnid(1), Lnid(3)])  # VM a joins LNID 3 while running
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    assert round_trip("joined") == {a.name: ["joined-b"], b.name: ["joined-a"], c.name: ["joined-a"]}
    filt.set_entry(a.mac, [Lnid(1)])  # and leaves it again
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    assert round_trip("left") == {a.name: [], b.name: [], c.name: ["left-a"]}
    assert filt.read() == filt.desired()


def _ping(ns: str, ip: str) -> bool:
    got = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", ip], capture_output=True, timeout=30
    )
    return got.returncode == 0


def test_ping_between_guests_follows_the_lnids(make_mvhost: Callable[[int], Host]) -> None:
    """IP end to end through the stand-ins: same LNID pings, another LNID does not."""
    host = make_mvhost(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [2], OUTSIDE_MAC: [1]}, {vm.port: vm.mac for vm in host.vms})
    host.start(state)
    assert _ping(a.ns, b.ip) and _ping(b.ns, a.ip)
    assert _ping(a.ns, OUTSIDE_IP)
    assert not _ping(a.ns, c.ip) and not _ping(c.ns, OUTSIDE_IP)
    assert PortName(c.port) in host.standins
