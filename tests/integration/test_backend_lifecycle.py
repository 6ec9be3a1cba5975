"""The filter's life on every back end's switch: re-apply, agent restart, stale layouts,
removal, rejected transactions, objects wiped behind the agent's back."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.model.ids import Lnid, Mac
from hostvlan.testbed.traffic import BROADCAST, frame

from .backends import STALE
from .switchhost import EXT, OUTSIDE, SwitchHost, check_isolated, host_state, lifecycle_state, received

pytestmark = pytest.mark.root

MakeHost = Callable[[int], SwitchHost]


def _txns(host: SwitchHost, filt: object) -> list[int]:
    """Sizes of the transactions `filt` sent since the last look."""
    return [size for kind, size in host.calls(filt) if kind == "txn"]


def test_reapply_and_agent_restart_change_nothing(make_host: MakeHost) -> None:
    host = make_host(3)
    state = lifecycle_state(host)
    filt = host.boot(state)
    before = host.objects()

    filt.sync(state)
    again = filt.apply()
    assert again.elements == 0 and not again.full
    assert filt.apply().elements == 0

    # an agent restart: a new filter object, a new nftables context / OVSDB connection, the same switch
    stop = threading.Event()
    seen: list[object] = []

    def watch() -> None:
        while not stop.is_set():
            seen.append(host.objects())

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        while not seen:  # the watcher has looked at least once before the restart
            stop.wait(0.01)
        restarted = host.new_filter()
        restarted.sync(state)
        report = restarted.apply()
        before_stop = len(seen)
        while len(seen) < before_stop + 2:  # and at least once after it
            stop.wait(0.01)
    finally:
        stop.set()
        watcher.join()

    assert report.full and report.elements == 0  # reconciled by the digest alone
    assert _txns(host, restarted) == [], "the restart sent a transaction"
    assert restarted.read() == restarted.desired() == filt.desired()
    assert all(host.same_objects(before, s) for s in seen), "objects disappeared or were re-created in the restart"
    assert host.same_objects(before, host.objects())
    assert restarted.apply().elements == 0 and not restarted.apply().full
    assert _txns(host, restarted) == []
    check_isolated(host)


def test_restart_reconciles_a_missed_change_in_one_small_transaction(make_host: MakeHost) -> None:
    host = make_host(3)
    host.boot(lifecycle_state(host))
    handle = host.table_handle()
    a, b, c = host.vms

    # the agent died; meanwhile c moved to LNID 1: the new agent pushes just that
    moved = host_state({a.mac: [1], b.mac: [1], c.mac: [1], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})
    restarted = host.new_filter()
    restarted.sync(moved)
    report = restarted.apply()
    assert report.full and 0 < report.elements <= 8
    txns = _txns(host, restarted)
    assert len(txns) == 1 and txns[0] <= host.max_txn(report.elements, ports=False), (txns, report)
    assert restarted.read() == restarted.desired()
    assert host.table_handle() == handle  # (where there is a table: it was kept)

    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "to-all"))
    got = received(probe.collect())
    assert got[b.name] == got[c.name] == got[OUTSIDE] == ["to-all"]


@pytest.mark.parametrize(("backend", "stale"), STALE, ids=[f"{b}-{s.replace(' ', '_')}" for b, s in STALE])
def test_stale_or_foreign_layout_is_replaced(make_host: MakeHost, stale: str) -> None:
    host = make_host(3)
    host.plant_stale(stale)

    filt = host.boot(lifecycle_state(host))  # the first apply finds the foreign layout

    assert filt.read() == filt.desired()
    assert host.stale_gone()
    assert filt.apply().elements == 0
    check_isolated(host)


def test_remove_leaves_nothing_and_is_idempotent(make_host: MakeHost) -> None:
    host = make_host(3)
    filt = host.boot(lifecycle_state(host))
    host.plant_foreign()
    assert host.installed()

    filt.remove()
    assert not host.installed()
    assert host.leftovers() == []  # no table, chain, hook, set, flow or group of hostvlan's
    assert filt.read() is None and filt.counters() == {}
    filt.remove()  # again: a no-op
    assert not host.installed()
    host.new_filter().remove()  # a fresh agent on a clean switch: also a no-op
    assert not host.installed() and host.leftovers() == []
    assert host.foreign_intact()  # someone else's objects stay

    # the next apply installs again from scratch
    report = filt.apply()
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    check_isolated(host)


def test_failed_apply_changes_nothing_and_the_next_one_reconciles(make_host: MakeHost) -> None:
    host = make_host(3)
    filt = host.boot(lifecycle_state(host))
    a, _, c = host.vms
    before, dump, handle = filt.read(), host.kernel_dump(), host.table_handle()

    # the switch rejects the transaction that also carries a valid change: all or nothing
    filt.set_entry(c.mac, [Lnid(1)])
    host.break_next_apply(filt)
    with pytest.raises(DatapathError):
        filt.apply()
    assert filt.read() == before, "a rejected transaction changed the switch"
    assert host.kernel_dump() == dump and host.table_handle() == handle
    check_isolated(host)  # still enforcing the old state: c is still alone in LNID 2

    host.mend(filt)
    report = filt.apply()  # reconciles from a fresh read-back: pushes the valid change
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "now-c-too"))
    assert received(probe.collect())[c.name] == ["now-c-too"]


def test_wiped_switch_fails_the_next_change_and_is_reinstalled(make_host: MakeHost) -> None:
    host = make_host(3)
    filt = host.boot(lifecycle_state(host))
    host.wipe()  # behind the agent's back (on OVS, as a reset switch: flows and groups gone)

    filt.set_entry(Mac("02:aa:00:00:00:02"), [Lnid(2)])
    with pytest.raises(DatapathError):
        filt.apply()  # the incremental change has nothing to go to (OVS: its guard group)
    assert not host.installed()  # nothing half-programmed
    report = filt.apply()
    assert report.full and filt.read() == filt.desired()
    check_isolated(host)
