"""macvtap only: the per-port hooked chains follow the bindings, from before a device
exists; drift in them is repaired.

Re-apply, agent restart, stale tables, removal and rejected batches are tested on macvtap
through `test_backend_lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hostvlan.datapath.macvtap import own_mac_rule, port_chains
from hostvlan.datapath.nft_table import jump
from hostvlan.model.ids import Lnid, Mac
from hostvlan.model.ports import PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .macvtapnet import Host, host_factory
from .switchhost import UPLINK, UPLINK_MAC, check_isolated, drops, host_state, lifecycle_state, received

pytestmark = pytest.mark.root


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _port_chains(host: Host) -> dict[str, str | None]:
    return {n: h for n, h in host.chains().items() if n.startswith(("rx_", "tx_"))}


def _rules(host: Host, chain: str) -> list[list[Any]]:
    items = host.kernel_table() or []
    return [i["rule"]["expr"] for i in items if "rule" in i and i["rule"]["chain"] == chain]


def test_port_chains_follow_the_bindings(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [1]}, {a.port: a.mac, b.port: b.mac})
    filt = host.start(state)
    want = {f"rx_{UPLINK}": "egress"} | {f"rx_{p}": "ingress" for p in (a.port, b.port)}
    want |= {f"tx_{p}": "egress" for p in (a.port, b.port)}
    assert _port_chains(host) == want
    assert set(host.chains()) - set(want) == {"rx", "wire_rx", "tx"}

    # binding c: its two chains come in the same transaction as its elements
    filt.bind(PortBinding(c.port, c.mac))
    report = filt.apply()
    assert not report.full and report.elements == 5  # ports, bound, 3 pairs (a's, b's, c's MAC at c)
    assert _port_chains(host) == want | {f"rx_{c.port}": "ingress", f"tx_{c.port}": "egress"}
    host.start_vm(c)
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, c.mac, "c-bound"))
    assert received(probe.collect())[a.name] == ["c-bound"]

    # re-binding c to another MAC keeps its chains (same port, same kind): its old MAC is now forged
    other = Mac("52:54:00:00:00:99")
    filt.set_entry(other, [Lnid(1)])
    filt.bind(PortBinding(c.port, other))
    filt.apply()
    assert f"rx_{c.port}" in host.chains()
    # its egress chain now accepts the new MAC first, and the old one only through the full check
    assert _rules(host, f"tx_{c.port}") == [own_mac_rule(other), jump("tx")]
    assert filt.read() == filt.desired()
    tx0 = drops(filt)[1]
    probe.send(c.name, frame(BROADCAST, c.mac, "c-old-mac"))
    assert received(probe.collect())[a.name] == []
    assert drops(filt)[1][c.port] == tx0[c.port] + 1

    # per the contract c goes down first, then its port is unbound: chains and counters go
    host.stop_vm(c)
    host.set_up(c.port, up=False)
    filt.unbind(c.port)
    filt.apply()
    assert _port_chains(host) == want
    assert c.port not in filt.counters()
    assert filt.read() == filt.desired()

    # a port turning from uplink into a VM port (and back) swaps its chains in one commit
    filt.bind(PortBinding(UPLINK, UPLINK_MAC, uplink=False))
    filt.apply()
    assert filt.read() == filt.desired()
    assert _port_chains(host)[f"tx_{UPLINK}"] == "egress"
    assert _port_chains(host)[f"rx_{UPLINK}"] == "ingress"
    filt.bind(PortBinding(UPLINK, UPLINK_MAC, uplink=True))
    filt.apply()
    assert filt.read() == filt.desired() and _port_chains(host) == want


def test_binding_before_the_device_exists_filters_it_from_birth(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    a, b, late = host.vms
    host.del_macvtap(late.port)  # the VM's device does not exist yet
    state = host_state({a.mac: [1], b.mac: [2], late.mac: [1]}, {vm.port: vm.mac for vm in host.vms})
    filt = host.start(state, vms=[a, b])
    assert set(port_chains(late.port, "vm")) <= set(host.chains())

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


def test_chain_drift_is_repaired_by_audit(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    filt = host.boot(lifecycle_state(host))
    a = host.vms[0]
    before = _port_chains(host)
    host.nft_cli("delete", "chain", "netdev", "hostvlan", f"tx_{a.port}")  # behind the agent's back
    assert filt.read() is None  # chains no longer match the sets: not a layout it enforces
    report = filt.audit()  # reinstalls the table in one transaction
    assert report.full and filt.read() == filt.desired()
    assert _port_chains(host) == before

    # a stale own-MAC rule (a MAC the port no longer has) would accept forged frames: drift
    host.nft_cli(
        "insert", "rule", "netdev", "hostvlan", f"tx_{a.port}", "ether", "saddr", "52:54:00:00:00:77", "accept"
    )
    assert filt.read() is None
    filt.audit()
    assert filt.read() == filt.desired() and _rules(host, f"tx_{a.port}") == [own_mac_rule(a.mac), jump("tx")]

    host.nft_cli("add", "chain", "netdev", "hostvlan", "leftover")
    assert filt.read() is None
    filt.audit()
    assert "leftover" not in host.chains()
    check_isolated(host)
