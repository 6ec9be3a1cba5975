"""The simulator's pure parts: the Table 1 layout and a simulated host's data path."""

from __future__ import annotations

from typing import Any

import pytest

from hostvlan import wire
from hostvlan.model.ids import parse_host, parse_mac, parse_port
from hostvlan.sim.agents import ProtocolError, SimView, intern_entries
from hostvlan.sim.layout import Layout


def test_table1_sizes() -> None:
    lay = Layout(hosts=8192, vms_per_host=128, vms_per_tenant=64)
    assert (lay.vms, lay.tenants, lay.view_entries, lay.pods) == (1_048_576, 16_384, 8_192, 128)


@pytest.mark.parametrize("hosts,per_host,per_tenant", [(16, 4, 2), (12, 5, 3), (8, 1, 8)])
def test_layout_is_the_worst_case(hosts: int, per_host: int, per_tenant: int) -> None:
    lay = Layout(hosts, per_host, per_tenant)
    members: dict[int, list[int]] = {}
    macs = set()
    for h in range(hosts):
        tenants = [lay.lnid(h, s) for s in range(per_host)]
        assert len(set(tenants)) == per_host, "every VM of a host is of another tenant"
        for s in range(per_host):
            members.setdefault(lay.lnid(h, s), []).append(h)
            macs.add(parse_mac(lay.mac(h, s), vm=True))
        parse_host(lay.host_name(h))
    for s in range(per_host):
        parse_port(lay.port(s))
    assert len(macs) == lay.vms
    assert len(members) == lay.tenants
    for lnid, hs in members.items():
        assert len(hs) == per_tenant and len(set(hs)) == per_tenant
        assert list(lay.tenant_hosts(lnid)) == sorted(hs)
    for h in range(hosts):
        assert len(lay.pod_entries(lay.pod(h))) == lay.view_entries
    ops = list(lay.reg_ops(range(hosts)))
    assert len(ops) == lay.vms and {o["op"] for o in ops} == {"reg"}


def test_layout_refuses_what_cannot_be_the_worst_case() -> None:
    with pytest.raises(ValueError, match="multiple"):
        Layout(hosts=10, vms_per_host=4, vms_per_tenant=4)
    with pytest.raises(ValueError):
        Layout(hosts=0, vms_per_host=4, vms_per_tenant=4)


M1, M2, M3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def _msg(line: dict[str, Any]) -> Any:
    """A feed line as the simulator reads it (`wire.decode_feed`)."""
    return wire.decode_feed(line)


def test_view_applies_snapshot_then_deltas() -> None:
    v = SimView()
    with pytest.raises(ProtocolError, match="before snapshot"):
        v.delta(_msg({"type": "delta", "revision": 1, "entries": {M1: [1]}}))
    v.snapshot(_msg({"type": "snapshot", "revision": 3, "entries": {M1: [1], M2: [1, "global"]}, "local": {M1: "vp1"}}))
    assert v.revision == 3 and v.entries == {M1: [1], M2: [1, "global"]} and v.local == {M1: "vp1"}
    v.delta(_msg({"type": "delta", "revision": 5, "entries": {M3: [1]}, "removed": [M2], "local": {M3: None}}))
    assert v.entries == {M1: [1], M3: [1]} and v.local == {M1: "vp1", M3: None}
    v.delta(_msg({"type": "delta", "revision": 6, "unlocal": [M1]}))
    assert v.local == {M3: None} and v.revision == 6
    with pytest.raises(ProtocolError, match="after"):
        v.delta(_msg({"type": "delta", "revision": 6, "entries": {M1: [2]}}))


def test_equal_snapshot_keeps_the_view_and_entries_are_shared() -> None:
    v, w = SimView(), SimView()
    snap = {"type": "snapshot", "revision": 1, "entries": {M1: [7], M2: [7]}, "local": {}}
    v.snapshot(_msg(snap))
    held = v.entries
    v.snapshot(_msg({**snap, "revision": 2, "entries": {M1: [7], M2: [7]}}))
    assert v.entries is held and v.revision == 2, "a resync that changes nothing rebuilds nothing"
    w.snapshot(_msg({**snap, "entries": {M1: [7], M2: [7]}}))
    assert w.entries[M1] is v.entries[M2], "equal LNID lists are one object"
    a = intern_entries({M3: [1]})
    b = intern_entries({M3: [1]})
    assert next(iter(a)) is next(iter(b)), "MACs received close together are one object"


def test_bindings_follow_the_local_vnics() -> None:
    v = SimView()
    v.snapshot(_msg({"type": "snapshot", "revision": 1, "entries": {M1: [1]}, "local": {M1: "vp1", M2: None}}))
    first = v.local_version
    assert {m: (b.port, b.state) for m, b in v.bindings().items()} == {M1: ("vp1", "bound"), M2: ("sim-1", "bound")}
    v.delta(_msg({"type": "delta", "revision": 2, "entries": {M3: [1]}}))
    assert v.local_version == first, "entries alone leave the bindings as reported"
    v.delta(_msg({"type": "delta", "revision": 3, "unlocal": [M2]}))
    assert v.local_version > first and set(v.bindings()) == {M1}
