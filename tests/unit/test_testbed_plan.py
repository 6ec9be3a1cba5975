"""The testbed's plan (pure, no root): names, MACs, IPs and ports from a topology, and the
operations the builder sends to the manager."""

from __future__ import annotations

import ipaddress
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml

from hostvlan.model.ids import GLOBAL, Lnid, Mac
from hostvlan.testbed.plan import (
    batches,
    fill_jobs,
    fill_ops,
    lnid_change_ops,
    make_plan,
    program_timeout,
    registration_ops,
    subnet6,
    uplink_mac,
)
from hostvlan.testbed.topology import TopologyError, parse_topology

TOPO = """
hosts:
  - name: h1
    vms:
      - {name: a, mac: "52:54:00:00:00:01", lnids: [1]}
      - {name: b, mac: "52:54:00:00:00:02", lnids: [2, global]}
  - name: m1
    backend: macvtap
    vms:
      - {name: c, mac: "52:54:00:00:00:03", lnids: [1]}
  - name: o1
    backend: ovs-none
    fill: {macs: 10, lnids: 4, ports: 2}
  - name: o2
    backend: ovs
    fill: {macs: 6, lnids: 3, ports: 1, port_lnids: 2}
external:
  - {name: gw, mac: "52:54:00:ff:00:01", lnids: [global]}
"""


def test_names_ips_ports_and_macs() -> None:
    plan = make_plan(parse_topology(TOPO), "hvt1")
    assert (plan.switch_ns, plan.mgmt_ns) == ("hvt1-sw", "hvt1-mg")
    assert plan.hosts["h1"].netns == "hvt1-h-h1" and plan.hosts["h1"].bridge == "br0"
    assert plan.hosts["h1"].uplink == "uplink0" and plan.hosts["h1"].uplink_mac == "0e:48:56:00:00:01"
    assert [plan.hosts[h].uplink_mac for h in ("m1", "o1")] == ["0e:48:56:00:00:02", "0e:48:56:00:00:03"]
    assert [(v.netns, v.port, v.ip) for v in plan.vms.values()] == [
        ("hvt1-v-a", "vnet0", "10.200.0.1"),
        ("hvt1-v-b", "vnet1", "10.200.0.2"),
        ("hvt1-v-c", "macvtap0", "10.200.0.3"),
    ]
    assert plan.external["gw"].netns == "hvt1-x-gw" and plan.external["gw"].ip == "10.200.0.4"
    assert plan.hosts["h1"].filtered and plan.hosts["h1"].switch == "bridge"
    assert plan.hosts["m1"].switch == "macvtap" and not plan.hosts["o1"].filtered
    assert plan.hosts["o1"].switch == "ovs" and plan.hosts["o2"].filtered
    assert plan.bpf_pins("h1") == Path("/run/hostvlan/bpf/hvt1-h1")  # the agent's bpffs (tc_bridge.BPFFS)
    assert make_plan(parse_topology(TOPO), "hvt1") == plan  # deterministic: `from_record` relies on it


def test_uplink_mac_avoids_endpoint_macs() -> None:
    taken = {Mac("0e:48:56:00:00:01")}
    assert uplink_mac(0, taken) == "0e:48:56:00:10:01"
    assert uplink_mac(1, taken) == "0e:48:56:00:00:02"


def test_registration_ops() -> None:
    topo = parse_topology(TOPO)
    plan = make_plan(topo, "hvt1")
    ops = registration_ops(topo, plan)
    six = {n: v.ip6 for n, v in plan.vms.items()} | {"gw": plan.external["gw"].ip6}
    assert ops == [
        {"op": "reg", "lnid": 1, "mac": "52:54:00:00:00:01", "host": "h1", "port": None, "external": False,
         "ips": ["10.200.0.1", six["a"]]},
        {"op": "reg", "lnid": "global", "mac": "52:54:00:00:00:02", "host": "h1", "port": None, "external": False,
         "ips": ["10.200.0.2", six["b"]]},
        {"op": "reg", "lnid": 2, "mac": "52:54:00:00:00:02", "host": "h1", "port": None, "external": False,
         "ips": ["10.200.0.2", six["b"]]},
        # a macvtap VM is registered with its port: its filter exists before its device does
        {"op": "reg", "lnid": 1, "mac": "52:54:00:00:00:03", "host": "m1", "port": "macvtap0", "external": False,
         "ips": ["10.200.0.3", six["c"]]},
        {"op": "reg", "lnid": "global", "mac": "52:54:00:ff:00:01", "host": None, "port": None, "external": True,
         "ips": ["10.200.0.4", six["gw"]]},
    ]  # fmt: skip


