"""Real frames through every back end's switch get exactly the model's verdicts (SPEC §3, §4.3, §7).

The same frames on the Linux bridge, Open vSwitch and macvtap; each switch's forwarding
(which copies exist) is its host's `forward` (see `switchhost`), the verdict on each
copy is the model's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, frame

from .backends import UNICAST
from .switchhost import (
    OUTSIDE,
    OUTSIDE_MAC,
    UNBOUND,
    UPLINK,
    UPLINK_MAC,
    Sent,
    SwitchHost,
    check_empty_filter,
    check_model,
    counter_delta,
    drops,
    flood_set,
    host_state,
    received,
    unicast,
)

pytestmark = pytest.mark.root

BIG = 2**32 + 1  # an LNID past 32 bits whose low word collides with LNID 1
EXT_1 = Mac("02:aa:00:00:00:01")  # registered behind the wire, LNID 1
EXT_BIG = Mac("02:aa:00:00:00:02")  # registered behind the wire, LNID 2**32+1
UNKNOWN = Mac("02:bb:00:00:00:99")  # registered nowhere

MakeHost = Callable[[int], SwitchHost]


def _mixed_host(make_host: MakeHost) -> tuple[SwitchHost, FilterState]:
    host = make_host(8)
    v = host.vms
    lnids: list[list[int]] = [[1], [1], [2], [1, 2], [GLOBAL], [BIG], [1]]
    entries = {vm.mac: ls for vm, ls in zip(v, lnids, strict=False)}
    entries |= {EXT_1: [1], EXT_BIG: [BIG], OUTSIDE_MAC: [2]}
    # vm6 is known (LNID 1) but its port is unbound (on macvtap, per the contract, down).
    # vm7 runs bound to its MAC, which the table does not know (it shares nothing).
    bindings = {vm.port: vm.mac for vm in v[:6]} | {v[7].port: v[7].mac}
    return host, host_state(entries, bindings)


def _one(sender: str, port: PortName, src: Mac, dst: str, tag: str) -> tuple[Sent, bytes]:
    return Sent(sender, port, src, Mac(dst), tag), frame(dst, src, tag)


def test_empty_filter_passes_nothing_in_any_direction(make_host: MakeHost) -> None:
    host = make_host(3)
    filt = host.boot()  # installed, no entries, no bindings; the VMs run only afterwards
    check_empty_filter(host, filt)


def test_unbound_port_neither_sends_nor_receives(make_host: MakeHost) -> None:
    host = make_host(3)
    a, b, unbound = host.vms
    # all three MACs are known and in LNID 1, but only a and b are bound to their ports
    state = host_state({a.mac: [1], b.mac: [1], unbound.mac: [1], EXT_1: [1]}, {a.port: a.mac, b.port: b.mac})
    filt = host.boot(state)

    frames = [_one(a.name, a.port, a.mac, BROADCAST, "from-a")]
    if host.MODELS_UNICAST:
        frames.append(_one(a.name, a.port, a.mac, unbound.mac, "a-to-unbound"))
    frames += [
        _one(unbound.name, unbound.port, unbound.mac, BROADCAST, "from-unbound"),
        _one(unbound.name, unbound.port, unbound.mac, MULTICAST, "from-unbound-mc"),
        _one(OUTSIDE, UPLINK, EXT_1, BROADCAST, "from-outside"),
    ]
    got, want = check_model(host, filt, state, host.probe(), frames)
    assert got == {
        a.name: ["from-outside"],
        b.name: ["from-a", "from-outside"],
        unbound.name: [],  # receives nothing, not even from its own LNID or the outside
        # the unbound port's frames never reach the wire; a known MAC with no (live) local port is remote
        OUTSIDE: ["a-to-unbound", "from-a"] if host.MODELS_UNICAST else ["from-a"],
    }
    # its two frames stop at the door, or never enter a macvtap kept down; the bridge copies
    # the two floods to it and drops them, OVS copies to bound ports only, a down macvtap gets none
    assert want.tx_dropped == ({UNBOUND: 2} if host.UNBOUND_UP and host.COUNTS_SEND else {})
    assert want.rx_dropped == ({UNBOUND: 2} if host.KIND.startswith("bridge") else {})
    # the model agrees
    assert not verdict.send(state, unbound.port, unbound.mac).allow
    assert not verdict.receive(state, a.mac, unbound.port).allow
    assert verdict.receive(state, a.mac, b.port).allow


def test_floods_follow_the_model(make_host: MakeHost) -> None:
    host, state = _mixed_host(make_host)
    filt = host.boot(state)
    assert filt.read() == filt.desired()
    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "own")
    for src in (EXT_1, EXT_BIG, UNKNOWN, OUTSIDE_MAC):
        frames += flood_set(OUTSIDE, UPLINK, src, "wire")
    got, want = check_model(host, filt, state, host.probe(), frames)

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
    assert d[v[6].name] == [] and not any(f"/{v[6].name}/" in t for ts in d.values() for t in ts)  # unbound
    assert not any(str(UNKNOWN) in t for ts in d.values() for t in ts)
    # the bound VM the table does not know: its floods pass its send check but reach nobody,
    # not even the wire (the uplink is global: it takes known sources only) …
    assert not any(f"/{v[7].name}/" in t for ts in d.values() for t in ts)
    # … and it hears only the global source vm4
    assert {t.split("/")[2] for t in d[v[7].name]} == {v[4].name}
    if host.UNKNOWN_SOURCE:  # OVS: the 3 floods of each unknown source (UNKNOWN, vm7) die once, before any copy
        assert want.rx_dropped[host.UNKNOWN_SOURCE] == 2 * 3
        assert sum(want.rx_dropped.values()) > 2 * 3  # cross-LNID copies really were dropped, per port
    else:  # every copy meets its port's receive filter, vm7's copies to the uplink too
        assert want.rx_dropped[UPLINK] >= 3
    # vm6's floods stop at the door, or never enter a macvtap kept down
    assert want.tx_dropped == ({UNBOUND: 3} if host.UNBOUND_UP and host.COUNTS_SEND else {})
    assert want.rx_dropped and got[OUTSIDE]


@pytest.mark.parametrize("backend", UNICAST)
def test_unicast_follows_the_model(make_host: MakeHost) -> None:
    """Unicast from every VM and from the wire to every VM's MAC, a remote known MAC, an
    unknown MAC and the host's NIC, plain and tagged: a local MAC's frames reach only its
    port; nothing is hairpinned; the wire takes known sources."""
    host, state = _mixed_host(make_host)
    filt = host.boot(state)
    v = host.vms

    senders = [(vm.name, vm.port, vm.mac) for vm in v]
    senders += [(OUTSIDE, UPLINK, src) for src in (EXT_1, EXT_BIG, UNKNOWN, OUTSIDE_MAC)]
    dsts = [vm.mac for vm in v] + [EXT_1, UNKNOWN, UPLINK_MAC]
    frames = []
    for name, port, src in senders:
        for dst in dsts:
            for label, vlan in (("u", None), ("u", 7), ("t", 100)):
                frames.append(unicast(name, port, src, dst, label, vlan=vlan))
    got, want = check_model(host, filt, state, host.probe(), frames)
    # vm6's frames stop at the door, or never enter a macvtap kept down
    assert want.tx_dropped == (
        {UNBOUND: sum(f.port == v[6].port for f, _ in frames)} if host.UNBOUND_UP and host.COUNTS_SEND else {}
    )

    def elsewhere(part: str, name: str) -> bool:
        return any(part in t for n, ts in got.items() if n != name for t in ts)

    # unicast to a local MAC reaches only its port, once, plain and tagged
    assert got[v[1].name].count(f"u/uc/{v[0].name}/{v[0].mac}>{v[1].mac}") == 1
    assert f"u/ucq/{v[0].name}/{v[0].mac}>{v[1].mac}" in got[v[1].name]
    assert not elsewhere(f"/{v[0].mac}>{v[1].mac}", v[1].name)
    assert not any(t.startswith(f"u/uc/{v[0].name}/") for t in got[v[2].name])  # LNID 1 ↛ LNID 2
    # a remote known MAC goes to the wire only; the wire never gets its own frames back
    assert any(f"/{v[0].mac}>{EXT_1}" in t for t in got[OUTSIDE])
    assert not elsewhere(f"/{v[0].mac}>{EXT_1}", OUTSIDE)
    assert not any(f"/{OUTSIDE}/" in t for t in got[OUTSIDE])
    # the wire's frames to a VM meet the VM's LNIDs
    assert f"u/uc/{OUTSIDE}/{EXT_1}>{v[0].mac}" in got[v[0].name]
    assert f"u/uc/{OUTSIDE}/{EXT_1}>{v[2].mac}" not in got[v[2].name]
    # unknown unicast: the wire takes it (a known source) …
    assert f"u/uc/{v[0].name}/{v[0].mac}>{UNKNOWN}" in got[OUTSIDE]
    if host.FLOODS_UNKNOWN_UNICAST:  # … and OVS floods it, filtered per copy
        assert any(f"/{v[0].mac}>{UNKNOWN}" in t for t in got[v[1].name])
        assert not any(f"/{v[0].mac}>{UNKNOWN}" in t for t in got[v[2].name])
    else:  # … and macvlan sends it nowhere else
        assert not elsewhere(f"/{v[0].mac}>{UNKNOWN}", OUTSIDE)
    assert not any(f"/{UNKNOWN}>" in t for ts in got.values() for t in ts)  # from an unknown source: nowhere


def test_forged_sources_are_dropped_and_counted(make_host: MakeHost) -> None:
    host, state = _mixed_host(make_host)
    filt = host.boot(state)
    probe = host.probe()
    rx0, tx0 = drops(filt)
    v = host.vms
    live = host.live_ports()
    other_tenant = {vm.port: (v[2].mac if 1 in state.entries.get(vm.mac, ()) else v[0].mac) for vm in v}

    sent: list[Sent] = []
    expected_tx: Counter[str] = Counter()
    for vm in v:
        # another tenant, unknown, behind the wire, global, the wire's own
        for forged in (other_tenant[vm.port], UNKNOWN, EXT_1, v[4].mac, OUTSIDE_MAC):
            if forged == vm.mac:
                continue
            assert not verdict.send(state, vm.port, forged).allow
            for dst in (BROADCAST, v[1].mac if vm != v[1] else v[0].mac, OUTSIDE_MAC):
                tag = f"forged/{vm.name}/{forged}>{dst}"
                probe.send(vm.name, frame(dst, forged, tag))
                sent.append(Sent(vm.name, vm.port, forged, Mac(dst), tag))
                if vm.port in live and host.COUNTS_SEND:  # (a macvtap kept down lets nothing in)
                    expected_tx[vm.port if vm.port in state.bindings else UNBOUND] += 1
    got = received(probe.collect())

    assert got == {name: [] for name in got}, "a forged frame was delivered"
    rx1, tx1 = drops(filt)
    assert counter_delta(tx0, tx1) == expected_tx
    assert counter_delta(rx0, rx1) == {}  # stopped at the ingress port: no copy ever made
    assert host.expect(state, sent).tx_dropped == expected_tx

    # the forged frames did not poison the switch: the real owners still talk
    probe.send(v[0].name, frame(BROADCAST, v[0].mac, "after"))
    got = received(probe.collect())
    assert got[v[1].name] == ["after"] and got[OUTSIDE] == ["after"] and got[v[2].name] == []


def test_membership_change_takes_effect_at_once(make_host: MakeHost) -> None:
    host = make_host(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [3], c.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.boot(state)
    probe = host.probe()
    uni = host.MODELS_UNICAST

    def round_trips(label: str, want: dict[str, list[str]], rounds: int) -> None:
        """Round trips that each see `want`: the first one after a change sees it at once; the
        others warm the switch's caches (`CACHE_ROUNDS` in all) with the verdicts a change replaces."""
        for _ in range(rounds):
            probe.send(a.name, frame(BROADCAST, a.mac, f"{label}-a"))
            probe.send(b.name, frame(BROADCAST, b.mac, f"{label}-b"))
            if uni:
                probe.send(a.name, frame(b.mac, a.mac, f"{label}-a2b"))
            got = received(probe.collect())
            del got[OUTSIDE]
            assert got == want, label

    round_trips("before", {a.name: [], b.name: [], c.name: ["before-a"]}, host.CACHE_ROUNDS)
    filt.set_entry(a.mac, [Lnid(1), Lnid(3)])  # VM a joins LNID 3 while running
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    # no wait: the very next frames see the change
    joined_b = ["joined-a", "joined-a2b"] if uni else ["joined-a"]
    round_trips("joined", {a.name: ["joined-b"], b.name: joined_b, c.name: ["joined-a"]}, max(1, host.CACHE_ROUNDS - 1))
    filt.set_entry(a.mac, [Lnid(1)])  # and leaves it again
    report = filt.apply()
    assert not report.full and 0 < report.elements <= 4
    round_trips("left", {a.name: [], b.name: [], c.name: ["left-a"]}, rounds=1)
    assert filt.read() == filt.desired()
