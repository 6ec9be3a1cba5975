"""Pure parts of the testbed's libvirt guests: the topology key, domain XML, the exec answer."""

from __future__ import annotations

import base64
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from hostvlan.model.ids import Mac
from hostvlan.testbed.guests import CHANNEL, GuestImage, GuestSpec, _parse_answer, domain_xml
from hostvlan.testbed.topology import TopologyError, parse_topology

IMG = GuestImage(Path("/img/vmlinuz"), Path("/img/initrd.img"))


def _spec(switch: str, source: str = "br0") -> GuestSpec:
    return GuestSpec("hv1-vm1", Mac("52:54:00:00:00:01"), "10.200.0.1/16", switch, source, Path("/w/c"), Path("/w/s"))


def test_topology_guests_key() -> None:
    topo = parse_topology("hosts:\n  - name: h1\n    guests: libvirt\n  - name: h2\n")
    assert [h.guests for h in topo.hosts] == ["libvirt", "namespaces"]
    assert topo.to_dict()["hosts"][0]["guests"] == "libvirt" and "guests" not in topo.to_dict()["hosts"][1]
    assert parse_topology(str(topo.to_dict()).replace("'", '"')).hosts == topo.hosts  # YAML flow form round trip
    with pytest.raises(TopologyError, match=r"<topology>:3: host h1: unknown guests 'kvm'"):
        parse_topology("hosts:\n  - name: h1\n    guests: kvm\n")


@pytest.mark.parametrize("switch", ["bridge", "ovs", "macvtap"])
def test_domain_xml_defines_the_nic_as_an_operator_would(switch: str) -> None:
    dom = ET.fromstring(domain_xml(_spec(switch, "uplink0" if switch == "macvtap" else "br0"), IMG))
    assert dom.get("type") == "qemu"  # TCG: nested KVM guests do not boot here
    nic = dom.find("devices/interface")
    assert nic is not None
    assert nic.find("mac").get("address") == "52:54:00:00:00:01"
    assert nic.find("model").get("type") == "virtio"
    assert nic.find("driver").get("name") == "qemu"  # no vhost-net
    assert nic.find("target") is None  # libvirt names the port
    if switch == "macvtap":
        assert nic.get("type") == "direct"
        assert nic.find("source").attrib == {"dev": "uplink0", "mode": "bridge"}
    else:
        assert nic.get("type") == "bridge"
        assert nic.find("source").get("bridge") == "br0"
        vport = nic.find("virtualport")
        assert (vport is not None and vport.get("type") == "openvswitch") == (switch == "ovs")
    assert dom.find("devices/channel/target").get("name") == CHANNEL
    assert "hv.ip=10.200.0.1/16" in (dom.findtext("os/cmdline") or "")


def test_exec_answer_is_parsed_by_its_token() -> None:
    out, err = base64.b64encode(b"a\nb\n").decode(), base64.b64encode(b"oops").decode()
    lines = [b"OUT t1", out[:4].encode(), out[4:].encode(), b"ERR t1", err.encode(), b"END t1 3", b""]
    res = _parse_answer("t1", lines, 3)
    assert (res.status, res.stdout, res.stderr) == (3, b"a\nb\n", b"oops")


def test_plan_of_a_guest_host() -> None:
    from hostvlan.testbed.plan import make_plan

    topo = parse_topology(
        "hosts:\n  - name: h1\n    backend: macvtap\n    guests: libvirt\n    vms:\n"
        '      - {name: a, mac: "52:54:00:00:00:0a", lnids: [1]}\n'
        '      - {name: b, mac: "52:54:00:00:00:0b", lnids: [1]}\n'
        "  - name: h2\n    vms:\n"
        '      - {name: c, mac: "52:54:00:00:00:0c", lnids: [1]}\n'
    )
    plan = make_plan(topo, "hvx")
    assert plan.hosts["h1"].guests == "libvirt" and plan.hosts["h2"].guests == "namespaces"
    a, b, c = plan.vms["a"], plan.vms["b"], plan.vms["c"]
    assert (a.netns, a.domain, a.port, b.port) == ("", "hvx-a", "macvtap0", "macvtap1")  # libvirt's names
    assert (c.netns, c.domain, c.port) == ("hvx-v-c", None, "vnet0")
