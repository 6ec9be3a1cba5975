"""The Linux bridge's send check by locked ports (`bridge.locked.LockedPorts`, here with the
default tc receive filter): what the shared verdict tests cannot see — the FDB cannot be
poisoned, a port that joins later sends nothing until bound, drift in the bridge's port state
is found and repaired, and removal hands the bridge back as it was.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator

import pytest

from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import BRIDGE, Host, bridge_hosts
from .switchhost import OUTSIDE, OUTSIDE_MAC, UPLINK, host_state, received

pytestmark = pytest.mark.root


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[[int], Host]]:
    with bridge_hosts(prefix) as make:
        yield make


def _fdb(host: Host, mac: Mac) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "netns", "exec", host.ns, "bridge", "-j", "fdb", "show", "br", BRIDGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [e for e in json.loads(out) if e.get("mac") == mac]


def _brport(host: Host, port: str) -> dict[str, object]:
    out = subprocess.run(
        ["ip", "netns", "exec", host.ns, "bridge", "-j", "-d", "link", "show", "dev", port],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    info: dict[str, object] = json.loads(out)[0]
    return info


def _state(host: Host, n_bound: int) -> FilterState:
    v = host.vms
    return host_state({vm.mac: [1] for vm in v} | {OUTSIDE_MAC: [1]}, {vm.port: vm.mac for vm in v[:n_bound]})


def test_ports_are_locked_and_bound_macs_pinned_uplink_learns(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    v = host.vms
    host.boot(_state(host, 2))
    for vm in v:  # bound or not: locked, not learning
        assert _brport(host, vm.port)["locked"] is True
        assert _brport(host, vm.port)["learning"] is False
    assert _brport(host, UPLINK)["locked"] is False
    assert _brport(host, UPLINK)["learning"] is True
    for vm in v[:2]:
        (entry,) = _fdb(host, vm.mac)
        assert entry["ifname"] == vm.port
        assert "static" in str(entry.get("state")) and "sticky" in entry.get("flags", [])  # type: ignore[operator]
    assert _fdb(host, v[2].mac) == []  # unbound: no entry, so its port sends nothing


def test_a_frame_from_outside_with_a_local_mac_cannot_steal_it(make_host: Callable[[int], Host]) -> None:
    """FDB poisoning from the wire: the local vNIC's entry is sticky, it never moves to the uplink."""
    host = make_host(2)
    a, b = host.vms
    host.boot(_state(host, 2))
    probe = host.probe()
    probe.send(OUTSIDE, frame(BROADCAST, a.mac, "spoofed-from-wire"))
    probe.collect()
    (entry,) = _fdb(host, a.mac)
    assert entry["ifname"] == a.port
    # b's unicast to a still reaches a, not the wire
    probe.send(b.name, frame(a.mac, b.mac, "b-to-a"))
    got = received(probe.collect())
    assert got[a.name] == ["b-to-a"] and got[OUTSIDE] == []


def test_a_forged_source_neither_passes_nor_moves_the_owner(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    host.boot(_state(host, 3))
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, a.mac, "c-as-a"))  # another bound VM's MAC
    probe.send(c.name, frame(BROADCAST, Mac("02:bb:00:00:00:99"), "c-as-unknown"))
    got = received(probe.collect())
    assert got == {a.name: [], b.name: [], c.name: [], OUTSIDE: []}
    (entry,) = _fdb(host, a.mac)
    assert entry["ifname"] == a.port
    assert _fdb(host, Mac("02:bb:00:00:00:99")) == []  # nothing learned from a locked port


def test_a_port_joining_later_is_locked_by_refresh(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    filt = host.boot(_state(host, 2))
    with netns.iproute(host.ns) as ipr:
        ipr.link("add", ifname="late0", kind="veth", peer="late0p")
        ipr.link("set", index=ipr.link_lookup(ifname="late0")[0], master=ipr.link_lookup(ifname=BRIDGE)[0])
    assert _brport(host, "late0")["locked"] is False  # what the kernel gives a new port
    assert filt.refresh_ports() >= 1  # the agent calls this on the link event
    assert _brport(host, "late0")["locked"] is True
    assert _brport(host, "late0")["learning"] is False
    assert filt.refresh_ports() == 0  # idempotent


def test_a_port_that_joined_while_no_agent_ran_is_locked_at_restart(make_host: Callable[[int], Host]) -> None:
    """The restart's first apply finds the kernel's digest equal (nothing to change in
    nftables) and still locks a port that appeared meanwhile."""
    host = make_host(2)
    state = _state(host, 2)
    host.boot(state)
    with netns.iproute(host.ns) as ipr:
        ipr.link("add", ifname="late0", kind="veth", peer="late0p")
        ipr.link("set", index=ipr.link_lookup(ifname="late0")[0], master=ipr.link_lookup(ifname=BRIDGE)[0])
    assert _brport(host, "late0")["locked"] is False
    restarted = host.new_filter()
    restarted.sync(state)
    report = restarted.apply()
    assert report.full and report.elements == 0  # the digest fast path
    assert _brport(host, "late0")["locked"] is True


def test_audit_repairs_an_unlocked_port_and_a_deleted_entry(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 2))
    subprocess.run(
        ["ip", "netns", "exec", host.ns, "bridge", "link", "set", "dev", a.port, "locked", "off"], check=True
    )
    subprocess.run(["ip", "netns", "exec", host.ns, "bridge", "fdb", "del", b.mac, "dev", b.port, "master"], check=True)
    assert filt.read() != filt.desired()  # the drift shows in the read-back
    assert filt.audit().elements > 0
    assert _brport(host, a.port)["locked"] is True
    assert [e["ifname"] for e in _fdb(host, b.mac)] == [b.port]
    assert filt.read() == filt.desired()
    assert filt.audit().elements == 0


def test_unbind_deletes_the_entry_and_removal_hands_the_bridge_back(make_host: Callable[[int], Host]) -> None:
    host = make_host(2)
    a, b = host.vms
    filt = host.boot(_state(host, 2))
    filt.unbind(PortName(b.port))
    filt.apply()
    assert _fdb(host, b.mac) == []
    assert _brport(host, b.port)["locked"] is True  # unbound: still closed
    filt.remove()
    for port in (a.port, b.port, UPLINK):
        assert _brport(host, port)["locked"] is False
        assert _brport(host, port)["learning"] is True
    assert _fdb(host, a.mac) == []
