"""No port is ever open, with real agents (issue 19): a bridge host's agent is stopped, a VM's
port joins the bridge (what libvirt does when a domain starts): it receives nothing of any
tenant and nothing it sends is forwarded or learned, while the bound VMs, the uplink and the
other hosts keep talking; once the agent runs again and the VM is registered, the port works.
(OVS and macvtap: tests/integration/test_ovs_closed.py, test_macvtap_closed.py.)
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostvlan.model.ids import Mac
from hostvlan.testbed import control, netns
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.traffic import BROADCAST, Probe, Received, frame

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
