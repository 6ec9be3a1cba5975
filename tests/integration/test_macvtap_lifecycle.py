"""The macvtap table's life: per-port chains with the bindings, re-apply, restart, drift, removal."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.macvtap import port_chains
from hostvlan.model.ids import Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .macvtapnet import OUTSIDE, UPLINK, UPLINK_MAC, Host, drops, host_factory, host_state, received

pytestmark = pytest.mark.root

EXT = Mac("02:aa:00:00:00:01")


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _state(host: Host) -> FilterState:
    a, b, c = host.vms
    return host_state({a.mac: [1], b.mac: [1], c.mac: [2], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})


def _table_handle(items: list[dict[str, Any]] | None) -> int:
    assert items is not None, "table netdev hostvlan is missing"
    return next(int(i["table"]["handle"]) for i in items if "table" in i)


def _chains(items: list[dict[str, Any]] | None) -> dict[str, str | None]:
    """Chain name → hook (None for the shared regular chains)."""
    assert items is not None
    return {str(i["chain"]["name"]): i["chain"].get("hook") for i in items if "chain" in i}


def _port_chains(items: list[dict[str, Any]] | None) -> dict[str, str | None]:
    return {n: h for n, h in _chains(items).items() if n.startswith(("rx_", "tx_"))}


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


def test_port_chains_follow_the_bindings(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [1]}, {a.port: a.mac, b.port: b.mac})
    filt = host.start(state)
    want = {f"rx_{UPLINK}": "egress"} | {f"rx_{p}": "ingress" for p in (a.port, b.port)}
    want |= {f"tx_{p}": "egress" for p in (a.port, b.port)}
    assert _port_chains(host.kernel_table()) == want
    assert set(_chains(host.kernel_table())) - set(want) == {"rx", "wire_rx", "tx"}

    # binding c: its two chains come in the same transaction as its elements
    filt.bind(PortBinding(c.port, c.mac))
    report = filt.apply()
    assert not report.full and report.elements == 5  # ports, bound, 3 pairs (a's, b's, c's MAC at c)
    assert _port_chains(host.kernel_table()) == want | {f"rx_{c.port}": "ingress", f"tx_{c.port}": "egress"}
    host.start_vm(c)
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, c.mac, "c-bound"))
    assert received(probe.collect())[a.name] == ["c-bound"]

    # re-binding c to another MAC keeps its chains (same port, same kind): its old MAC is now forged
    other = Mac("52:54:00:00:00:99")
    filt.set_entry(other, [Lnid(1)])
    filt.bind(PortBinding(c.port, other))
    filt.apply()
    assert f"rx_{c.port}" in _chains(host.kernel_table())
    tx0 = drops(filt)[1]
    probe.send(c.name, frame(BROADCAST, c.mac, "c-old-mac"))
    assert received(probe.collect())[a.name] == []
    assert drops(filt)[1][c.port] == tx0[c.port] + 1

    # per the contract c goes down first, then its port is unbound: chains and counters go
    host.stop_vm(c)
    host.set_up(c.port, up=False)
    filt.unbind(c.port)
    filt.apply()
    assert _port_chains(host.kernel_table()) == want
    assert c.port not in filt.counters()
    assert filt.read() == filt.desired()

    # a port turning from uplink into a VM port (and back) swaps its chains in one commit
    filt.bind(PortBinding(UPLINK, UPLINK_MAC, uplink=False))
    filt.apply()
    assert filt.read() == filt.desired()
    assert _port_chains(host.kernel_table())[f"tx_{UPLINK}"] == "egress"
    assert _port_chains(host.kernel_table())[f"rx_{UPLINK}"] == "ingress"
    filt.bind(PortBinding(UPLINK, UPLINK_MAC, uplink=True))
    filt.apply()
    assert filt.read() == filt.desired() and _port_chains(host.kernel_table()) == want


def test_binding_before_the_device_exists_filters_it_from_birth(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    a, b, late = host.vms
    host.del_macvtap(late.port)  # the VM's device does not exist yet
    state = host_state({a.mac: [1], b.mac: [2], late.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.start(state, vms=[a, b])
    assert set(port_chains(late.port, "vm")) <= set(_chains(host.kernel_table()))

    host.add_macvtap(late.port, late.mac)  # libvirt creates it, QEMU brings it up at once
    host.start_vm(late)
    probe = host.probe()
    rx0, tx0 = drops(filt)
    probe.send(late.name, frame(BROADCAST, late.mac, "late"))
    probe.send(late.name, frame(BROADCAST, b.mac, "late-forged"))
    probe.send(b.name, frame(BROADCAST, b.mac, "b"))
    got = received(probe.collect())
    assert got[a.name] == ["late"] and got[b.name] == [] and got[late.name] == []
    rx1, tx1 = drops(filt)
    assert tx1[late.port] - tx0[late.port] == 1 and rx1[late.port] - rx0[late.port] == 1


def test_reapply_and_agent_restart_change_nothing(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    state = _state(host)
    filt = host.start(state)
    handle = _table_handle(host.kernel_table())

    filt.sync(state)
    again = filt.apply()
    assert again.elements == 0 and not again.full
    assert filt.apply().elements == 0

    stop = threading.Event()
    seen: list[int | None] = []

    def watch() -> None:
        while not stop.is_set():
            items = host.kernel_table()
            seen.append(None if items is None else _table_handle(items))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        while not seen:
            stop.wait(0.01)
        restarted = host.new_filter()  # an agent restart: new object, new nftables context
        restarted.sync(state)
        report = restarted.apply()
        before_stop = len(seen)
        while len(seen) < before_stop + 2:
            stop.wait(0.01)
    finally:
        stop.set()
        watcher.join()

    assert report.full and report.elements == 0  # reconciled by the digest alone
    assert restarted.read() == restarted.desired() == filt.desired()
    assert set(seen) == {handle}, "the table disappeared or was re-created during the restart"
    assert restarted.apply().elements == 0 and not restarted.apply().full
    _isolated(host)


def test_restart_reconciles_a_missed_change(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    host.start(_state(host))
    handle = _table_handle(host.kernel_table())
    a, b, c = host.vms

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


def test_chain_drift_is_repaired_by_audit(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    filt = host.start(_state(host))
    a = host.vms[0]
    before = _port_chains(host.kernel_table())
    host.nft_cli("delete", "chain", "netdev", "hostvlan", f"tx_{a.port}")  # behind the agent's back
    assert filt.read() is None  # chains no longer match the sets: not a layout it enforces
    report = filt.audit()  # reinstalls the table in one transaction
    assert report.full and filt.read() == filt.desired()
    assert _port_chains(host.kernel_table()) == before

    host.nft_cli("add", "chain", "netdev", "hostvlan", "leftover")
    assert filt.read() is None
    filt.audit()
    assert "leftover" not in _chains(host.kernel_table())
    _isolated(host)


def test_stale_or_foreign_table_is_replaced(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    host.nft_cli("add", "table", "netdev", "hostvlan")
    host.nft_cli(
        "add", "set", "netdev", "hostvlan", "known", "{ type ether_addr ; elements = { 02:cc:00:00:00:01 } ; }"
    )
    host.nft_cli(
        "add",
        "chain",
        "netdev",
        "hostvlan",
        "leftover",
        "{ type filter hook ingress device uplink0 priority 0 ; policy accept ; }",
    )
    filt = host.start(_state(host))
    assert filt.read() == filt.desired()
    assert "leftover" not in _chains(host.kernel_table())
    assert filt.apply().elements == 0
    _isolated(host)


def test_failed_apply_changes_nothing_and_the_next_one_reconciles(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    filt = host.start(_state(host))
    a, _, c = host.vms
    before = filt.read()
    handle = _table_handle(host.kernel_table())

    bad = PortName("x" * 20)  # an interface name nft cannot hold
    filt.set_entry(c.mac, [Lnid(1)])
    filt.bind(PortBinding(bad, Mac("02:dd:00:00:00:01")))
    with pytest.raises(DatapathError):
        filt.apply()
    assert filt.read() == before, "a rejected batch changed the kernel"
    assert _table_handle(host.kernel_table()) == handle
    assert not any(bad in n for n in _chains(host.kernel_table()))
    _isolated(host)

    filt.unbind(bad)
    report = filt.apply()
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "now-c-too"))
    assert received(probe.collect())[c.name] == ["now-c-too"]


def test_remove_leaves_nothing_and_is_idempotent(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    filt = host.start(_state(host))
    assert host.kernel_table() is not None

    filt.remove()
    assert host.kernel_table() is None
    assert host.nft_cli("list", "ruleset").stdout.strip() == ""  # no table, chain, hook or set left
    assert filt.read() is None and filt.counters() == {}
    filt.remove()
    host.new_filter().remove()
    assert host.nft_cli("list", "ruleset").stdout.strip() == ""

    report = filt.apply()  # the next apply installs again from scratch
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    _isolated(host)
