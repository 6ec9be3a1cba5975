"""An attacker's frames and a wire tap, for the demo's address-guard step (issue 13).

`arp_reply` and `neighbour_advert` build the forged answers of a neighbour-cache poisoning
attack ("ADDRESS is at MY MAC") by hand, so the demo needs no packet library; `Tap` is a packet
socket inside a namespace that keeps every frame coming in, and counts the ARP requests and
neighbour solicitations among them for given addresses.
"""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import time

from hostvlan.model.guard import checksum
from hostvlan.testbed.netns import inside

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
IPPROTO_ICMPV6 = 58
ND_NS, ND_NA = 135, 136
PACKET_OUTGOING = 4


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _eth(dst: str, src: str, ethertype: int) -> bytes:
    return _mac(dst) + _mac(src) + struct.pack("!H", ethertype)


def arp_reply(src_mac: str, sender_ip: str, dst_mac: str, target_ip: str) -> bytes:
    """An ARP reply from `src_mac` to `dst_mac` saying `sender_ip` is at `src_mac`."""
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + _mac(src_mac) + ipaddress.IPv4Address(sender_ip).packed
    arp += _mac(dst_mac) + ipaddress.IPv4Address(target_ip).packed
    return (_eth(dst_mac, src_mac, ETH_P_ARP) + arp).ljust(60, b"\0")


def neighbour_advert(src_mac: str, src_ip6: str, dst_mac: str, dst_ip6: str, target: str) -> bytes:
    """An unsolicited NA (override set) from `src_mac`/`src_ip6` to `dst_mac`/`dst_ip6`
    saying `target` is at `src_mac` (target link-layer address option)."""
    src, dst = ipaddress.IPv6Address(src_ip6).packed, ipaddress.IPv6Address(dst_ip6).packed
    icmp = bytearray(struct.pack("!BBHB3x", ND_NA, 0, 0, 0x20) + ipaddress.IPv6Address(target).packed)
    icmp += b"\x02\x01" + _mac(src_mac)
    pseudo = src + dst + struct.pack("!I3xB", len(icmp), IPPROTO_ICMPV6)
    icmp[2:4] = struct.pack("!H", checksum(pseudo + bytes(icmp)))
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), IPPROTO_ICMPV6, 255) + src + dst
    return _eth(dst_mac, src_mac, ETH_P_IPV6) + ip6 + bytes(icmp)


def resolutions(frames: list[bytes], addrs: list[str]) -> int:
    """How many of `frames` (untagged) are ARP requests or NSes for one of `addrs`."""
    wanted = {ipaddress.ip_address(a).packed for a in addrs}
    n = 0
    for f in frames:
        kind = f[12:14]
        if kind == b"\x08\x06" and f[20:22] == b"\x00\x01" and f[38:42] in wanted:
            n += 1
        elif kind == b"\x86\xdd" and len(f) >= 78 and f[20] == IPPROTO_ICMPV6 and f[54] == ND_NS:
            n += f[62:78] in wanted
    return n


class Tap:
    """A packet socket on `ifname` in namespace `ns`, keeping the frames that come in."""

    def __init__(self, ns: str, ifname: str) -> None:
        with inside(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setblocking(False)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def collect(self, settle: float = 0.2) -> list[bytes]:
        """The frames received until `settle` seconds pass with none (at most 3 s)."""
        got: list[bytes] = []
        end = time.monotonic() + 3.0
        while time.monotonic() < end and select.select([self.sock], [], [], settle)[0]:
            while True:
                try:
                    data, addr = self.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if addr[2] != PACKET_OUTGOING:
                    got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()
