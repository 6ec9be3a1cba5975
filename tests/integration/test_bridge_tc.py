"""The Linux bridge's tc/eBPF receive filter (`bridge.tc.TcReceiveFilter`, the default): what the shared
verdict tests cannot see — no netfilter hook on the forward path, one program per port, a
port that joins or is re-created is followed, drift in programs or maps is repaired, maps
that outgrow their size are swapped in, a restart changes nothing, removal leaves nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hostvlan.datapath.bridge import tc as tc_bridge
from hostvlan.datapath.bridge.backend import BridgeFilter
from hostvlan.datapath.bridge.tc import PROG, PROG_GLOBAL, TcReceiveFilter, pair_key
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel import bpf as bpflib
from hostvlan.model.ids import Lnid, Mac
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import BRIDGE, Host, _forwarding, bridge_hosts
from .switchhost import OUTSIDE, OUTSIDE_MAC, UPLINK, RecordingNft, add_vm_veth, host_state, received

pytestmark = pytest.mark.root


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[[int], Host]]:
    with bridge_hosts(prefix) as make:
        yield make


def _state(host: Host, n_bound: int) -> FilterState:
    v = host.vms
    return host_state({vm.mac: [1] for vm in v} | {OUTSIDE_MAC: [1]}, {vm.port: vm.mac for vm in v[:n_bound]})


def _ifindex(host: Host, port: str) -> int:
    with netns.iproute(host.ns) as ipr:
        return int(ipr.link_lookup(ifname=port)[0])


def _programs(host: Host, port: str) -> list[str]:
    """Names of the programs at the port's tcx egress hook, in order."""
    ifindex = _ifindex(host, port)
    with netns.inside(host.ns):
        return [name for _, name, _ in bpflib.tcx_egress_programs(ifindex)]


def _tc(filt: BridgeFilter) -> TcReceiveFilter:
    assert isinstance(filt.receive, TcReceiveFilter)
    return filt.receive


def _pins(filt: BridgeFilter) -> Path:
    return _tc(filt).pins


