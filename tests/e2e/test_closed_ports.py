"""No port is ever open, with real agents (issue 19): a host's agent is stopped, a VM's port
joins the switch (what libvirt does when a domain starts: a tap on the bridge, a macvtap on the
uplink, brought up): it receives nothing of any tenant and nothing it sends is forwarded (or
learned), while the bound VMs, the uplink and the other hosts keep talking; once the agent runs
again and the VM is registered, the port works. (OVS: tests/integration/test_ovs_closed.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostvlan.model.ids import Mac
from hostvlan.testbed import control, netns
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.traffic import BROADCAST, Probe, Received, frame
from hostvlan.testbed.vmtap import private_tap_node

from .support import running, topology_from_text

TOPOLOGY = """
hosts:
  - name: hb
    backend: bridge
    vms:
      - {name: b1, mac: "52:54:00:0b:00:01", lnids: [1]}
      - {name: b2, mac: "52:54:00:0b:00:02", lnids: [1]}
  - name: hc
    backend: bridge
    vms:
      - {name: c1, mac: "52:54:00:0c:00:01", lnids: [1]}
external:
  - {name: gw, mac: "52:54:00:ff:00:01", lnids: [global]}
"""
LATE_MAC = Mac("52:54:00:0b:00:09")
TAP_MAC = Mac("fe" + LATE_MAC[2:])  # the port of the vNIC, as libvirt names its MAC
FORGED = Mac("02:de:ad:be:ef:01")
PORT = "vnet9"


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[Testbed]:
    with running(topology_from_text(tmp_path, TOPOLOGY)) as bed:
        yield bed


def _bridge(tb: Testbed, *args: str) -> str:
    cmd = ["ip", "netns", "exec", tb.hosts["hb"].netns, "bridge", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.lower()


def _probe(tb: Testbed, late_ns: str) -> Probe:
    probe = Probe()
    for name in ("b1", "b2", "c1"):
        probe.attach(name, tb.vms[name].netns, tb.vms[name].ifname)
    probe.attach("gw", tb.external["gw"].netns, tb.external["gw"].ifname)
    probe.attach("late", late_ns)
    return probe


def _tags(got: dict[str, list[Received]]) -> dict[str, list[str]]:
    return {name: sorted(r.tag for r in rs) for name, rs in got.items()}


def test_a_port_joining_a_bridge_while_its_agent_is_stopped_is_closed(tb: Testbed) -> None:
    control.stop_pids([tb.pids.pop("agent:hb")])  # the agent is dead
    late_ns = f"{tb.prefix}-late"
    subprocess.run(["ip", "netns", "add", late_ns], check=True)
    try:
        with netns.iproute(tb.hosts["hb"].netns) as ipr:
            ipr.link(
                "add",
                ifname=PORT,
                kind="veth",
                address=TAP_MAC,  # as libvirt makes a tap: the agent binds only a port carrying it
                peer={"ifname": "eth0", "net_ns_fd": late_ns, "address": LATE_MAC},
            )
            idx = ipr.link_lookup(ifname=PORT)[0]
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname="br0")[0], state="up")
        with netns.iproute(late_ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
        end = time.monotonic() + 10
        while '"state":"forwarding"' not in _bridge(tb, "-j", "link", "show", "dev", PORT).replace(" ", ""):
            assert time.monotonic() < end, "the new port never forwards"
            time.sleep(0.05)
        b1, b2, c1, gw = (tb.vms["b1"].mac, tb.vms["b2"].mac, tb.vms["c1"].mac, tb.external["gw"].mac)
        with _probe(tb, late_ns) as probe:
            probe.send("b1", frame(BROADCAST, b1, "b1-bcast"))
            probe.send("b1", frame(LATE_MAC, b1, "b1-to-late"))
            probe.send("gw", frame(BROADCAST, gw, "gw-bcast"))
            for src, tag in ((FORGED, "forged"), (LATE_MAC, "own"), (b1, "spoof-b1")):
                probe.send("late", frame(BROADCAST, src, f"late-bcast-{tag}"))
                probe.send("late", frame(b2, src, f"late-to-b2-{tag}"))
                probe.send("late", frame(c1, src, f"late-to-c1-{tag}"))
            got = _tags(probe.collect())
        assert got["late"] == []  # nothing of any tenant, of the wire or of the other host
        assert not any(t.startswith("late-") for name, tags in got.items() for t in tags), got
        assert "b1-bcast" in got["b2"] and "b1-bcast" in got["c1"] and "gw-bcast" in got["b2"]  # the rest talks
        fdb = _bridge(tb, "fdb", "show", "br", "br0")
        assert FORGED not in fdb and LATE_MAC not in fdb  # nothing it sent was learned

        tb.restart_agent("hb")  # the agent is back; the VM gets registered on that port
        assert tb.api is not None
        tb.api.reg(1, LATE_MAC, "hb", PORT)
        control.wait_synced(tb.api, ["hb"], 15)
        with _probe(tb, late_ns) as probe:
            probe.send("late", frame(BROADCAST, LATE_MAC, "late-bcast"))
            probe.send("b1", frame(LATE_MAC, b1, "b1-to-late"))
            probe.send("late", frame(b2, FORGED, "late-forged"))
            got = _tags(probe.collect())
        assert got["late"] == ["b1-to-late"]
        assert "late-bcast" in got["b1"] and "late-bcast" in got["b2"] and "late-bcast" in got["c1"]
        assert "late-forged" not in got["b2"] and FORGED not in _bridge(tb, "fdb", "show", "br", "br0")
    finally:
        subprocess.run(["ip", "netns", "del", late_ns], check=False, capture_output=True)


MV_TOPOLOGY = """
hosts:
  - name: hm
    backend: macvtap
    vms:
      - {name: m1, mac: "52:54:00:0c:00:01", lnids: [1]}
      - {name: m2, mac: "52:54:00:0c:00:02", lnids: [1]}
  - name: hc
    backend: bridge
    vms:
      - {name: c1, mac: "52:54:00:0d:00:01", lnids: [1]}
