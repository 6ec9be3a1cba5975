"""datapath/base.py contract, exercised through the in-memory reference back end."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostvlan.datapath.base import ApplyReport, DatapathError
from hostvlan.datapath.memory import MemoryFilter, MemoryKernel
from hostvlan.model.facts import compile_facts
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding

from .strategies import MAC_POOL, PROPERTY, Change, apply_change, changes, filter_states

A, B, C, NIC = MAC_POOL[:4]
PA, PB, UP = PortName("pa"), PortName("pb"), PortName("eth0")
L1, L2 = Lnid(1), Lnid(2)

STATE = FilterState(
    entries={A: frozenset({L1}), B: frozenset({L1}), C: frozenset({L2}), NIC: frozenset({GLOBAL})},
    bindings={PA: PortBinding(PA, A), PB: PortBinding(PB, B), UP: PortBinding(UP, NIC, uplink=True)},
)


def test_first_apply_installs_everything() -> None:
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    report = f.apply()
    facts = compile_facts(STATE)
    assert kernel.facts == facts == f.desired()
    assert report.full is True
    assert report.elements == sum(len(getattr(facts, n)) for n in facts.__dataclass_fields__)
    assert report.elements > 0
    assert len(kernel.transactions) == 1


def test_reapply_of_the_same_state_is_a_no_op() -> None:
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    f.apply()
    f.sync(STATE)
    report = f.apply()
    assert report == ApplyReport(elements=0, full=False)
    assert len(kernel.transactions) == 1  # nothing sent to the kernel
    assert f.apply() == ApplyReport(elements=0, full=False)


def test_incremental_apply_pushes_only_the_change() -> None:
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    f.apply()
    f.set_entry(C, {L1, L2})  # C joins LNID 1: reaches pa and pb
    report = f.apply()
    assert report == ApplyReport(elements=2, full=False)
    assert kernel.transactions[-1].pairs.add == {(C, PA), (C, PB)}
    assert kernel.facts == f.desired() == compile_facts(f.state())
    f.unbind(PB)
    f.del_entry(B)
    f.bind(PortBinding(PortName("pc"), C))
    f.apply()
    assert kernel.facts == compile_facts(f.state())
    assert kernel.facts is not None and not kernel.facts.receive(A, PB)


def test_agent_restart_reconciles_without_reinstalling() -> None:
    kernel = MemoryKernel()
    first = MemoryFilter(kernel)
    first.sync(STATE)
    first.apply()
    installed = kernel.facts
    n = len(kernel.transactions)

    restarted = MemoryFilter(kernel)  # a new process, same kernel
    restarted.sync(STATE)
    report = restarted.apply()
    assert report == ApplyReport(elements=0, full=True)
    assert kernel.facts is installed  # never flushed, never re-installed
    assert len(kernel.transactions) == n
    # and from then on it is incremental
    restarted.set_entry(A, {L2})
    assert restarted.apply().full is False


def test_agent_restart_pushes_only_what_changed_meanwhile() -> None:
    kernel = MemoryKernel()
    first = MemoryFilter(kernel)
    first.sync(STATE)
    first.apply()
    changed = FilterState(entries={**STATE.entries, C: frozenset({L1})}, bindings=STATE.bindings)
    restarted = MemoryFilter(kernel)
    restarted.sync(changed)
    report = restarted.apply()
    assert report == ApplyReport(elements=2, full=True)
    assert kernel.facts == compile_facts(changed)
    assert kernel.transactions[-1].pairs.add == {(C, PA), (C, PB)}
    assert not kernel.transactions[-1].pairs.remove


def test_injected_failure_changes_nothing_and_next_apply_reconciles() -> None:
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    f.apply()
    before = kernel.facts
    n = len(kernel.transactions)

    f.set_entry(C, {L1})
    f.unbind(PB)
    kernel.fail_next = 1
    with pytest.raises(DatapathError):
        f.apply()
    assert kernel.facts == before  # the kernel kept its previous state
    assert len(kernel.transactions) == n
    assert kernel.fail_next == 0

    report = f.apply()  # nothing queued since, yet the lost delta is recovered
    assert report.full is True
    assert report.elements > 0
    assert kernel.facts == f.desired() == compile_facts(f.state())
    assert f.apply() == ApplyReport(elements=0, full=False)


def test_failure_on_first_install_leaves_nothing_then_installs() -> None:
    kernel = MemoryKernel(fail_next=1)
    f = MemoryFilter(kernel)
    f.sync(STATE)
    with pytest.raises(DatapathError, match="injected"):
        f.apply()
    assert kernel.facts is None
    report = f.apply()
    assert report.full is True
    assert kernel.facts == compile_facts(STATE)


def test_repeated_failures_then_recovery() -> None:
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    f.apply()
    kernel.fail_next = 2
    f.set_entry(A, {L2})
    with pytest.raises(DatapathError):
        f.apply()
    f.set_entry(B, {L2})
    with pytest.raises(DatapathError):
        f.apply()
    assert kernel.facts == compile_facts(STATE)
    assert f.apply().full is True
    assert kernel.facts == compile_facts(f.state())


def test_remove_clears_the_kernel() -> None:
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    f.apply()
    f.remove()
    assert kernel.facts is None
    f.remove()  # idempotent
    assert kernel.facts is None
    assert f.counters() == {}


def test_apply_after_remove_reinstalls_the_desired_facts() -> None:
    """remove() keeps the desired state; the next apply() reinstalls it from scratch."""
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(STATE)
    f.apply()
    f.remove()
    assert kernel.facts is None
    f.set_entry(C, {L1})
    report = f.apply()
    assert report.full is True
    facts = compile_facts(f.state())
    assert kernel.facts == facts
    assert report.elements == sum(len(getattr(facts, n)) for n in facts.__dataclass_fields__)


@PROPERTY
@given(
    start=filter_states(),
    steps=st.lists(st.tuples(changes, st.booleans(), st.booleans()), max_size=15),
)
def test_kernel_follows_the_desired_facts(start: FilterState, steps: list[tuple[Change, bool, bool]]) -> None:
    """Any sequence of changes, applies, injected failures and restarts: after every
    successful apply the kernel holds exactly the desired facts; a failed apply leaves it as it was."""
    kernel = MemoryKernel()
    f = MemoryFilter(kernel)
    f.sync(start)
    f.apply()
    assert kernel.facts == compile_facts(start)
    for change, fail, restart in steps:
        if restart:
            state = f.state()
            f = MemoryFilter(kernel)
            f.sync(state)
        apply_change(f, change)
        before = kernel.facts
        failed = False
        if fail:
            kernel.fail_next = 1
            try:
                f.apply()
            except DatapathError:
                failed = True
                assert kernel.facts == before
            else:  # nothing to send, so nothing could fail
                assert kernel.fail_next == 1
                assert kernel.facts == before == f.desired()
                restart = False  # that apply already reconciled
            kernel.fail_next = 0
        report = f.apply()
        assert report.full == (failed or restart)
        assert kernel.facts == f.desired() == compile_facts(f.state())
    assert f.apply().elements == 0


def test_queue_methods_reach_the_state() -> None:
    f = MemoryFilter()
    f.set_entry(A, [L1])
    f.bind(PortBinding(PA, A))
    assert f.state() == FilterState(entries={A: frozenset({L1})}, bindings={PA: PortBinding(PA, A)})
    f.unbind(PA)
    f.del_entry(A)
    assert f.state() == FilterState()
    f.apply()
    assert f.kernel.facts == compile_facts(FilterState())
    assert Mac("52:54:00:00:00:01") not in f.kernel.facts.known
