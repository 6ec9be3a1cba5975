"""OVS only: where the filter rests on OpenFlow and OVSDB: the secure fail mode (before any
flow exists nothing is forwarded; a standalone bridge is refused), flows deleted behind
the agent's back, ports that come and go.

Verdicts, re-apply, agent restart, stale layouts, removal, rejected bundles and a reset
switch are tested on OVS through `test_backend_verdicts` and `test_backend_lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.model.ports import FilterState
from hostvlan.testbed.traffic import BROADCAST, frame

from .ovsnet import BRIDGE, OvsHost, ovs_hosts
from .switchhost import EXT, OUTSIDE, check_empty_filter, check_isolated, host_state, lifecycle_state, received

pytestmark = pytest.mark.root


@pytest.fixture
def make_ovs(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def test_no_flow_forwards_nothing_then_the_empty_filter_neither(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(3)
    host.up()  # links up BEFORE any flow exists: fail-mode=secure forwards nothing
    assert host.dump_flows() == []
    probe = host.probe()
    for vm in host.vms:
        probe.send(vm.name, frame(BROADCAST, vm.mac, f"noflows-{vm.name}"))
    probe.send(OUTSIDE, frame(BROADCAST, EXT, "noflows-outside"))
    assert received(probe.collect()) == {vm.name: [] for vm in host.vms} | {OUTSIDE: []}

    filt = host.new_filter()
    filt.sync(FilterState())
    filt.apply()  # installed, no entries, no bindings
    check_empty_filter(host, filt)


def test_deleted_flows_fail_closed_and_audit_repairs_them(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(3)
    filt = host.boot(lifecycle_state(host))
    target = host.target

    # flows deleted behind the agent's back: nothing forwards (fail closed); audit repairs exactly
    host.tools.ofctl("del-flows", target)
    probe = host.probe()
    probe.send(host.vms[0].name, frame(BROADCAST, host.vms[0].mac, "wiped"))
    assert all(ts == [] for ts in received(probe.collect()).values())
    report = filt.audit()
    assert report.full and report.elements > 0
    assert filt.read() == filt.desired()
    check_isolated(host)


def test_bridge_must_fail_closed(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(1)
    host.tools.vsctl("set", "Bridge", BRIDGE, "fail-mode=standalone")
    filt = host.new_filter()
    filt.sync(_state_one(host))
    with pytest.raises(DatapathError, match="fail-mode=secure"):
        filt.apply()


def _state_one(host: OvsHost) -> FilterState:
    (a,) = host.vms
    return host_state({a.mac: [1]}, {a.port: a.mac})


def test_ports_bound_before_they_exist_start_when_they_appear(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(3, ports_on_bridge=2)  # vnet2 exists as a veth but is not on the bridge yet
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [2], c.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.boot(state)
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