external:
  - {name: gw, mac: "52:54:00:ff:00:01", lnids: [global]}
"""
MV_LATE_MAC = Mac("52:54:00:0c:00:09")
MV_PORT = "macvtap9"  # what libvirt names it: the guard's prefix


@pytest.fixture
def mvtb(tmp_path: Path) -> Iterator[Testbed]:
    with running(topology_from_text(tmp_path, MV_TOPOLOGY)) as bed:
        yield bed


def _mv_probe(tb: Testbed, late_ns: str) -> Probe:
    probe = Probe()
    for name in ("m1", "m2", "c1"):
        probe.attach(name, tb.vms[name].netns, tb.vms[name].ifname)
    probe.attach("gw", tb.external["gw"].netns, tb.external["gw"].ifname)
    probe.attach("late", late_ns)
    return probe


def test_a_macvtap_raised_while_its_agent_is_stopped_is_closed(mvtb: Testbed, tmp_path: Path) -> None:
    tb = mvtb
    control.stop_pids([tb.pids.pop("agent:hm")])  # the agent is dead
    h = tb.hosts["hm"]
    late_ns = f"{tb.prefix}-late"
    subprocess.run(["ip", "netns", "add", late_ns], check=True)
    standin: subprocess.Popen[bytes] | None = None
    try:
        with netns.iproute(h.netns) as ipr:  # libvirt: a macvtap on the uplink, brought up at once
            lower = ipr.link_lookup(ifname=h.uplink)[0]
            ipr.link("add", ifname=MV_PORT, kind="macvtap", link=lower, macvtap_mode="bridge", address=MV_LATE_MAC)
            idx = ipr.link_lookup(ifname=MV_PORT)[0]
            ipr.link("set", index=idx, flags=0x1 | 0x200, change=0x1 | 0x200)  # up, allmulticast
        node = private_tap_node(h.netns, MV_PORT, idx, tmp_path / "late-tap")
        log = tmp_path / "late.vmtap.log"
        standin = control.start(
            [
                sys.executable,
                "-m",
                "hostvlan.testbed.vmtap",
                "--tap",
                str(node),
                "--netns",
                late_ns,
                "--ifname",
                "eth0",
            ],
            log,
        )  # QEMU opens /dev/tapN
        control.wait_log(log, f"ready {MV_PORT} eth0 {MV_LATE_MAC}", standin, "the late VM's stand-in")
        m1, m2, c1, gw = (tb.vms["m1"].mac, tb.vms["m2"].mac, tb.vms["c1"].mac, tb.external["gw"].mac)
        with _mv_probe(tb, late_ns) as probe:
            probe.send("m1", frame(BROADCAST, m1, "m1-bcast"))
            probe.send("m1", frame(MV_LATE_MAC, m1, "m1-to-late"))
            probe.send("gw", frame(BROADCAST, gw, "gw-bcast"))
            probe.send("gw", frame(MV_LATE_MAC, gw, "gw-to-late"))
            for src, tag in ((FORGED, "forged"), (MV_LATE_MAC, "own"), (m1, "spoof-m1")):
                probe.send("late", frame(BROADCAST, src, f"late-bcast-{tag}"))
                probe.send("late", frame(m2, src, f"late-to-m2-{tag}"))
                probe.send("late", frame(c1, src, f"late-to-c1-{tag}"))
                probe.send("late", frame(gw, src, f"late-to-gw-{tag}"))
            got = _tags(probe.collect())
        assert got["late"] == []  # nothing of any tenant, of the wire or of the other host
        assert not any(t.startswith("late-") for name, tags in got.items() for t in tags), got
        assert "m1-bcast" in got["m2"] and "m1-bcast" in got["c1"] and "m1-bcast" in got["gw"]  # the rest talks
        assert "gw-bcast" in got["m1"] and "gw-bcast" in got["m2"]

        tb.restart_agent("hm")  # the agent is back; the VM gets registered on that port
        assert tb.api is not None
        tb.api.reg(1, MV_LATE_MAC, "hm", MV_PORT)
        control.wait_synced(tb.api, ["hm"], 15)
        with netns.iproute(h.netns) as ipr:
            wait = time.monotonic() + 10
            while not ipr.get_links(ipr.link_lookup(ifname=MV_PORT)[0])[0]["flags"] & 1:  # the agent raises it
                assert time.monotonic() < wait, "the agent never brought the bound macvtap up"
                time.sleep(0.05)
        with _mv_probe(tb, late_ns) as probe:
            probe.send("late", frame(BROADCAST, MV_LATE_MAC, "late-bcast"))
            probe.send("m1", frame(MV_LATE_MAC, m1, "m1-to-late"))
            probe.send("late", frame(m2, FORGED, "late-forged"))
            got = _tags(probe.collect())
        assert got["late"] == ["m1-to-late"]
        assert all("late-bcast" in got[name] for name in ("m1", "m2", "c1", "gw")), got
        assert "late-forged" not in got["m2"]
    finally:
        if standin is not None:
            control.stop_pids([standin.pid])
            standin.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", late_ns], check=False, capture_output=True)
