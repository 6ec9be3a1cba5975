"""ARP (and, on the bridge, ND) answered on the host, with the tools a guest really uses.

A VM resolves a registered peer of its LNID with `arping` (and `ndisc6`): the answer comes
from the host, carrying the peer's MAC, and no request reaches the wire; a request for an
address registered in another LNID gets no answer and does not reach the wire either.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
from collections.abc import Callable

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from hostvlan.testbed import netns

from .guardframes import A0_6, FAR, PEER, PEER6, R1, VICTIM, VICTIM6, Sockets, guard_state
from .ovsnet import OvsHost
from .switchhost import OUTSIDE, OUTSIDE_MAC, SwitchHost, Vm

pytestmark = pytest.mark.root


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=False)


def _requests(frames: list[bytes]) -> list[bytes]:
    """ARP requests and neighbour solicitations among `frames` (untagged) for the registered
    addresses the test resolves (a guest's own DAD probes aside)."""
    asked = {ipaddress.ip_address(a).packed for a in (PEER, FAR, PEER6)}
    arp = [f for f in frames if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] in asked]
    ns = [f for f in frames if f[12:14] == b"\x86\xdd" and len(f) >= 78 and f[20] == 58 and f[54] == 135]
    return arp + [f for f in ns if f[62:78] in asked]


@pytest.mark.parametrize("backend", ["bridge-closed", "ovs"])
def test_a_registered_peer_is_answered_on_the_host(backend: str, make_host: Callable[[int], SwitchHost]) -> None:
    host = make_host(3)
    state = guard_state(host.vms)
    host.boot(state)
    vm = host.vms[0]
    _in(vm.ns, "ip", "addr", "add", "10.66.0.1/24", "dev", "eth0")
    wire = Sockets({OUTSIDE: host.outside_ns})
    try:
        wire.collect(0.2)
        got = _in(vm.ns, "arping", "-c", "2", "-w", "3", "-i", "eth0", "-S", "10.66.0.1", PEER)
        assert R1 in got.stdout.lower(), got.stdout + got.stderr  # the peer's MAC, from the host
        far = _in(vm.ns, "arping", "-c", "1", "-w", "1", "-i", "eth0", "-S", "10.66.0.1", FAR)
        assert "bytes from" not in far.stdout  # another LNID's: dropped at the source
        if not isinstance(host, OvsHost):  # the bridge answers ND too
            netns.sysctl(vm.ns, "net.ipv6.conf.eth0.disable_ipv6", "0")
            netns.sysctl(vm.ns, "net.ipv6.conf.eth0.accept_dad", "0")
            _in(vm.ns, "ip", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
            time.sleep(0.5)
            nd = _in(vm.ns, "ndisc6", "-1", "-r", "2", "-s", "fd00::1", PEER6, "eth0")
            assert R1 in nd.stdout.lower(), nd.stdout + nd.stderr
        assert _requests(wire.collect(0.5)[OUTSIDE]) == []  # no request reached the wire
    finally:
        wire.close()


@pytest.mark.parametrize("backend", ["bridge-closed", "ovs", "macvtap"])
def test_forged_answers_never_poison_the_routers_neighbour_cache(
    backend: str, make_host: Callable[[int], SwitchHost]
) -> None:
    """The wire's end is a router (a real Linux neighbour cache, accepting unsolicited ARP and
    NA): the guarded vm0's forged ARP reply and NA for the victim's addresses change nothing;
    the same forgery from the unguarded vm1 does (the MAC-only filter cannot see it)."""
    host = make_host(3)
    state = guard_state(host.vms)
    host.boot(state)
    vm0, vm1, victim = host.vms
    x = host.outside_ns
    netns.sysctl(x, "net.ipv4.conf.eth0.arp_accept", "1")
    netns.sysctl(x, "net.ipv6.conf.eth0.disable_ipv6", "0")
    netns.sysctl(x, "net.ipv6.conf.eth0.accept_dad", "0")
    _in(x, "ip", "addr", "add", "10.66.0.254/24", "dev", "eth0")
    _in(x, "ip", "addr", "add", "fd00::fe/64", "dev", "eth0", "nodad")
    time.sleep(0.3)

    def neigh(addr: str) -> str:
        return _in(x, "ip", "neigh", "show", addr, "dev", "eth0").stdout.lower()

    def reset() -> None:
        for addr in (VICTIM, VICTIM6):
            _in(x, "ip", "neigh", "replace", addr, "lladdr", victim.mac, "dev", "eth0", "nud", "stale")

    def forge(vm: Vm) -> None:
        eth = Ether(src=vm.mac, dst=OUTSIDE_MAC)
        socks.send(vm.name, bytes(eth / ARP(op=2, hwsrc=vm.mac, psrc=VICTIM, hwdst=OUTSIDE_MAC, pdst="10.66.0.254")))
        na = ICMPv6ND_NA(tgt=VICTIM6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=vm.mac)
        socks.send(vm.name, bytes(eth / IPv6(src=VICTIM6 if vm is vm1 else A0_6, dst="fd00::fe") / na))
        time.sleep(0.5)

    socks = Sockets({vm0.name: vm0.ns, vm1.name: vm1.ns})
    try:
        reset()
        time.sleep(1.2)  # past the neighbour entry's locktime (1 s): a forged reply would take
        forge(vm0)
        assert vm0.mac not in neigh(VICTIM) and victim.mac in neigh(VICTIM)
        assert vm0.mac not in neigh(VICTIM6) and victim.mac in neigh(VICTIM6)
        time.sleep(1.2)
        forge(vm1)  # the control: an unguarded vNIC can
        assert vm1.mac in neigh(VICTIM) and vm1.mac in neigh(VICTIM6)
    finally:
        socks.close()
