"""Install, re-apply, agent restart, stale tables, removal: the table's life in the kernel."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.model.ids import Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import OUTSIDE, Host, host_state, received

pytestmark = pytest.mark.root

EXT = Mac("02:aa:00:00:00:01")


def _state(host: Host) -> FilterState:
    a, b, c = host.vms
    return host_state({a.mac: [1], b.mac: [1], c.mac: [2], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})


def _table_handle(items: list[dict[str, Any]] | None) -> int:
    assert items is not None, "table bridge hostvlan is missing"
    return next(int(i["table"]["handle"]) for i in items if "table" in i)


def _chains(items: list[dict[str, Any]] | None) -> set[str]:
    assert items is not None
    return {str(i["chain"]["name"]) for i in items if "chain" in i}


def _isolated(host: Host) -> None:
    """a ↔ b (LNID 1) talk, c (LNID 2) hears neither; the wire hears all."""
    a, b, c = host.vms
    probe = host.probe()
    for vm in host.vms:
        probe.send(vm.name, frame(BROADCAST, vm.mac, f"iso-{vm.name}"))
    got = received(probe.collect())
    assert got == {
        a.name: [f"iso-{b.name}"],
        b.name: [f"iso-{a.name}"],
        c.name: [],
        OUTSIDE: sorted(f"iso-{vm.name}" for vm in host.vms),
    }


def test_reapply_and_agent_restart_change_nothing(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    state = _state(host)
    filt = host.start(state)
    handle = _table_handle(host.kernel_table())

    filt.sync(state)
    again = filt.apply()
    assert again.elements == 0 and not again.full
    assert filt.apply().elements == 0

    # an agent restart: a new filter object, a new nftables context, the same namespace
    stop = threading.Event()
    seen: list[int | None] = []

    def watch() -> None:
        while not stop.is_set():
            items = host.kernel_table()
            seen.append(None if items is None else _table_handle(items))

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

    assert report.full and report.elements == 0
    assert restarted.read() == restarted.desired() == filt.desired()
    assert set(seen) == {handle}, "the table disappeared or was re-created during the restart"
    assert _table_handle(host.kernel_table()) == handle
    assert restarted.apply().elements == 0 and not restarted.apply().full
    _isolated(host)


def test_restart_reconciles_a_missed_change(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    state = _state(host)
    host.start(state)
    handle = _table_handle(host.kernel_table())
    a, b, c = host.vms

    # the agent died; meanwhile c moved to LNID 1: the new agent pushes just that
    moved = host_state({a.mac: [1], b.mac: [1], c.mac: [1], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})
    restarted = host.new_filter()
    restarted.sync(moved)
    report = restarted.apply()
    assert report.full and 0 < report.elements <= 8
    assert restarted.read() == restarted.desired()
    assert _table_handle(host.kernel_table()) == handle

    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "to-all"))
    got = received(probe.collect())
    assert got[b.name] == got[c.name] == got[OUTSIDE] == ["to-all"]


STALE = {
    "empty chain": ["add chain bridge hostvlan leftover"],
    "accepting base chain": [
        "add chain bridge hostvlan leftover { type filter hook forward priority 0 ; policy accept ; }",
        "add set bridge hostvlan known { type ether_addr ; elements = { 02:cc:00:00:00:01 } ; }",
    ],
}


@pytest.mark.parametrize("stale", STALE.values(), ids=list(STALE))
def test_stale_or_foreign_table_is_replaced(make_host: Callable[[int], Host], stale: list[str]) -> None:
    host = make_host(3)
    host.nft_cli("add", "table", "bridge", "hostvlan")
    for cmd in stale:
        host.nft_cli(*cmd.split())
    assert "leftover" in _chains(host.kernel_table())

    state = _state(host)
    filt = host.start(state)  # the first apply finds the foreign table

    assert filt.read() == filt.desired()
    assert "leftover" not in _chains(host.kernel_table())
    assert filt.apply().elements == 0
    _isolated(host)


def test_remove_drops_the_table_and_is_idempotent(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    state = _state(host)
    filt = host.start(state)
    assert host.kernel_table() is not None

    filt.remove()
    assert host.kernel_table() is None
    assert filt.read() is None
    filt.remove()  # again: a no-op
    assert host.kernel_table() is None
    host.new_filter().remove()  # a fresh agent on a clean namespace: also a no-op
    assert host.kernel_table() is None

    # the next apply installs again from scratch
    report = filt.apply()
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    _isolated(host)


def test_failed_apply_changes_nothing_and_the_next_one_reconciles(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    state = _state(host)
    filt = host.start(state)
    a, _, c = host.vms
    before = filt.read()
    handle = _table_handle(host.kernel_table())

    # a batch the kernel rejects (an interface name nft cannot hold) together with a valid change
    bad = PortName("x" * 20)
    filt.set_entry(c.mac, [Lnid(1)])
    filt.bind(PortBinding(bad, Mac("02:dd:00:00:00:01")))
    with pytest.raises(DatapathError):
        filt.apply()
    assert filt.read() == before, "a rejected batch changed the kernel"
    assert _table_handle(host.kernel_table()) == handle
    _isolated(host)  # still enforcing the old state: c is still alone in LNID 2

    filt.unbind(bad)
    report = filt.apply()  # reconciles from a fresh read-back: pushes the valid change
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "now-c-too"))
    assert received(probe.collect())[c.name] == ["now-c-too"]


def test_table_deleted_behind_the_agents_back_is_reinstalled(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    filt = host.start(_state(host))
    host.nft_cli("delete", "table", "bridge", "hostvlan")

    filt.set_entry(Mac("02:aa:00:00:00:02"), [Lnid(2)])
    with pytest.raises(DatapathError):
        filt.apply()  # the incremental change has no table to go to
    report = filt.apply()
    assert report.full and filt.read() == filt.desired()
    _isolated(host)
