"""Real guests: QEMU domains started by libvirt on a Linux bridge, an Open vSwitch and a
macvtap host, isolation checked from inside the guests against the model, and a
migration (domain destroyed on one host, `hostvlan move`, started on another).

libvirt makes every port (vnetN taps on br0, OVS ports tagged external_ids:attached-mac,
macvtapN on the uplink); the agents find them with no hint from the testbed. Guests are
TCG (nested KVM guests do not boot here): the whole module takes ~2-3 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostvlan.model.ids import tap_mac
from hostvlan.testbed import guestvms
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.guestcheck import check_guests, model_exchange

from .support import running, topology_from_text

TOPOLOGY = """
hosts:
  - name: hb
    backend: bridge
    guests: libvirt
    vms:
      - {name: b1, mac: "52:54:00:1b:00:01", lnids: [1]}
      - {name: b2, mac: "52:54:00:1b:00:02", lnids: [2]}
  - name: ho
    backend: ovs
    guests: libvirt
    vms:
      - {name: o1, mac: "52:54:00:1d:00:01", lnids: [1]}
      - {name: o2, mac: "52:54:00:1d:00:02", lnids: [3]}
  - name: hm
    backend: macvtap
    guests: libvirt
    vms:
      - {name: m1, mac: "52:54:00:1c:00:01", lnids: [2]}
      - {name: m2, mac: "52:54:00:1c:00:02", lnids: [1, 3]}
external:
  - {name: gw, mac: "52:54:00:ff:00:21", lnids: [global]}
"""


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    topo = topology_from_text(Path(tmp_path_factory.mktemp("guests")), TOPOLOGY)
    with running(topo) as bed:
        bed.record = True  # a state file, for `hostvlan testbed exec` (removed by `down`)
        bed._save(status="up")
        yield bed
    assert not bed.guests.domains


def _exec(tb: Testbed, name: str, *argv: str, timeout: float = 60.0) -> tuple[int, str]:
    status, out, err = guestvms.exec_in(tb.to_json(), name, list(argv), timeout)
    return status, out.decode() + err.decode()


def _cli(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(Path(sys.executable).parent / "hostvlan"), *args], capture_output=True, timeout=timeout)


def test_domains_run_on_ports_libvirt_made(tb: Testbed) -> None:
    for name, vm in tb.vms.items():
        assert vm.domain and vm.libvirt_uri, name
        assert tb.guests.running(name), f"domain {vm.domain} not running"
        state = subprocess.run(
            ["virsh", "-c", vm.libvirt_uri, "domstate", vm.domain], capture_output=True, text=True, check=True
        )
        assert state.stdout.strip() == "running"
    for h in ("hb", "ho", "hm"):  # libvirt's `default` network (virbr0, dnsmasq) never came up
        nets = subprocess.run(
            ["virsh", "-c", tb.guests.uri(h), "net-list", "--all", "--name"], capture_output=True, text=True, check=True
        )
        assert not nets.stdout.strip(), nets.stdout
        assert (
            "virbr"
            not in subprocess.run(["ip", "-n", tb.hosts[h].netns, "-o", "link"], capture_output=True, text=True).stdout
        )
    # the bridge host: libvirt's vnetN taps, MAC fe:…, enslaved to br0
    links = json.loads(
        subprocess.run(
            ["ip", "-j", "-n", tb.hosts["hb"].netns, "link", "show", "master", "br0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    taps = {ln["ifname"]: ln["address"] for ln in links if ln["ifname"].startswith("vnet")}
    assert taps == {"vnet0": tap_mac(tb.vms["b1"].mac), "vnet1": tap_mac(tb.vms["b2"].mac)}
    # the OVS host: libvirt added its ports and tagged them itself
    ovs = tb._ovs["ho"].tools
    for name in ("o1", "o2"):
        port = tb.vms[name].port
        ids = ovs.vsctl("get", "Interface", port, "external_ids:attached-mac").strip().strip('"')
        assert ids == tb.vms[name].mac
        assert ovs.vsctl("get", "Interface", port, "external_ids:vm-id").strip()  # libvirt's, not ours
    # the macvtap host: macvtapN on the uplink, MAC = the vNIC's, up (bound before it came up)
    for name in ("m1", "m2"):
        vm = tb.vms[name]
        link = json.loads(
            subprocess.run(
                ["ip", "-j", "-d", "-n", tb.hosts["hm"].netns, "link", "show", vm.port],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )[0]
        assert link["address"] == vm.mac and link["linkinfo"]["info_kind"] == "macvtap"
        assert "UP" in link["flags"] and "ALLMULTI" in link["flags"], link["flags"]


def test_exec_reports_output_and_status(tb: Testbed) -> None:
    status, out = _exec(tb, "b1", "sh", "-c", "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; exit 7")
    assert status == 7
    assert tb.vms["b1"].mac in out and f"{tb.vms['b1'].ip}/" in out
    status, out = _exec(tb, "gw", "true")  # a namespace endpoint: the same command
    assert status == 0


def test_cli_exec(tb: Testbed) -> None:
    cli = ["testbed", "exec", "--prefix", tb.prefix]
    res = _cli(*cli, "m2", "--", "ping", "-c1", "-W2", tb.vms["o1"].ip)
    assert res.returncode == 0, res.stderr
    assert b"1 packets received" in res.stdout
    res = _cli(*cli, "m1", "--", "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (res.returncode, res.stdout, res.stderr) == (5, b"out\n", b"err\n")
    assert _cli(*cli, "nobody", "--", "true").returncode == 3


def test_cli_check_from_inside_the_guests(tb: Testbed) -> None:
    """`hostvlan testbed check`: every guest arpings and pings every endpoint, forges MACs."""
    res = _cli("testbed", "check", "--prefix", tb.prefix, "--json")
    out = json.loads(res.stdout)
    assert res.returncode == 0, out.get("guests", out)
    guests = out["guests"]
    assert guests["wrong"] == [] and guests["forged"] == [], guests
    assert (
        guests["pairs"] == 6 * 6 and guests["answered"] == 10 + 6
    )  # 5 same-LNID VM pairs both ways, every VM to gw (global)
    # the topology makes both outcomes happen on every switch
    assert model_exchange(tb, "b1", "m2") and model_exchange(tb, "o2", "m2") and model_exchange(tb, "b2", "m1")
    assert not model_exchange(tb, "b1", "b2") and not model_exchange(tb, "o1", "o2")
    assert not model_exchange(tb, "m1", "m2")


def test_migration_bridge_to_macvtap(tb: Testbed) -> None:
    """b1 leaves hb: its domain is destroyed there, its MAC moved, started on hm (macvtap)."""
    before = tb.vms["b1"]
    after = tb.migrate_guest("b1", "hm")
    assert after.host == "hm" and after.port.startswith("macvtap") and tb.guests.running("b1")
    links = subprocess.run(
        ["ip", "-n", tb.hosts["hb"].netns, "-o", "link"], capture_output=True, text=True, check=True
    ).stdout
    assert f"{before.port}:" not in links, "libvirt left the old tap behind"
    assert tb.api is not None
    assert {r["mac"]: r for r in tb.api.macs()}[after.mac]["host"] == "hm"
    rep = check_guests(tb, ["b1", "b2", "m1"])
    assert rep.ok, "\n".join(rep.wrong)
    assert model_exchange(tb, "b1", "o1") and model_exchange(tb, "b1", "m2")
    assert not model_exchange(tb, "b1", "m1")
