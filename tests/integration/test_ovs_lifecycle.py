"""The OVS filter's life on a real switch: re-apply, agent restart, removal, failures, ports that come and go."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.ovs import COOKIE_BASE, OvsFilter
from hostvlan.model.ids import Lnid, Mac
from hostvlan.model.ports import FilterState
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import OUTSIDE, host_state
from .ovsnet import BRIDGE, OvsHost, RecordingTools, ovs_hosts, received

pytestmark = pytest.mark.root

EXT = Mac("02:aa:00:00:00:01")


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def _state(host: OvsHost) -> FilterState:
    a, b, c = host.vms
    return host_state({a.mac: [1], b.mac: [1], c.mac: [2], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})


def _isolated(host: OvsHost) -> None:
    """a ↔ b (LNID 1) talk, c (LNID 2) hears neither; the wire hears all."""
    a, b, c = host.vms
    probe = host.probe()
    for vm in host.vms:
        probe.send(vm.name, frame(BROADCAST, vm.mac, f"iso-{vm.name}"))
    assert received(probe.collect()) == {
        a.name: [f"iso-{b.name}"],
        b.name: [f"iso-{a.name}"],
        c.name: [],
        OUTSIDE: sorted(f"iso-{vm.name}" for vm in host.vms),
    }


def _durations(lines: list[str]) -> dict[str, float]:
    """Flow (without its stats) → seconds since it was added."""
    out = {}
    for line in lines:
        d = re.search(r"duration=([0-9.]+)s", line)
        assert d is not None, line
        key = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ", "", line)
        out[key] = float(d.group(1))
    return out


def _bundles(filt: OvsFilter) -> list[int]:
    """Line counts of the bundles this (recording) filter sent."""
    assert isinstance(filt._tools, RecordingTools)
    return [lines for args, lines in filt._tools.calls if args[:1] == ("bundle",)]


def test_reapply_and_agent_restart_change_nothing(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    state = _state(host)
    filt = host.start(state)
    before = host.dump_flows(stats=True)

    filt.sync(state)
    again = filt.apply()
    assert again.elements == 0 and not again.full
    assert filt.apply().elements == 0

    # an agent restart: a new filter object, a new OVSDB connection, the same switch
    restarted = host.new_filter(record=True)
    restarted.sync(state)
    report = restarted.apply()
    assert report.full and report.elements == 0
    assert _bundles(restarted) == [], "the restart sent a bundle"
    assert restarted.apply().elements == 0 and not restarted.apply().full
    assert _bundles(restarted) == []
    after = host.dump_flows(stats=True)
    old, new = _durations(before), _durations(after)
    assert set(old) == set(new), "flows changed across the restart"
    assert all(new[k] >= old[k] for k in old), "a flow was re-added (its duration restarted)"
    assert restarted.read() == restarted.desired() == filt.desired()
    _isolated(host)


def test_restart_reconciles_a_missed_change_in_one_small_bundle(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    host.start(_state(host))
    a, b, c = host.vms
    moved = host_state({a.mac: [1], b.mac: [1], c.mac: [1], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})
    restarted = host.new_filter(record=True)
    restarted.sync(moved)
    report = restarted.apply()
    assert report.full and 0 < report.elements <= 8
    assert len(_bundles(restarted)) == 1 and _bundles(restarted)[0] <= 2 * report.elements + 2
    assert restarted.read() == restarted.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "to-all"))
    got = received(probe.collect())
    assert got[b.name] == got[c.name] == got[OUTSIDE] == ["to-all"]


def test_remove_leaves_no_hostvlan_flow_and_is_idempotent(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    filt = host.start(_state(host))
    foreign = "table=100,priority=1,cookie=0x1234,actions=drop"  # someone else's flow stays
    host.tools.ofctl("add-flow", host.tools.of_target(BRIDGE), foreign)
    assert host.dump_flows()

    filt.remove()
    assert host.dump_flows() == []
    assert filt.read() is None
    assert "group_id" not in host.tools.ofctl("dump-groups", host.tools.of_target(BRIDGE))
    filt.remove()
    host.new_filter().remove()
    assert host.dump_flows() == []
    assert "cookie=0x1234" in host.tools.ofctl("dump-flows", host.tools.of_target(BRIDGE))

    report = filt.apply()
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    _isolated(host)


def test_stale_or_foreign_layout_is_replaced(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    stale = [
        f"table=4,priority=999,cookie={COOKIE_BASE | 0x77:#x},actions=goto_table:5",  # would allow everything
        f"table=200,priority=0,cookie={COOKIE_BASE | 1 << 32:#x},actions=note:64.00.6f.6c.64",
    ]
    for flow in stale:
        host.tools.ofctl("add-flow", host.tools.of_target(BRIDGE), flow)
    filt = host.start(_state(host))
    assert filt.read() == filt.desired()
    assert not any("priority=999" in line for line in host.dump_flows())
    assert filt.apply().elements == 0
    _isolated(host)


def test_failed_bundle_changes_nothing_and_the_next_apply_reconciles(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    filt = host.start(_state(host))
    a, _, c = host.vms
    before, flows = filt.read(), host.dump_flows()

    # the switch rejects the bundle (a flow referring to a group that does not exist): all or nothing
    real = filt._tools.ofctl

    def failing(*args: str, stdin: str | None = None) -> str:
        if args[:1] == ("bundle",) and stdin:
            stdin += "flow add table=100,priority=1,cookie=0x4856000000000000,actions=group:4242\n"
        return real(*args, stdin=stdin)

    object.__setattr__(filt._tools, "ofctl", failing)
    filt.set_entry(c.mac, [Lnid(1)])
    with pytest.raises(DatapathError):
        filt.apply()
    assert filt.read() == before and host.dump_flows() == flows, "a rejected bundle changed the switch"
    _isolated(host)

    object.__delattr__(filt._tools, "ofctl")
    report = filt.apply()  # reconciles from a fresh read-back: pushes the change
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "now-c-too"))
    assert received(probe.collect())[c.name] == ["now-c-too"]


def test_wiped_switch_fails_closed_and_is_reinstalled(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    filt = host.start(_state(host))
    target = host.tools.of_target(BRIDGE)

    # flows deleted behind the agent's back: nothing forwards (fail closed); audit repairs exactly
    host.tools.ofctl("del-flows", target)
    probe = host.probe()
    probe.send(host.vms[0].name, frame(BROADCAST, host.vms[0].mac, "wiped"))
    assert all(ts == [] for ts in received(probe.collect()).values())
    report = filt.audit()
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    _isolated(host)

    # a reset switch (flows AND groups gone, as after an ovs-vswitchd restart): the next
    # incremental bundle fails on the guard group instead of half-programming it
    host.tools.ofctl("del-flows", target)
    host.tools.ofctl("del-groups", target)
    filt.set_entry(Mac("02:aa:00:00:00:02"), [Lnid(2)])
    with pytest.raises(DatapathError):
        filt.apply()
    assert host.dump_flows() == []
    report = filt.apply()
    assert report.full and filt.read() == filt.desired()
    _isolated(host)


def test_bridge_must_fail_closed(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(1)
    host.tools.vsctl("set", "Bridge", BRIDGE, "fail-mode=standalone")
    filt = host.new_filter()
    filt.sync(_state_one(host))
    with pytest.raises(DatapathError, match="fail-mode=secure"):
        filt.apply()


def _state_one(host: OvsHost) -> FilterState:
    (a,) = host.vms
    return host_state({a.mac: [1]}, {a.port: a.mac})


def test_ports_bound_before_they_exist_start_when_they_appear(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3, ports_on_bridge=2)  # vnet2 exists as a veth but is not on the bridge yet
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [2], c.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.start(state)
    assert filt.read() == filt.desired()  # c's facts are programmed although its port is missing
    assert c.port not in host.db.ofports(BRIDGE)
    assert host.db.ports_by_attached_mac(BRIDGE) == {a.mac: a.port, b.mac: b.port}

    host.attach(c)
    host.up()
    assert host.db.ports_by_attached_mac(BRIDGE)[c.mac] == c.port
    assert filt.refresh_ports() == 1  # the agent saw OVSDB change: one small bundle
    assert filt.refresh_ports() == 0
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-bc"))
    probe.send(c.name, frame(BROADCAST, c.mac, "c-bc"))
    probe.send(b.name, frame(c.mac, b.mac, "b-to-c"))
    got = received(probe.collect())
    assert got[c.name] == ["a-bc"] and got[a.name] == ["c-bc"] and got[b.name] == []

    # the port goes away (VM stopped without unbind): its port flows go, its facts stay
    flows_of_c = [line for line in host.dump_flows() if f"in_port={host.db.ofports(BRIDGE)[c.port]}" in line]
    assert flows_of_c
    host.db.del_port(c.port)
    assert filt.apply().elements == 0  # apply() also refreshes ports
    assert not any(line in host.dump_flows() for line in flows_of_c)
    assert filt.read() == filt.desired()