def test_ipv6_addresses_per_run() -> None:
    topo = parse_topology(TOPO)
    plan = make_plan(topo, "hvt1")
    net = subnet6("hvt1")
    assert net.prefixlen == 64 and str(net).startswith("fd") and net != subnet6("hvt2")
    got = [ipaddress.ip_address(v.ip6) for v in plan.vms.values()] + [ipaddress.ip_address(plan.external["gw"].ip6)]
    assert got == [net[1], net[2], net[3], net[4]]
    assert asdict(plan.vms["a"])["ip6"] == str(net[1])  # the testbed JSON carries it


def test_addresses_roles_and_mac_only() -> None:
    text = """
hosts:
  - name: h1
    vms:
      - {name: a, mac: "52:54:00:00:00:01", lnids: [1], addresses: []}
      - {name: b, mac: "52:54:00:00:00:02", lnids: [1], addresses: [10.9.0.1, "fd00:9::/64"], router: true}
      - {name: c, mac: "52:54:00:00:00:03", lnids: [1], addresses: auto, dhcp_server: true}
"""
    topo = parse_topology(text)
    plan = make_plan(topo, "hvt1")
    a, b, c = registration_ops(topo, plan)
    assert "ips" not in a and "router" not in a  # MAC-only: unguarded
    assert b["ips"] == ["10.9.0.1", "fd00:9::/64"] and b["router"] is True
    assert c["ips"] == [plan.vms["c"].ip, plan.vms["c"].ip6] and c["dhcp_server"] is True
    assert parse_topology(yaml.safe_dump(topo.to_dict())) == topo
    for bad, why in (("addresses: [224.0.0.1]", "multicast"), ("addresses: nope", "must be a list"),
                     ("router: 1", "true or false")):  # fmt: skip
        with pytest.raises(TopologyError, match=why):
            parse_topology(f'hosts: [{{name: h, vms: [{{name: a, mac: "52:54:00:00:00:01", {bad}}}]}}]')


def test_fill_jobs_get_lnids_of_their_own() -> None:
    jobs = fill_jobs(parse_topology(TOPO))
    assert [(j.host, j.first_lnid, j.base, j.port_lnids) for j in jobs] == [("o1", 1, 2, 1), ("o2", 5, 3, 2)]
    assert program_timeout(parse_topology(TOPO)) == 30.0 + (10 + 2 + 6 + 2) / 10_000


def test_fill_ops() -> None:
    ops = fill_ops("o2", 4, 3, 2, first_lnid=5, base=3, port_lnids=2)
    remote = [o for o in ops if o["host"] == "o2-fill"]
    assert [o["lnid"] for o in remote] == [5, 6, 7, 5]
    assert remote[0]["mac"] == "02:fe:03:00:00:00" and remote[3]["mac"] == "02:fe:03:00:00:03"
    ports = [(o["port"], o["lnid"], o["mac"]) for o in ops if o["host"] == "o2"]
    assert ports == [
        ("idle0", 5, "02:fd:03:00:00:00"),
        ("idle0", 6, "02:fd:03:00:00:00"),
        ("idle1", 6, "02:fd:03:00:00:01"),
        ("idle1", 7, "02:fd:03:00:00:01"),
    ]


def test_lnid_change_ops_and_batches() -> None:
    mac = Mac("52:54:00:00:00:01")
    ops = lnid_change_ops(mac, "h1", {Lnid(1), Lnid(2)}, {Lnid(2), Lnid(3), GLOBAL})
    assert ops == [
        {"op": "reg", "lnid": "global", "mac": mac, "host": "h1", "external": False},
        {"op": "reg", "lnid": 3, "mac": mac, "host": "h1", "external": False},
        {"op": "unreg", "lnid": 1, "mac": mac},
    ]
    assert lnid_change_ops(mac, None, set(), {Lnid(4)})[0]["external"] is True
    assert [len(b) for b in batches([{}] * 5, 2)] == [2, 2, 1]
