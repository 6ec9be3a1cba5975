"""model/verdict.py: the SPEC §3 receive filter and send check, rule by rule."""

from __future__ import annotations

from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.model.verdict import receive, send

L1, L2, L3 = Lnid(1), Lnid(2), Lnid(3)

# ----- paper Fig. 4 ----------------------------------------------------------------------
# Host 1 runs VM1-1 (LNID 1). Host 2 runs VM2-1 … VM2-4 on ports VP2-1 … VP2-4,
# VM2-1 and VM2-4 in LNID 1, VM2-2 and VM2-3 in LNID 2.

VM1_1 = Mac("52:54:00:01:01:01")
VM2 = {i: Mac(f"52:54:00:02:0{i}:01") for i in range(1, 5)}
VP2 = {i: PortName(f"vp2-{i}") for i in range(1, 5)}
NIC1, NIC2 = Mac("0c:00:00:00:00:01"), Mac("0c:00:00:00:00:02")
ETH0 = PortName("eth0")

HOST1 = FilterState(
    entries={VM1_1: frozenset({L1}), VM2[1]: frozenset({L1}), VM2[4]: frozenset({L1}), NIC1: frozenset({GLOBAL})},
    bindings={PortName("vp1-1"): PortBinding(PortName("vp1-1"), VM1_1), ETH0: PortBinding(ETH0, NIC1, uplink=True)},
)
HOST2 = FilterState(
    entries={
        VM1_1: frozenset({L1}),
        VM2[1]: frozenset({L1}),
        VM2[2]: frozenset({L2}),
        VM2[3]: frozenset({L2}),
        VM2[4]: frozenset({L1}),
        NIC2: frozenset({GLOBAL}),
    },
    bindings={**{VP2[i]: PortBinding(VP2[i], VM2[i]) for i in range(1, 5)}, ETH0: PortBinding(ETH0, NIC2, uplink=True)},
)


def test_fig4_host1_send_check_passes_own_mac() -> None:
    v = send(HOST1, PortName("vp1-1"), VM1_1)
    assert v.allow
    assert VM1_1 in v.reason


def test_fig4_host1_uplink_accepts_the_broadcast() -> None:
    assert receive(HOST1, VM1_1, ETH0).allow


def test_fig4_host2_floods_only_to_lnid1_ports() -> None:
    got = {i: receive(HOST2, VM1_1, VP2[i]).allow for i in range(1, 5)}
    assert got == {1: True, 2: False, 3: False, 4: True}


def test_fig4_reasons_explain() -> None:
    ok = receive(HOST2, VM1_1, VP2[1])
    assert ok.reason == "shared LNID 1"
    no = receive(HOST2, VM1_1, VP2[2])
    assert "no shared LNID" in no.reason
    assert VM1_1 in no.reason
    assert "vp2-2" in no.reason
    assert "in 1" in no.reason and "in 2" in no.reason


# ----- receive: rule 1, unknown source ----------------------------------------------------


def test_unknown_source_is_dropped_even_to_a_global_port() -> None:
    stranger = Mac("52:54:00:99:99:99")
    for port in (*VP2.values(), ETH0):
        v = receive(HOST2, stranger, port)
        assert not v.allow
        assert "not in this host" in v.reason
        assert stranger in v.reason


# ----- receive: fail closed on unbound ports ----------------------------------------------


def test_unbound_port_drops_everything() -> None:
    nowhere = PortName("vp-none")
    for src in (VM1_1, NIC2, VM2[1]):
        v = receive(HOST2, src, nowhere)
        assert not v.allow
        assert "fail closed" in v.reason
        assert "vp-none" in v.reason


def test_port_bound_to_mac_without_entry_is_bound_but_shares_nothing() -> None:
    """Bound to a vNIC the table does not know: no LNID, only global sources pass."""
    vm, port = Mac("52:54:00:00:00:0a"), PortName("vpa")
    state = FilterState(
        entries={VM1_1: frozenset({L1}), NIC1: frozenset({GLOBAL})},
        bindings={port: PortBinding(port, vm)},
    )
    assert not receive(state, VM1_1, port).allow
    assert receive(state, NIC1, port).allow


# ----- receive: global ---------------------------------------------------------------------


def test_global_source_reaches_every_bound_port() -> None:
    router = Mac("52:54:00:00:00:fe")
    state = FilterState(
        entries={**HOST2.entries, router: frozenset({GLOBAL})},
        bindings=HOST2.bindings,
    )
    for port in state.bindings:
        v = receive(state, router, port)
        assert v.allow
        assert "global" in v.reason


def test_global_port_receives_every_known_source() -> None:
    svc, port = Mac("52:54:00:00:00:fd"), PortName("vp-svc")
    state = FilterState(
        entries={**HOST2.entries, svc: frozenset({GLOBAL})},
        bindings={**HOST2.bindings, port: PortBinding(port, svc)},
    )
    for src in HOST2.entries:
        v = receive(state, src, port)
        assert v.allow
        assert "global" in v.reason
    assert receive(state, VM2[2], port).reason == "port vp-svc is global"


