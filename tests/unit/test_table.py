"""model/table.py: the many-to-many LNID table and its two mirrored indexes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hostvlan.model.ids import GLOBAL, Lnid, Mac
from hostvlan.model.table import LnidTable

from .strategies import LNID_POOL, MAC_POOL, PROPERTY, pool_lnid, pool_mac

A, B, C = MAC_POOL[:3]
L1, L2, L3 = Lnid(1), Lnid(2), Lnid(3)


def test_add_is_idempotent() -> None:
    t = LnidTable()
    assert t.add(A, L1) is True
    assert t.add(A, L1) is False
    assert t.lnids(A) == {L1}
    assert t.macs(L1) == {A}
    assert len(t) == 1


def test_remove_is_idempotent() -> None:
    t = LnidTable.of({A: {L1, L2}})
    assert t.remove(A, L1) is True
    assert t.remove(A, L1) is False
    assert t.remove(A, L3) is False  # never a member
    assert t.remove(B, L1) is False  # unknown MAC
    assert t.lnids(A) == {L2}
    assert t.macs(L1) == frozenset()


def test_mac_without_lnid_leaves_the_table() -> None:
    t = LnidTable.of({A: {L1}, B: {L1}})
    assert t.remove(A, L1)
    assert A not in t
    assert list(t) == [B]
    assert len(t) == 1
    assert t.lnids(A) == frozenset()
    assert t.macs(L1) == {B}
    assert t.remove(B, L1)
    assert len(t) == 0
    assert L1 not in set(t.lnid_ids())
    assert t.macs(L1) == frozenset()


def test_of_skips_macs_without_lnids() -> None:
    t = LnidTable.of({A: frozenset(), B: frozenset({GLOBAL}), C: frozenset({L1, L2})})
    assert A not in t
    assert set(t) == {B, C}
    assert dict(t.items()) == {B: {GLOBAL}, C: {L1, L2}}


def test_many_to_many() -> None:
    t = LnidTable.of({A: {L1, L2}, B: {L1}, C: {L2, GLOBAL}})
    assert t.macs(L1) == {A, B}
    assert t.macs(L2) == {A, C}
    assert t.macs(GLOBAL) == {C}
    assert set(t.lnid_ids()) == {L1, L2, GLOBAL}


def test_drop_removes_from_every_lnid() -> None:
    t = LnidTable.of({A: {L1, L2, GLOBAL}, B: {L1}})
    assert t.drop(A) == {L1, L2, GLOBAL}
    assert A not in t
    assert t.macs(L1) == {B}
    assert t.macs(L2) == frozenset()
    assert t.macs(GLOBAL) == frozenset()
    assert set(t.lnid_ids()) == {L1}
    assert t.drop(A) == frozenset()  # idempotent
    assert t.drop(C) == frozenset()  # never known


def test_returned_sets_are_snapshots() -> None:
    t = LnidTable.of({A: {L1}})
    got_l, got_m = t.lnids(A), t.macs(L1)
    t.add(A, L2)
    t.add(B, L1)
    assert got_l == {L1}
    assert got_m == {A}


ops = st.lists(
    st.tuples(st.sampled_from(("add", "add", "remove", "drop")), pool_mac, pool_lnid),
    max_size=40,
)


@PROPERTY
@given(ops=ops)
def test_random_sequences_keep_indexes_mirrored(ops: list[tuple[str, Mac, Lnid]]) -> None:
    t = LnidTable()
    ref: dict[Mac, set[Lnid]] = {}
    for op, mac, lnid in ops:
        if op == "add":
            assert t.add(mac, lnid) == (lnid not in ref.get(mac, set()))
            ref.setdefault(mac, set()).add(lnid)
        elif op == "remove":
            assert t.remove(mac, lnid) == (lnid in ref.get(mac, set()))
            ref.get(mac, set()).discard(lnid)
        else:
            assert t.drop(mac) == ref.pop(mac, set())
        ref = {m: ls for m, ls in ref.items() if ls}

        # the table is the reference
        assert dict(t.items()) == ref
        assert len(t) == len(ref)
        assert set(t) == set(ref)
        # both indexes mirror each other, and no empty LNID lingers
        lnids_with_members = {lnid for ls in ref.values() for lnid in ls}
        assert set(t.lnid_ids()) == lnids_with_members
        for m in (*MAC_POOL, *ref):
            assert (m in t) == bool(t.lnids(m))
            for lnid in LNID_POOL:
                assert (m in t.macs(lnid)) == (lnid in t.lnids(m))
