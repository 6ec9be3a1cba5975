"""Hostile-first parsing of the frames a vNIC sends, for the address guard (issue 13).

`parse(frame)` reads only what the guard needs (Ethernet, up to two VLAN tags, ARP, IPv4,
IPv6 with up to `MAX_EXT` extension headers, ICMPv6 NS/NA/RA/redirect with their options,
UDP ports) and never raises: a header that is cut short, has a wrong length field or a
wrong version makes the result `bad` (with what could not be parsed), which a guarded port
drops as `malformed`. The eBPF guard (`datapath/bpf/hv_guard.c`) parses the same way, the
same limits included; the model is what the differential tests compare it with.

Pure: imports nothing but the standard library and `hostvlan.model`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from hostvlan.model.ids import Mac

ETH_ARP, ETH_IP4, ETH_IP6 = 0x0806, 0x0800, 0x86DD
VLAN_TYPES = (0x8100, 0x88A8)
MAX_TAGS = 2  # frames with more tags are not parsed (bad) on a guarded port
MAX_EXT = 3  # IPv6 extension headers walked before the upper layer; more: bad
MAX_OPTS = 4  # NDP options read; an NS/NA with more is bad
IPPROTO_UDP, IPPROTO_ICMP6 = 17, 58
EXT_HEADERS = (0, 43, 60)  # hop-by-hop, routing, destination options ((len + 1) * 8 bytes)
EXT_FRAGMENT = 44
ND_RS, ND_RA, ND_NS, ND_NA, ND_REDIRECT = 133, 134, 135, 136, 137
MLD_TYPES = (130, 131, 132, 143)
OPT_SLLA, OPT_TLLA = 1, 2
DHCP4_SERVER, DHCP4_CLIENT, DHCP6_CLIENT, DHCP6_SERVER = 67, 68, 546, 547

IP4_ANY = ipaddress.IPv4Address(0)
IP6_ANY = ipaddress.IPv6Address(0)


def _mac(raw: bytes) -> Mac:
    return Mac(":".join(f"{b:02x}" for b in raw))


@dataclass(frozen=True)
class Parsed:
    """What the guard reads of one frame. `l3`: `arp` | `ip4` | `ip6` | `other`; `bad`: why
    it could not be parsed ("" when it could)."""

    src: Mac
    dst: Mac
    tags: int = 0
    l3: str = "other"
    bad: str = ""
    # ARP
    op: int = 0
    sha: Mac | None = None
    spa: ipaddress.IPv4Address | None = None
    tpa: ipaddress.IPv4Address | None = None
    # IPv4 / IPv6
    ip_src: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    ip_dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    proto: int = -1  # the upper layer (-1: a later fragment, no upper-layer header)
    sport: int = -1
    dport: int = -1
    icmp6: int = -1  # ICMPv6 type
    target: ipaddress.IPv6Address | None = None  # NS/NA target
    lla: tuple[tuple[int, Mac], ...] = field(default_factory=tuple)  # NDP link-layer options (type, MAC)
    l3_offset: int = 14  # where the ARP/IP header starts (after the tags)


def parse(frame: bytes) -> Parsed:
    """The guard's reading of `frame` (never raises; see module doc)."""
    if len(frame) < 14:
        return Parsed(Mac("00:00:00:00:00:00"), Mac("00:00:00:00:00:00"), bad="Ethernet header cut short")
    dst, src = _mac(frame[0:6]), _mac(frame[6:12])
    off, ethertype, tags = 12, struct.unpack_from("!H", frame, 12)[0], 0
    while ethertype in VLAN_TYPES:
        if tags == MAX_TAGS:
            return Parsed(src, dst, tags, bad=f"more than {MAX_TAGS} VLAN tags")
        if len(frame) < off + 6:
            return Parsed(src, dst, tags, bad="VLAN tag cut short")
        off += 4
        tags += 1
        ethertype = struct.unpack_from("!H", frame, off)[0]
    off += 2
    base = Parsed(src, dst, tags, l3_offset=off)
    body = frame[off:]
    if ethertype == ETH_ARP:
        return _arp(base, body)
    if ethertype == ETH_IP4:
        return _ip4(base, body)
    if ethertype == ETH_IP6:
        return _ip6(base, body)
    return base


def _with(p: Parsed, **kw: object) -> Parsed:
    return Parsed(**{**p.__dict__, **kw})


def _arp(p: Parsed, b: bytes) -> Parsed:
    if len(b) < 28:
        return _with(p, l3="arp", bad="ARP header cut short")
    htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", b, 0)
    if (htype, ptype, hlen, plen) != (1, ETH_IP4, 6, 4):
        return _with(p, l3="arp", bad="ARP not Ethernet/IPv4")
    return _with(
        p,
        l3="arp",
        op=op,
        sha=_mac(b[8:14]),
        spa=ipaddress.IPv4Address(b[14:18]),
        tpa=ipaddress.IPv4Address(b[24:28]),
    )