def test_known_source_with_empty_entry_only_reaches_global_ports() -> None:
    """An empty entry means "known, shares no LNID here"."""
    far = Mac("52:54:00:00:00:fc")
    state = FilterState(entries={**HOST2.entries, far: frozenset()}, bindings=HOST2.bindings)
    assert receive(state, far, ETH0).allow
    for port in VP2.values():
        assert not receive(state, far, port).allow


def test_uplink_is_global_whatever_its_mac_entry_says() -> None:
    state = FilterState(
        entries={VM1_1: frozenset({L1}), NIC1: frozenset({L2})},
        bindings={ETH0: PortBinding(ETH0, NIC1, uplink=True)},
    )
    assert state.port_lnids(ETH0) == frozenset({GLOBAL})
    v = receive(state, VM1_1, ETH0)
    assert v.allow
    assert "global" in v.reason


def test_global_among_other_lnids_still_counts() -> None:
    vm, port = Mac("52:54:00:00:00:0b"), PortName("vpb")
    state = FilterState(
        entries={vm: frozenset({L3}), VM1_1: frozenset({L1, GLOBAL})},
        bindings={port: PortBinding(port, vm)},
    )
    assert receive(state, VM1_1, port).allow


# ----- receive: multi-LNID vNICs, large LNIDs ----------------------------------------------


def test_multi_lnid_vnic() -> None:
    """VM1-1 joins LNID 3 as well: it now reaches LNID 3 ports and keeps LNID 1 ports."""
    a, b, c = Mac("52:54:00:00:01:01"), Mac("52:54:00:00:01:02"), Mac("52:54:00:00:01:03")
    pa, pb, pc = PortName("pa"), PortName("pb"), PortName("pc")
    state = FilterState(
        entries={a: frozenset({L1, L3}), b: frozenset({L1}), c: frozenset({L2, L3})},
        bindings={pa: PortBinding(pa, a), pb: PortBinding(pb, b), pc: PortBinding(pc, c)},
    )
    assert receive(state, a, pb).allow
    v = receive(state, a, pc)
    assert v.allow
    assert v.reason == "shared LNID 3"
    assert receive(state, c, pa).allow  # as a port, a is in both LNIDs too
    assert not receive(state, b, pc).allow
    assert not receive(state, c, pb).allow


def test_lnids_above_32_bits() -> None:
    big, bigger, top = Lnid(2**32), Lnid(2**32 + 1), Lnid(2**63 - 1)
    a, b, c = Mac("52:54:00:00:02:01"), Mac("52:54:00:00:02:02"), Mac("52:54:00:00:02:03")
    pb, pc = PortName("pb"), PortName("pc")
    state = FilterState(
        entries={a: frozenset({big, top}), b: frozenset({bigger}), c: frozenset({top})},
        bindings={pb: PortBinding(pb, b), pc: PortBinding(pc, c)},
    )
    # 2**32 and 2**32+1 must not be confused (no truncation to 32 bits)
    assert not receive(state, a, pb).allow
    v = receive(state, a, pc)
    assert v.allow
    assert str(top) in v.reason
    # nor 2**32 (0 when truncated to 32 bits) with `global` (0)
    other = Mac("52:54:00:00:02:04")
    state = FilterState(
        entries={b: frozenset({big}), other: frozenset({Lnid(5)})},
        bindings={pb: PortBinding(pb, b)},
    )
    assert not receive(state, other, pb).allow


# ----- send check ---------------------------------------------------------------------------


def test_forged_source_is_dropped() -> None:
    v = send(HOST2, VP2[2], VM1_1)  # VM2-2 (LNID 2) forges VM1-1's MAC (LNID 1)
    assert not v.allow
    assert "forged" in v.reason
    assert VM1_1 in v.reason and VM2[2] in v.reason and "vp2-2" in v.reason


def test_forging_a_global_or_unknown_mac_is_dropped_too() -> None:
    assert not send(HOST2, VP2[1], NIC2).allow
    assert not send(HOST2, VP2[1], Mac("52:54:00:99:99:99")).allow
    assert not send(HOST2, VP2[1], VM2[4]).allow  # same LNID, still forged


def test_own_mac_passes_send_check() -> None:
    for i in range(1, 5):
        assert send(HOST2, VP2[i], VM2[i]).allow


def test_send_check_does_not_need_an_entry() -> None:
    """Anti-spoofing compares with the binding only; the receive side decides the rest."""
    vm, port = Mac("52:54:00:00:00:0c"), PortName("vpc")
    state = FilterState(entries={}, bindings={port: PortBinding(port, vm)})
    assert send(state, port, vm).allow
    assert not send(state, port, VM1_1).allow


def test_uplink_is_exempt_from_send_check() -> None:
    for src in (VM1_1, NIC2, Mac("52:54:00:99:99:99")):
        v = send(HOST2, ETH0, src)
        assert v.allow
        assert "uplink" in v.reason and "exempt" in v.reason


def test_send_from_unbound_port_fails_closed() -> None:
    v = send(HOST2, PortName("vp-none"), VM2[1])
    assert not v.allow
    assert "fail closed" in v.reason
