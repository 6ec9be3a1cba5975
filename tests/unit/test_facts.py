"""model/facts.py: compiled lookup facts agree with the verdicts; FactsIndex stays exact
under single changes and reports exact, small deltas."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hostvlan.model import verdict
from hostvlan.model.facts import Facts, FactsDelta, FactsIndex, SetDelta, compile_facts, diff_facts
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding

from .strategies import (
    MAC_POOL,
    PORT_POOL,
    PROPERTY,
    UNBOUND_PORT,
    UNKNOWN_MACS,
    Change,
    apply_change,
    changes,
    filter_states,
    pool_lnid,
    pool_mac,
)

FIELDS = ("known", "global_src", "ports", "global_ports", "uplinks", "bound", "pairs")
L1, L2 = Lnid(1), Lnid(2)


def apply_delta(facts: Facts | None, delta: FactsDelta) -> Facts:
    """What a data path does with a delta: have - remove | add, field by field."""
    out = {}
    for name in FIELDS:
        have: frozenset[object] = getattr(facts, name) if facts is not None else frozenset()
        d: SetDelta[object] = getattr(delta, name)
        assert not d.add & d.remove, f"{name}: an element both added and removed"
        out[name] = (have - d.remove) | d.add
    return Facts(**out)  # type: ignore[arg-type]


def assert_agrees_with_verdict(facts: Facts, state: FilterState) -> None:
    sources = [*state.entries, *MAC_POOL, *UNKNOWN_MACS]
    ports = [*state.bindings, *PORT_POOL, UNBOUND_PORT]
    for src in sources:
        for port in ports:
            want_rx = verdict.receive(state, src, port)
            assert facts.receive(src, port) == want_rx.allow, (src, port, want_rx.reason)
            want_tx = verdict.send(state, port, src)
            assert facts.send(port, src) == want_tx.allow, (port, src, want_tx.reason)


# ----- examples ---------------------------------------------------------------------------


def test_compile_example() -> None:
    a, b, c, nic = MAC_POOL[:4]
    pa, pb, up = PortName("pa"), PortName("pb"), PortName("eth0")
    state = FilterState(
        entries={a: frozenset({L1}), b: frozenset({L1, L2}), c: frozenset({GLOBAL}), nic: frozenset({GLOBAL})},
        bindings={pa: PortBinding(pa, a), pb: PortBinding(pb, b), up: PortBinding(up, nic, uplink=True)},
    )
    f = compile_facts(state)
    assert f.known == {a, b, c, nic}
    assert f.global_src == {c, nic}
    assert f.ports == {pa, pb, up}
    assert f.global_ports == {up}
    assert f.uplinks == {up}
    assert f.bound == {(pa, a), (pb, b)}
    assert f.pairs == {(a, pa), (a, pb), (b, pa), (b, pb)}  # global sources/ports need no pairs
    assert f.receive(a, up) and f.receive(c, pa) and not f.receive(Mac("52:54:00:ff:ff:01"), up)


def test_empty_state_compiles_to_nothing() -> None:
    f = compile_facts(FilterState())
    assert all(not getattr(f, name) for name in FIELDS)
    assert not f.receive(MAC_POOL[0], PORT_POOL[0])
    assert not f.send(PORT_POOL[0], MAC_POOL[0])


def test_membership_change_of_a_bound_vnic_moves_its_port() -> None:
    """VM1-1 joins LNID 3: its port now receives LNID 3 sources, at once (SPEC §5)."""
    a, b = MAC_POOL[:2]
    pa = PortName("pa")
    index = FactsIndex()
    index.sync(FilterState(entries={a: frozenset({L1}), b: frozenset({Lnid(3)})}, bindings={pa: PortBinding(pa, a)}))
    assert not index.facts().receive(b, pa)
    index.take_delta()
    index.set_entry(a, {L1, Lnid(3)})
    assert index.facts().receive(b, pa)
    delta = index.take_delta()
    assert delta.pairs.add == {(b, pa)} and not delta.pairs.remove
    assert delta.size() == 1


# ----- (a) compiled facts == verdicts -------------------------------------------------------


@PROPERTY
@given(state=filter_states())
def test_compiled_facts_agree_with_verdicts(state: FilterState) -> None:
    facts = compile_facts(state)
    assert_agrees_with_verdict(facts, state)
    # compiling is deterministic and the index round-trips the state
    index = FactsIndex()
    index.sync(state)
    assert index.state() == FilterState(entries=dict(state.entries), bindings=dict(state.bindings))
    assert index.facts() == facts


# ----- (b) incremental == from scratch; deltas are exact --------------------------------------


@PROPERTY
@given(start=filter_states(), steps=st.lists(changes, max_size=25))
def test_incremental_changes_match_a_fresh_compile(start: FilterState, steps: list[Change]) -> None:
    index = FactsIndex()
    index.sync(start)
    facts = apply_delta(None, index.take_delta())
    assert facts == index.facts() == compile_facts(start)
    for change in steps:
        before = facts
        apply_change(index, change)
        now = index.facts()
        assert now == compile_facts(index.state()), change
        delta = index.take_delta()
        facts = apply_delta(facts, delta)
        assert facts == now, change
        assert apply_delta(before, diff_facts(before, now)) == now
        # an exact delta: nothing added that was there, nothing removed that was not
        for name in FIELDS:
            d: SetDelta[object] = getattr(delta, name)
            assert not d.add & getattr(before, name), (name, change)
            assert d.remove <= getattr(before, name), (name, change)
        assert not index.take_delta()  # taken means forgotten
    assert_agrees_with_verdict(facts, index.state())


@PROPERTY
@given(start=filter_states(), steps=st.lists(changes, max_size=25))
def test_batched_changes_give_one_exact_delta(start: FilterState, steps: list[Change]) -> None:
    """Changes queued between two take_delta() calls net out into one exact delta."""
    index = FactsIndex()
    index.sync(start)
    before = apply_delta(None, index.take_delta())
    for change in steps:
        apply_change(index, change)
    delta = index.take_delta()
    assert apply_delta(before, delta) == index.facts() == compile_facts(index.state())
    assert delta.size() == diff_facts(before, index.facts()).size()
    assert index.port_facts() == (index.facts().bound, index.facts().uplinks)  # the cheap accessor agrees


@PROPERTY
@given(a=filter_states(), b=filter_states())
def test_sync_between_states_and_diff_facts(a: FilterState, b: FilterState) -> None:
    fa, fb = compile_facts(a), compile_facts(b)
    assert apply_delta(fa, diff_facts(fa, fb)) == fb
    assert apply_delta(None, diff_facts(None, fb)) == fb
    assert not diff_facts(fb, fb)
    assert diff_facts(fb, fb).size() == 0

    index = FactsIndex()
    index.sync(a)
    index.take_delta()
    index.sync(b)
    assert index.facts() == fb
    delta = index.take_delta()
    assert apply_delta(fa, delta) == fb
    assert delta.size() == diff_facts(fa, fb).size()  # sync never churns


def test_specific_transitions() -> None:
    """The awkward single changes, named: bind to a MAC with no entry, rebind, global and back."""
    a, b, c = MAC_POOL[:3]
    p, q = PORT_POOL[:2]
    index = FactsIndex()
    index.sync(FilterState(entries={a: frozenset({L1}), c: frozenset({L1})}, bindings={}))
    facts = apply_delta(None, index.take_delta())
    steps: list[Change] = [
        ("bind", PortBinding(p, b)),  # b has no entry: bound, no LNID
        ("set", b, frozenset({L1})),  # now it has one: pairs appear
        ("bind", PortBinding(p, a)),  # rebind p to another MAC
        ("set", a, frozenset({GLOBAL})),  # a turns global: p becomes a global port
        ("set", a, frozenset({L1, L2})),  # and back
        ("bind", PortBinding(q, a)),  # two ports on one MAC
        ("bind", PortBinding(q, a, uplink=True)),  # the same port becomes an uplink
        ("del", a),  # p loses its LNIDs, q stays global
        ("unbind", p),
        ("unbind", p),  # idempotent
        ("del", a),  # idempotent
    ]
    for change in steps:
        apply_change(index, change)
        facts = apply_delta(facts, index.take_delta())
        assert facts == compile_facts(index.state()), change
        assert_agrees_with_verdict(facts, index.state())
    assert facts.global_ports == {q} and facts.uplinks == {q}
    assert facts.ports == {q}


# ----- (c) small deltas ----------------------------------------------------------------------


@PROPERTY
@given(state=filter_states(), mac=pool_mac, lnids=st.frozensets(pool_lnid, max_size=3), delete=st.booleans())
def test_one_remote_change_touches_at_most_one_pair_per_port(
    state: FilterState, mac: Mac, lnids: frozenset[Lnid], delete: bool
) -> None:
    if any(b.mac == mac for b in state.bindings.values()):
        return  # not a remote MAC
    index = FactsIndex()
    index.sync(state)
    index.take_delta()
    if delete:
        index.del_entry(mac)
    else:
        index.set_entry(mac, lnids)
    delta = index.take_delta()
    pair_changes = len(delta.pairs.add) + len(delta.pairs.remove)
    assert pair_changes <= len(state.bindings)
    assert all(m == mac for m, _ in delta.pairs.add | delta.pairs.remove)
    assert delta.size() <= len(state.bindings) + 2  # + known, global_src
    assert not (delta.ports or delta.global_ports or delta.uplinks or delta.bound)


@PROPERTY
@given(state=filter_states())
def test_resync_of_the_same_state_is_empty(state: FilterState) -> None:
    index = FactsIndex()
    index.sync(state)
    first = index.take_delta()
    assert first.size() == sum(len(getattr(compile_facts(state), n)) for n in FIELDS)
    index.sync(state)
    index.sync(FilterState(entries=dict(state.entries), bindings=dict(state.bindings)))
    again = index.take_delta()
    assert not again
    assert again.size() == 0


def test_far_away_remote_change_is_tiny() -> None:
    """1,000 remote MACs and 8 ports: one remote MAC joining an LNID = one element per port reached."""
    macs = [Mac(f"52:54:01:00:{i // 256:02x}:{i % 256:02x}") for i in range(1000)]
    vms = [Mac(f"52:54:02:00:00:{i:02x}") for i in range(8)]
    entries = {m: frozenset({Lnid(100 + i % 50)}) for i, m in enumerate(macs)}
    entries |= {vm: frozenset({Lnid(1 + i % 2)}) for i, vm in enumerate(vms)}
    bindings = {PortName(f"vp{i}"): PortBinding(PortName(f"vp{i}"), vm) for i, vm in enumerate(vms)}
    index = FactsIndex()
    index.sync(FilterState(entries=entries, bindings=bindings))
    index.take_delta()
    index.set_entry(macs[0], {Lnid(100), L1})  # joins LNID 1: reaches the 4 LNID 1 ports
    delta = index.take_delta()
    assert delta.size() == 4
    assert delta.pairs.add == {(macs[0], PortName(f"vp{i}")) for i in range(0, 8, 2)}
    index.set_entry(macs[1], {Lnid(999)})  # a change among far LNIDs only
    assert index.take_delta().size() == 0


def test_set_delta_put_take_cancel() -> None:
    d: SetDelta[int] = SetDelta()
    d.put(1)
    d.take(1)
    assert not d
    d.take(2)
    d.put(2)
    assert not d
    d.put(3)
    d.take(4)
    assert d.add == {3} and d.remove == {4} and bool(d)