def _add_late_port(host: Host) -> None:
    with netns.iproute(host.ns) as ipr:
        ipr.link("add", ifname="late0", kind="veth", peer="late0p")
        for name in ("late0p", "late0"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        ipr.link("set", index=ipr.link_lookup(ifname="late0")[0], master=ipr.link_lookup(ifname=BRIDGE)[0])


def _wait_forwarding(host: Host, port: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    with netns.iproute(host.ns) as ipr:
        while not _forwarding(ipr, port):
            assert time.monotonic() < end, f"{port} not forwarding after {timeout}s"
            time.sleep(0.02)


def test_no_netfilter_hook_on_the_forward_path_one_program_per_port(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    filt = host.boot(_state(host, 2))
    assert isinstance(filt, BridgeFilter) and isinstance(filt.receive, TcReceiveFilter)
    assert host.hooked_chains() == 1  # input alone (the host's own stack)
    assert "forward" not in host.chains() and "output" not in host.chains()
    for vm in host.vms:  # bound or not
        assert _programs(host, vm.port) == [PROG]
    assert _programs(host, UPLINK) == [PROG_GLOBAL]  # the uplink is in `global`


def test_a_port_joining_later_gets_the_program_and_its_copies_are_dropped(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, _ = host.vms
    filt = host.boot(_state(host, 2))
    _add_late_port(host)
    assert _programs(host, "late0") == []  # what the kernel gives a new port: open until the agent acts
    assert filt.refresh_ports() >= 1  # the agent calls this on the link event
    assert _programs(host, "late0") == [PROG]
    _wait_forwarding(host, "late0")
    before = filt.counters().get("(unbound)")
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-to-all"))
    probe.collect()
    after = filt.counters()["(unbound)"]
    assert after.rx_dropped == (before.rx_dropped if before else 0) + 1  # late0's copy, dropped
    assert filt.refresh_ports() == 0  # idempotent


def test_a_recreated_port_gets_its_keys_moved(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    state = _state(host, 2)
    filt = host.boot(state)
    old = _ifindex(host, b.port)
    with netns.iproute(host.ns) as ipr:
        ipr.link("del", index=old)
        add_vm_veth(ipr, b)
        ipr.link("set", index=ipr.link_lookup(ifname=b.port)[0], master=ipr.link_lookup(ifname=BRIDGE)[0])
    host.up()
    assert _ifindex(host, b.port) != old
    assert filt.refresh_ports() >= 1
    assert filt.read() == filt.desired()  # no key of the old ifindex is left
    pairs = {k for k, _ in bpflib.dump(_tc(filt).fd["pairs"], tc_bridge.PAIR, 1)}
    assert pair_key(old, a.mac) not in pairs and pair_key(_ifindex(host, b.port), a.mac) in pairs
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-to-b"))
    assert received(probe.collect())[b.name] == ["a-to-b"]


def test_audit_repairs_a_detached_program_and_a_deleted_pair(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 2))
    ifindex = _ifindex(host, a.port)
    with netns.inside(host.ns):
        bpflib.tcx_detach(_tc(filt).fd[PROG], ifindex)  # a's port: open, behind the agent's back
    bpflib.delete(_tc(filt).fd["pairs"], pair_key(_ifindex(host, b.port), a.mac), tc_bridge.PAIR)
    assert _programs(host, a.port) == []
    assert filt.read() is None  # the read-back sees it: a reinstall is due
    assert filt.audit().full
    assert _programs(host, a.port) == [PROG]
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-to-b"))
    probe.send(OUTSIDE, frame(BROADCAST, Mac("02:bb:00:00:00:99"), "unknown-to-all"))
    got = received(probe.collect())
    assert got[b.name] == ["a-to-b"] and got[a.name] == []


def test_maps_that_outgrow_their_size_are_swapped_in(
    make_host: Callable[[int], Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tc_bridge, "MIN_SIZES", {"pairs": 4, "srcs": 4, "ports": 4, "stats": 1})
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 2))
    first = bpflib.prog_info(_tc(filt).fd[PROG])[0]
    for i in range(40):  # 40 more sources in LNID 1: pairs and sources far past 4 (or 8) slots
        filt.set_entry(Mac(f"02:aa:00:00:00:{i:02x}"), [Lnid(1)])
    filt.apply()
    assert bpflib.prog_info(_tc(filt).fd[PROG])[0] != first  # reloaded, bigger
    assert _programs(host, a.port) == [PROG] and _programs(host, UPLINK) == [PROG_GLOBAL]
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-to-b"))
    probe.send(OUTSIDE, frame(BROADCAST, Mac("02:aa:00:00:00:27"), "new-source"))
    got = received(probe.collect())
    assert got[b.name] == ["a-to-b", "new-source"]


def test_a_restart_changes_nothing_and_removal_leaves_nothing(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    state = _state(host, 2)
    filt = host.boot(state)
    prog_id = bpflib.prog_info(_tc(filt).fd[PROG])[0]
    restarted = host.new_filter()
    restarted.sync(state)
    report = restarted.apply()
    assert report.full and report.elements == 0
    assert bpflib.prog_info(_tc(restarted).fd[PROG])[0] == prog_id  # the pinned program, not a new one
    assert _programs(host, a.port) == [PROG]
    restarted.remove()
    for port in (a.port, b.port, UPLINK):
        assert _programs(host, port) == []
    assert not _pins(restarted).exists()
    assert not host.installed()
    assert restarted.read() is None


def test_moving_to_the_nftables_flavour_detaches_the_programs(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    state = _state(host, 2)
    host.boot(state)
    with netns.inside(host.ns):
        locked = build_backend(
            BackendSpec(send_check="locked", receive_filter="nft"), nft=RecordingNft(), address_guard=False
        )
    try:
        locked.sync(state)
        locked.apply()  # another layout in the table: reinstalled as the nftables flavour
        for port in (a.port, b.port, UPLINK):
            assert _programs(host, port) == []
        assert "forward" in host.chains()
        probe = host.probe()
        probe.send(a.name, frame(BROADCAST, a.mac, "a-to-b"))
        assert received(probe.collect())[b.name] == ["a-to-b"]
    finally:
        locked.close()
