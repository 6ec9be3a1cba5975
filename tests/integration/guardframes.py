"""Forged and honest frames for the address guard's differential tests, and the host they run on.

One state for every back end (`guard_state`): vm0 guarded (a /32, a /128, an IPv4 /24 prefix),
vm1 unguarded, both in LNID 1; vm2 guarded in LNID 2 (the victim whose address vm0 forges);
remote vNICs holding a registered address in LNID 1 (answered on the host), in LNID 3 (no
shared LNID: dropped), and a VIP shared in LNID 1 (never answered). `battery()` builds every
frame (scapy) from vm0 and vm1, untagged and with one and two VLAN tags.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dhcp6 import DHCP6_Advertise
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import (
    ICMPv6MLReport2,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
    IPv6ExtHdrHopByHop,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from hostvlan.model.addresses import Addrs, link_local
from hostvlan.model.ids import Lnid, Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns

from .switchhost import Vm, host_state, vm_mac

BCAST = "ff:ff:ff:ff:ff:ff"
R1, R3, RV = Mac("52:54:00:00:01:01"), Mac("52:54:00:00:01:03"), Mac("52:54:00:00:01:20")
A0, A0_6, A0_NET = "10.66.0.1", "fd00::1", "10.77.0.0/24"
VICTIM, VICTIM6 = "10.66.0.3", "fd00::3"
PEER, PEER6 = "10.66.0.9", "fd00::9"  # R1's, LNID 1: answered to vm0 and vm1
FAR, FAR6 = "10.66.0.10", "fd00::10"  # R3's, LNID 3: dropped
VIP = "10.66.0.20"  # shared in LNID 1: goes out
NOBODY = "10.66.0.50"


def _nets(*a: str) -> frozenset[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return frozenset(ipaddress.ip_network(x) for x in a)


def guard_state(vms: list[Vm]) -> FilterState:
    """The state every guard test enforces (see module doc), for a host with three VMs."""
    v0, v1, v2 = vms[0], vms[1], vms[2]
    base = host_state(
        {v0.mac: [1], v1.mac: [1], v2.mac: [2], R1: [1], R3: [3], RV: [1]},
        {v0.port: v0.mac, v1.port: v1.mac, v2.port: v2.mac},
    )
    addresses = {
        v0.mac: Addrs(_nets(f"{A0}/32", f"{A0_6}/128", A0_NET)),
        v2.mac: Addrs(_nets(f"{VICTIM}/32", f"{VICTIM6}/128")),
        R1: Addrs(_nets(f"{PEER}/32", f"{PEER6}/128"), router=True),
        R3: Addrs(_nets(f"{FAR}/32", f"{FAR6}/128")),
        RV: Addrs(_nets(f"{VIP}/32"), frozenset(_nets(f"{VIP}/32"))),
    }
    return replace(base, addresses=addresses)


@dataclass(frozen=True)
class Case:
    label: str
    port: PortName
    sender: str  # the VM's name
    data: bytes


def _tagged(eth: Packet, tags: int, payload: Packet) -> bytes:
    if tags == 0:
        return bytes(eth / payload)
    if tags == 1:
        return bytes(eth / Dot1Q(vlan=5) / payload)
    return bytes(eth / Dot1AD(vlan=7) / Dot1Q(vlan=5) / payload)


def _frames(mac: Mac, own4: str, own6: str, victim_mac: Mac) -> Iterator[tuple[str, Packet]]:
    ll = str(link_local(mac))
    sol = "ff02::1:ff00:9"
    yield "arp request answered", ARP(op=1, hwsrc=mac, psrc=own4, pdst=PEER)
    yield "arp request no shared lnid", ARP(op=1, hwsrc=mac, psrc=own4, pdst=FAR)
    yield "arp request unregistered", ARP(op=1, hwsrc=mac, psrc=own4, pdst=NOBODY)
    yield "arp request vip", ARP(op=1, hwsrc=mac, psrc=own4, pdst=VIP)
    yield "arp probe", ARP(op=1, hwsrc=mac, psrc="0.0.0.0", pdst=PEER)
    yield "arp gratuitous", ARP(op=1, hwsrc=mac, psrc=own4, pdst=own4)
    yield "arp reply poison", ARP(op=2, hwsrc=mac, psrc=VICTIM, pdst=PEER, hwdst=R1)
    yield "arp reply forged sha", ARP(op=2, hwsrc=victim_mac, psrc=own4, pdst=PEER)
    yield "arp reply zero sha", ARP(op=2, hwsrc="00:00:00:00:00:00", psrc=VICTIM, pdst=PEER)
    yield "arp reply own", ARP(op=2, hwsrc=mac, psrc=own4, pdst=PEER, hwdst=R1)
    yield "arp cut short", Raw(bytes(ARP(op=2, hwsrc=mac, psrc=own4))[:20])
    yield "arp not ipv4", ARP(ptype=0x86DD, plen=16, hwsrc=mac)
    yield "ip4 own", IP(src=own4, dst=PEER) / UDP(sport=1000, dport=2000) / Raw(b"x" * 8)
    yield "ip4 prefix", IP(src="10.77.0.5", dst=PEER) / UDP(sport=1000, dport=2000)
    yield "ip4 spoof", IP(src=VICTIM, dst=PEER) / UDP(sport=1000, dport=2000)
    yield "ip4 zero dhcp client", IP(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=68, dport=67) / BOOTP()
    yield "ip4 zero other", IP(src="0.0.0.0", dst=PEER) / UDP(sport=1000, dport=2000)
    yield "ip4 dhcp server", IP(src=own4, dst="255.255.255.255") / UDP(sport=67, dport=68) / BOOTP() / DHCP()
    yield "ip4 bad ihl", Raw(b"\x43" + bytes(IP(src=own4, dst=PEER))[1:])
    yield "ip4 cut short", Raw(bytes(IP(src=own4, dst=PEER))[:12])
    yield "ip4 udp cut short", Raw(bytes(IP(src=own4, dst=PEER, proto=17, len=24))[:24])
    yield "ip6 own", IPv6(src=own6, dst=PEER6) / UDP(sport=1000, dport=2000)
    yield "ip6 link-local", IPv6(src=ll, dst="ff02::1") / UDP(sport=1000, dport=2000)
    yield "ip6 spoof", IPv6(src=VICTIM6, dst=PEER6) / UDP(sport=1000, dport=2000)
    yield "ip6 unspecified udp", IPv6(src="::", dst=PEER6) / UDP(sport=1000, dport=2000)
    yield "ip6 dhcp6 server", IPv6(src=ll, dst="fe80::1") / UDP(sport=547, dport=546) / DHCP6_Advertise()
    yield "ip6 cut short", Raw(bytes(IPv6(src=own6, dst=PEER6) / UDP())[:30])
    yield "ip6 payload cut short", Raw(bytes(IPv6(src=own6, dst=PEER6, plen=64) / UDP()))
    yield "ra", IPv6(src=ll, dst="ff02::1") / ICMPv6ND_RA()
    yield "redirect", IPv6(src=ll, dst=PEER6) / ICMPv6ND_Redirect(tgt="fe80::1", dst=PEER6)
    yield "ra behind hop-by-hop", IPv6(src=ll, dst="ff02::1") / IPv6ExtHdrHopByHop() / ICMPv6ND_RA()
    yield "ns answered", IPv6(src=own6, dst=sol) / ICMPv6ND_NS(tgt=PEER6) / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    yield "ns answered no option", IPv6(src=ll, dst=sol) / ICMPv6ND_NS(tgt=PEER6)
    yield "ns no shared lnid", IPv6(src=own6, dst=sol) / ICMPv6ND_NS(tgt=FAR6) / ICMPv6NDOptSrcLLAddr(lladdr=mac)
    yield "ns unregistered", IPv6(src=own6, dst=sol) / ICMPv6ND_NS(tgt="fd00::77")
    yield "ns forged slla", IPv6(src=own6, dst=sol) / ICMPv6ND_NS(tgt=PEER6) / ICMPv6NDOptSrcLLAddr(lladdr=victim_mac)
    yield "ns dad", IPv6(src="::", dst="ff02::1:ff00:1") / ICMPv6ND_NS(tgt=own6)
    yield "na own", IPv6(src=own6, dst="ff02::1") / ICMPv6ND_NA(tgt=own6) / ICMPv6NDOptDstLLAddr(lladdr=mac)
    yield "na poison", IPv6(src=own6, dst="ff02::1") / ICMPv6ND_NA(tgt=VICTIM6) / ICMPv6NDOptDstLLAddr(lladdr=mac)
    yield "na forged tlla", IPv6(src=own6, dst="ff02::1") / ICMPv6ND_NA(tgt=own6) / ICMPv6NDOptDstLLAddr(lladdr=R1)
    yield (
        "na option length 0",
        Raw(
            bytes(IPv6(src=own6, dst="ff02::1", plen=32, nh=58) / ICMPv6ND_NA(tgt=own6))[:64] + b"\x02\x00" + b"\0" * 6
        ),
    )
    yield "mld report from ::", IPv6(src="::", dst="ff02::16") / IPv6ExtHdrHopByHop() / ICMPv6MLReport2()


def battery(vms: list[Vm]) -> list[Case]:
    """Every frame from vm0 (guarded) and vm1 (unguarded), with 0, 1 and 2 VLAN tags."""
    out: list[Case] = []
    for vm in vms[:2]:
        for label, payload in _frames(vm.mac, A0 if vm.index == 0 else "10.66.0.2", A0_6, vms[2].mac):
            for tags in (0, 1, 2):
                # a trailer past the headers (which the guard ignores) tells the tagged variants apart
                # where a packet socket shows a frame without the tag the kernel took out
                data = _tagged(Ether(src=vm.mac, dst=BCAST), tags, payload) + b"\xa5" + bytes([tags])
                out.append(Case(f"{vm.name} {label} tags={tags}", vm.port, vm.name, data))
    return out


def untag(data: bytes) -> bytes:
    """The frame without its VLAN tags (packet sockets show a tag the NIC took out without it)."""
    while data[12:14] in (b"\x81\x00", b"\x88\xa8"):
        data = data[:12] + data[16:]
    return data


class Sockets:
    """Raw packet sockets on eth0 of named namespaces: send, and collect every frame arriving."""

    def __init__(self, where: dict[str, str]) -> None:
        self.socks: dict[str, socket.socket] = {}
        for name, ns in where.items():
            with netns.inside(ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            s.bind(("eth0", 3))
            s.setblocking(False)
            self.socks[name] = s

    def send(self, name: str, data: bytes) -> None:
        self.socks[name].send(data)

    def collect(self, settle: float = 0.15) -> dict[str, list[bytes]]:
        got: dict[str, list[bytes]] = {n: [] for n in self.socks}
        poller = select.poll()
        by_fd = {s.fileno(): n for n, s in self.socks.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            events = poller.poll(settle * 1000)
            if not events:
                break
            for fd, _ in events:
                name = by_fd[fd]
                while True:
                    try:
                        data, addr = self.socks[name].recvfrom(65535)
                    except BlockingIOError:
                        break
                    if addr[2] != socket.PACKET_OUTGOING:
                        got[name].append(untag(data))
        return got

    def close(self) -> None:
        for s in self.socks.values():
            s.close()


def seen(frames: Iterable[bytes], want: bytes) -> bool:
    """`want` among `frames`, padding aside (a switch may pad a short frame to 60 bytes) and
    with or without its trailer (br_netfilter trims an IP packet to its length)."""
    w = untag(want)

    def same(f: bytes, w: bytes) -> bool:
        return f == w or (len(f) == 60 and len(w) < 60 and f[: len(w)] == w and not f[len(w) :].strip(b"\0"))

    return any(same(f, w) or same(f, w[:-2]) for f in frames)


def vm0_lnid() -> Lnid:
    return Lnid(1)


__all__ = ["BCAST", "Case", "Sockets", "battery", "guard_state", "seen", "untag", "vm_mac"]