def _ip4(p: Parsed, b: bytes) -> Parsed:
    if len(b) < 20 or b[0] >> 4 != 4 or (b[0] & 15) < 5 or len(b) < (b[0] & 15) * 4:
        return _with(p, l3="ip4", bad="IPv4 header cut short or wrong")
    ihl = (b[0] & 15) * 4
    src, dst = ipaddress.IPv4Address(b[12:16]), ipaddress.IPv4Address(b[16:20])
    proto = b[9]
    if struct.unpack_from("!H", b, 6)[0] & 0x1FFF:  # a later fragment: no upper-layer header
        return _with(p, l3="ip4", ip_src=src, ip_dst=dst, proto=-1)
    if proto == IPPROTO_UDP:
        if len(b) < ihl + 8:
            return _with(p, l3="ip4", ip_src=src, ip_dst=dst, proto=proto, bad="UDP header cut short")
        sport, dport = struct.unpack_from("!HH", b, ihl)
        return _with(p, l3="ip4", ip_src=src, ip_dst=dst, proto=proto, sport=sport, dport=dport)
    return _with(p, l3="ip4", ip_src=src, ip_dst=dst, proto=proto)


def _ip6(p: Parsed, b: bytes) -> Parsed:
    if len(b) < 40 or b[0] >> 4 != 6:
        return _with(p, l3="ip6", bad="IPv6 header cut short or wrong")
    end = 40 + struct.unpack_from("!H", b, 4)[0]
    if len(b) < end:
        return _with(p, l3="ip6", bad="IPv6 payload cut short")
    b = b[:end]  # Ethernet padding is no option
    src, dst = ipaddress.IPv6Address(b[8:24]), ipaddress.IPv6Address(b[24:40])
    q = _with(p, l3="ip6", ip_src=src, ip_dst=dst)
    nh, off = b[6], 40
    for _ in range(MAX_EXT + 1):
        if nh in EXT_HEADERS:
            if len(b) < off + 8:
                return _with(q, bad="IPv6 extension header cut short")
            nh, off = b[off], off + (b[off + 1] + 1) * 8
        elif nh == EXT_FRAGMENT:
            if len(b) < off + 8:
                return _with(q, bad="IPv6 fragment header cut short")
            if struct.unpack_from("!H", b, off + 2)[0] & 0xFFF8:  # a later fragment
                return _with(q, proto=-1)
            nh, off = b[off], off + 8
        else:
            return _l4_6(q, b, nh, off)
    return _with(q, bad=f"more than {MAX_EXT} IPv6 extension headers")


def _l4_6(q: Parsed, b: bytes, nh: int, off: int) -> Parsed:
    if nh == IPPROTO_UDP:
        if len(b) < off + 8:
            return _with(q, proto=nh, bad="UDP header cut short")
        sport, dport = struct.unpack_from("!HH", b, off)
        return _with(q, proto=nh, sport=sport, dport=dport)
    if nh != IPPROTO_ICMP6:
        return _with(q, proto=nh)
    if len(b) < off + 4:
        return _with(q, proto=nh, bad="ICMPv6 header cut short")
    typ = b[off]
    if typ not in (ND_NS, ND_NA):
        return _with(q, proto=nh, icmp6=typ)
    if len(b) < off + 24:
        return _with(q, proto=nh, icmp6=typ, bad="NS/NA cut short")
    target = ipaddress.IPv6Address(b[off + 8 : off + 24])
    lla: list[tuple[int, Mac]] = []
    o = off + 24
    for _ in range(MAX_OPTS):
        if o == len(b):
            return _with(q, proto=nh, icmp6=typ, target=target, lla=tuple(lla))
        if len(b) < o + 2 or b[o + 1] == 0 or len(b) < o + b[o + 1] * 8:
            return _with(q, proto=nh, icmp6=typ, target=target, bad="NDP option cut short or of length 0")
        if b[o] in (OPT_SLLA, OPT_TLLA):
            if b[o + 1] != 1:
                return _with(q, proto=nh, icmp6=typ, target=target, bad="NDP link-layer option not 8 bytes")
            lla.append((b[o], _mac(b[o + 2 : o + 8])))
        o += b[o + 1] * 8
    if o == len(b):
        return _with(q, proto=nh, icmp6=typ, target=target, lla=tuple(lla))
    return _with(q, proto=nh, icmp6=typ, target=target, bad=f"more than {MAX_OPTS} NDP options")
