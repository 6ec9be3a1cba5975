"""A VRRP failover between two guarded VMs holding a shared VIP (issue 13), with Debian's
`keepalived` inside the VM namespaces and real agents.

k1 and k2 (LNID 1) hold the VIP registered `--shared` (`hostvlan addr add MAC VIP --shared`);
keepalived (unicast VRRP, config in the test's tmp dir) makes k1 the master. A third VM of
LNID 1 on another host reaches the VIP; k1's keepalived is stopped, k2 takes over (its
gratuitous ARP passes the guard: the VIP is registered for it) and the third VM reaches the VIP
again, now at k2's MAC. A VM of LNID 2 cannot register the VIP, and its gratuitous ARP and
forged reply claiming it are dropped (arp_spoof) and change no cache. Bridge and OVS hosts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.l2 import ARP, Ether

from hostvlan.model.verdict import ARP_SPOOF
from hostvlan.testbed.build import Testbed

from .support import Raw, running, topology_from_text

TOPOLOGY = """
hosts:
  - name: hk
    backend: {backend}
    vms:
      - {{name: k1, mac: "52:54:00:0e:01:01", lnids: [1]}}
      - {{name: k2, mac: "52:54:00:0e:01:02", lnids: [1]}}
      - {{name: x, mac: "52:54:00:0e:01:03", lnids: [2]}}
  - name: hc
    backend: bridge
    vms:
      - {{name: c1, mac: "52:54:00:0e:02:01", lnids: [1]}}
"""
VIP = "10.200.3.100"  # in the testbed's on-link /16, held by no VM
BROADCAST = "ff:ff:ff:ff:ff:ff"

KEEPALIVED_CONF = """
global_defs {{
    router_id {name}
    vrrp_garp_master_repeat 3
}}
vrrp_instance hostvlan {{
    state {state}
    interface eth0
    virtual_router_id 51
    priority {priority}
    advert_int 1
    unicast_src_ip {ip}
    unicast_peer {{
        {peer}
    }}
    virtual_ipaddress {{
        {vip}/16 dev eth0
    }}
}}
"""


@pytest.fixture(params=["bridge", "ovs"])
def tb(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Testbed]:
    with running(topology_from_text(tmp_path, TOPOLOGY.format(backend=request.param))) as bed:
        yield bed


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=False)


def _hv(tb: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOSTVLAN_MANAGER": tb.manager_url, "HOSTVLAN_TOKEN": tb.manager_token}
    return subprocess.run(
        [sys.executable, "-m", "hostvlan.cli", *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


class Keepalived:
    """keepalived (VRRP only, in the foreground) in VM `name`'s namespace; its files in `workdir`."""

    def __init__(self, tb: Testbed, name: str, peer: str, priority: int, workdir: Path) -> None:
        vm = tb.vms[name]
        d = workdir / name
        d.mkdir()
        conf = KEEPALIVED_CONF.format(
            name=name,
            state="MASTER" if priority > 100 else "BACKUP",
            priority=priority,
            ip=vm.ip,
            peer=tb.vms[peer].ip,
            vip=VIP,
        )
        (d / "keepalived.conf").write_text(conf)
        self.log = (d / "log").open("wb")
        argv = [
            "ip", "netns", "exec", vm.netns, "keepalived", "--dont-fork", "--log-console", "--log-detail",
            "--no-syslog", "--vrrp", f"--use-file={d / 'keepalived.conf'}", f"--pid={d / 'keepalived.pid'}",
            f"--vrrp_pid={d / 'vrrp.pid'}", f"--checkers_pid={d / 'checkers.pid'}",
        ]  # fmt: skip
        self.path = d / "log"
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def _vip_at(tb: Testbed, client: str, timeout: float = 15.0) -> str:
    """Ping the VIP from `client` until it answers; the MAC its neighbour cache then holds for it."""
    ns = tb.vms[client].netns
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if _in(ns, "ping", "-c", "1", "-W", "1", VIP).returncode == 0:
            return _in(ns, "ip", "neigh", "show", VIP, "dev", "eth0").stdout.lower()
        time.sleep(0.2)
    raise AssertionError(f"{client} never reached the VIP {VIP}")


def test_vrrp_failover_between_vms_holding_a_shared_vip(tb: Testbed, tmp_path: Path) -> None:
    k1, k2, x = tb.vms["k1"], tb.vms["k2"], tb.vms["x"]
    for vm in (k1, k2):
        got = _hv(tb, "addr", "add", vm.mac, VIP, "--shared")
        assert got.returncode == 0, got.stdout + got.stderr
    refused = _hv(tb, "addr", "add", x.mac, VIP, "--shared")  # LNID 2 shares no LNID with its holders
    assert refused.returncode != 0, refused.stdout
    tb.program()
    spoofed = {vm.name: tb.drops("hk").get((str(vm.port), ARP_SPOOF), 0) for vm in (k1, k2)}

    daemons = [Keepalived(tb, "k1", "k2", 150, tmp_path), Keepalived(tb, "k2", "k1", 100, tmp_path)]
    try:
        seen = _vip_at(tb, "c1")
        assert k1.mac in seen, seen  # the master answers for the VIP (the host never does)

        daemons[0].stop()  # the master's keepalived stops: k2 takes over, announcing the VIP (gratuitous ARP)
        end = time.monotonic() + 15
        while k2.mac not in (seen := _vip_at(tb, "c1")) and time.monotonic() < end:
            time.sleep(0.3)
        assert k2.mac in seen, (seen, daemons[1].path.read_text())
        assert "Entering MASTER STATE" in daemons[1].path.read_text()
        after = tb.drops("hk")  # neither holder's VRRP announcements were taken for spoofing
        assert {vm.name: after.get((str(vm.port), ARP_SPOOF), 0) for vm in (k1, k2)} == spoofed

        # LNID 2's x claims the VIP: its gratuitous ARP and a reply to c1 are dropped at its port
        before = tb.drops("hk").get((str(x.port), ARP_SPOOF), 0)
        _in(x.netns, "ip", "addr", "add", f"{VIP}/16", "dev", "eth0")
        c1 = tb.vms["c1"]
        raw = Raw({"x": x.netns})
        try:
            time.sleep(1.1)  # past c1's locktime for the entry: a forged answer would take now
            garp = ARP(op=1, hwsrc=x.mac, psrc=VIP, hwdst="00:00:00:00:00:00", pdst=VIP)
            raw.send("x", bytes(Ether(src=x.mac, dst=BROADCAST) / garp))
            reply = ARP(op=2, hwsrc=x.mac, psrc=VIP, hwdst=c1.mac, pdst=c1.ip)
            raw.send("x", bytes(Ether(src=x.mac, dst=c1.mac) / reply))
            time.sleep(0.5)
        finally:
            raw.close()
        assert tb.drops("hk").get((str(x.port), ARP_SPOOF), 0) - before >= 2
        seen = _vip_at(tb, "c1")
        assert k2.mac in seen and x.mac not in seen, seen
    finally:
        for d in daemons:
            d.stop()
