"""The neighbour-cache poisoning attack of issue 13, on a testbed with real agents (the
integration tier's version: tests/integration/test_guard_answers.py).

A `global` external router (a real Linux neighbour cache in its namespace, accepting
unsolicited ARP) has resolved the LNID-2 victim's IPv4 and IPv6 addresses. LNID-1 VMs on a
bridge, an OVS and a macvtap host send it a forged ARP reply and a forged NA (scapy, as an
attacker would) "the victim's address is at my MAC": the cache still points at the victim,
the router's traffic for the victim reaches the victim and no attacker, each host counts the
forgeries (arp_spoof, nd_spoof) on the attacker's port, and IPv4 and IPv6 between same-LNID
VMs still flows. The control: an unguarded (MAC-only) VM's same forgery does poison the cache.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from hostvlan.model.verdict import ARP_SPOOF, ND_SPOOF
from hostvlan.testbed import netns
from hostvlan.testbed.build import Testbed

from .support import Raw, running, topology_from_text

TOPOLOGY = """
hosts:
  - name: hb
    backend: bridge
    vms:
      - {name: ab, mac: "52:54:00:0d:01:01", lnids: [1]}
      - {name: vb, mac: "52:54:00:0d:01:02", lnids: [2]}
      - {name: ub, mac: "52:54:00:0d:01:03", lnids: [1], addresses: []}
  - name: ho
    backend: ovs
    vms:
      - {name: ao, mac: "52:54:00:0d:02:01", lnids: [1]}
  - name: hm
    backend: macvtap
    vms:
      - {name: am, mac: "52:54:00:0d:03:01", lnids: [1]}
external:
  - {name: gw, mac: "52:54:00:0d:ff:01", lnids: [global]}
"""
ATTACKERS = ("ab", "ao", "am")  # guarded, LNID 1, one per back end


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[Testbed]:
    with running(topology_from_text(tmp_path, TOPOLOGY)) as bed:
        yield bed


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=False)


def _ping(ns: str, addr: str) -> bool:
    return _in(ns, "ping", "-c", "1", "-W", "2", addr).returncode == 0


def _for(frames: list[bytes], v4: str, v6: str) -> list[bytes]:
    """Frames among `frames` carrying an IPv4 or IPv6 packet addressed to v4 / v6."""
    a4, a6 = ipaddress.ip_address(v4).packed, ipaddress.ip_address(v6).packed
    ip4 = [f for f in frames if f[12:14] == b"\x08\x00" and f[30:34] == a4]
    return ip4 + [f for f in frames if f[12:14] == b"\x86\xdd" and f[38:54] == a6]


def test_forged_arp_and_na_never_poison_the_global_routers_cache(tb: Testbed) -> None:
    gw, victim = tb.external["gw"], tb.vms["vb"]
    netns.sysctl(gw.netns, "net.ipv4.conf.eth0.arp_accept", "1")  # takes unsolicited replies too

    def neigh(addr: str) -> str:
        return _in(gw.netns, "ip", "neigh", "show", addr, "dev", "eth0").stdout.lower()

    assert _ping(gw.netns, victim.ip) and _ping(gw.netns, victim.ip6)  # the router resolved the victim
    assert victim.mac in neigh(victim.ip) and victim.mac in neigh(victim.ip6)

    def forge(name: str) -> None:
        vm = tb.vms[name]
        eth = Ether(src=vm.mac, dst=gw.mac)
        raw.send(name, bytes(eth / ARP(op=2, hwsrc=vm.mac, psrc=victim.ip, hwdst=gw.mac, pdst=gw.ip)))
        na = ICMPv6ND_NA(tgt=victim.ip6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=vm.mac)
        raw.send(name, bytes(eth / IPv6(src=vm.ip6, dst=gw.ip6) / na))

    before = {h: tb.drops(h) for h in tb.hosts}
    raw = Raw({n: tb.vms[n].netns for n in (*ATTACKERS, "ub")})
    try:
        time.sleep(1.2)  # past the entries' locktime (1 s): from now on a forged answer would take
        for name in ATTACKERS:
            forge(name)
        time.sleep(0.5)
        assert victim.mac in neigh(victim.ip), neigh(victim.ip)
        assert victim.mac in neigh(victim.ip6), neigh(victim.ip6)

        # the router's traffic for the victim reaches the victim, and no attacker
        raw.collect(0.1)
        assert _ping(gw.netns, victim.ip) and _ping(gw.netns, victim.ip6)
        got = raw.collect()
        assert {n: len(_for(got[n], victim.ip, victim.ip6)) for n in ATTACKERS} == dict.fromkeys(ATTACKERS, 0)

        # every host counted the forgeries on the attacker's port, by reason
        for name in ATTACKERS:
            vm = tb.vms[name]
            after = tb.drops(vm.host)
            for reason in (ARP_SPOOF, ND_SPOOF):
                key = (str(vm.port), reason)
                assert after.get(key, 0) - before[vm.host].get(key, 0) >= 1, (name, key, after)

        # the control: the same forgery from a MAC-only (unguarded) vNIC does poison the cache
        time.sleep(1.2)
        forge("ub")
        time.sleep(0.5)
        assert tb.vms["ub"].mac in neigh(victim.ip) and tb.vms["ub"].mac in neigh(victim.ip6)
    finally:
        raw.close()

    # IPv4 and IPv6 between same-LNID VMs on the three back ends still flow
    for src, dst in (("ab", "ao"), ("ao", "am"), ("am", "ab")):
        s, d = tb.vms[src], tb.vms[dst]
        assert _ping(s.netns, d.ip), (src, dst, "IPv4")
        assert _ping(s.netns, d.ip6), (src, dst, "IPv6")
