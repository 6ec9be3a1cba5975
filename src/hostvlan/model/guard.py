"""The address guard's verdict on a frame a vNIC sends, and the host's ARP/ND answers (issue 13).

`send_frame(state, in_port, frame)` (re-exported as `verdict.send_frame`) is the one
function the back ends, the tests and `explain` agree on. In order:

1. the send check of the paper (`verdict.send`: source MAC = the port's bound MAC; uplinks exempt);
2. on a *guarded* port (its vNIC has addresses, `Addrs.guarded`), the guard:
   - a frame whose Ethernet/VLAN/ARP/IP/ICMPv6/UDP headers cannot be parsed (`frames.parse`) -> `malformed`
   - ARP: sender hardware address = the bound MAC, sender protocol address held
     (0.0.0.0 allowed: an RFC 5227 probe)                                            -> else `arp_spoof`
   - IPv4 source held (0.0.0.0 only for a DHCP client message, UDP 68 -> 67),
     IPv6 source held or the EUI-64 link-local (:: only for DAD (NS) and MLD reports) -> else `ip_spoof`
   - RA and redirect unless registered `router`                                       -> `ra_guard`
   - DHCP (UDP source port 67) / DHCPv6 (source port 547) server messages unless
     registered `dhcp_server`                                                         -> `dhcp_guard`
   - NS/NA: every link-layer address option = the bound MAC; NA target held           -> else `nd_spoof`
   frames with one or two VLAN tags are checked on what they carry, more tags are `malformed`;
3. the host's answers, on every VM port (guarded or not): an ARP request (not a gratuitous
   one) or an NS (source not ::) for a host address (/32, /128) that a vNIC other than the
   asker holds, not `shared` (a VIP: its active holder answers), is
   - answered on the host (`answer`: the reply goes straight back out of the asking port)
     when the holder's frames may reach the asking port (`verdict.receive`: a shared LNID),
   - dropped (`no_shared_lnid`) when they may not,
   and a request for any other address goes out as today.

Pure (no I/O). Imports `hostvlan.model` only.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from hostvlan.model import frames as fr
from hostvlan.model.addresses import Addrs, IPAddr
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.macfilter import (
    ARP_SPOOF,
    DHCP_GUARD,
    IP_SPOOF,
    MALFORMED,
    ND_SPOOF,
    NO_SHARED_LNID,
    RA_GUARD,
    Verdict,
    receive,
    send,
)
from hostvlan.model.ports import FilterState

DAD_MLD = (fr.ND_NS, 131, 143)  # ICMPv6 types a host may send from :: (DAD, MLD reports)
ND_ROUTER, ND_SOLICITED, ND_OVERRIDE = 0x80, 0x40, 0x20


@dataclass(frozen=True)
class Answer:
    """What the host does with a request: `reply` (the frame sent back out of the asking port)
    or `holder` without reply (dropped: no shared LNID); neither: goes out as today."""

    holder: Mac | None = None
    reply: bytes | None = None


def _host_addr(addr: IPAddr, addrs: Addrs) -> bool:
    """`addr` is one of the registered host addresses (/32, /128) of `addrs`, not a shared one."""
    full = addr.max_prefixlen
    return any(n.prefixlen == full and n.network_address == addr for n in addrs.nets if n not in addrs.shared)


def holder_of(state: FilterState, addr: IPAddr, asker: Mac) -> Mac | None:
    """The vNIC other than `asker` the host answers for `addr` (the smallest MAC should two hold it)."""
    held = [m for m, a in state.addresses.items() if m != asker and m in state.entries and _host_addr(addr, a)]
    return min(held) if held else None


def _guard(p: fr.Parsed, mac: Mac, addrs: Addrs) -> Verdict | None:
    """The guard's drop for a frame of a guarded vNIC `mac`, or None (see module doc)."""
    if p.bad:
        return Verdict(False, f"cannot parse the frame: {p.bad}", MALFORMED)
    if p.l3 == "arp":
        if p.sha != mac:
            return Verdict(False, f"ARP sender hardware address {p.sha} is not the bound {mac}", ARP_SPOOF)
        assert p.spa is not None
        if p.spa != fr.IP4_ANY and not addrs.holds(p.spa, mac):
            return Verdict(False, f"ARP sender address {p.spa} is not one of {mac}'s", ARP_SPOOF)
        return None
    if p.l3 == "ip4":
        assert p.ip_src is not None
        dhcp_client = p.proto == fr.IPPROTO_UDP and (p.sport, p.dport) == (fr.DHCP4_CLIENT, fr.DHCP4_SERVER)
        if not (p.ip_src == fr.IP4_ANY and dhcp_client) and not addrs.holds(p.ip_src, mac):
            return Verdict(False, f"IPv4 source {p.ip_src} is not one of {mac}'s", IP_SPOOF)
        if p.proto == fr.IPPROTO_UDP and p.sport == fr.DHCP4_SERVER and not addrs.dhcp_server:
            return Verdict(False, f"DHCP server message from {mac}, not registered as a DHCP server", DHCP_GUARD)
        return None
    if p.l3 == "ip6":
        assert p.ip_src is not None
        dad_mld = p.proto == fr.IPPROTO_ICMP6 and p.icmp6 in DAD_MLD
        if not (p.ip_src == fr.IP6_ANY and dad_mld) and not addrs.holds(p.ip_src, mac):
            return Verdict(False, f"IPv6 source {p.ip_src} is not one of {mac}'s", IP_SPOOF)
        if p.proto == fr.IPPROTO_UDP and p.sport == fr.DHCP6_SERVER and not addrs.dhcp_server:
            return Verdict(False, f"DHCPv6 server message from {mac}, not registered as a DHCP server", DHCP_GUARD)
        if p.icmp6 in (fr.ND_RA, fr.ND_REDIRECT) and not addrs.router:
            what = "router advertisement" if p.icmp6 == fr.ND_RA else "redirect"
            return Verdict(False, f"{what} from {mac}, not registered as a router", RA_GUARD)
        if p.icmp6 in (fr.ND_NS, fr.ND_NA):
            for kind, lla in p.lla:
                if lla != mac:
                    name = "source" if kind == fr.OPT_SLLA else "target"
                    return Verdict(False, f"NDP {name} link-layer address {lla} is not the bound {mac}", ND_SPOOF)
            if p.icmp6 == fr.ND_NA and p.target is not None and not addrs.holds(p.target, mac):
                return Verdict(False, f"NA target {p.target} is not one of {mac}'s", ND_SPOOF)
    return None


def _request(p: fr.Parsed) -> IPAddr | None:
    """The address an ARP request or NS asks for, if the host may answer it (see module doc)."""
    if p.bad:
        return None
    if p.l3 == "arp" and p.op == 1 and p.tpa is not None and p.tpa != p.spa and p.tpa != fr.IP4_ANY:
        return p.tpa
    if p.l3 == "ip6" and p.icmp6 == fr.ND_NS and p.ip_src != fr.IP6_ANY:
        return p.target
    return None


def answer(state: FilterState, in_port: PortName, frame: bytes) -> Answer:
    """The host's answer to a request `frame` from the vNIC of `in_port` (see module doc).
    Assumes the frame passed the send check and the guard (`send_frame`)."""
    binding = state.bindings.get(in_port)
    if binding is None or binding.uplink:
        return Answer()
    p = fr.parse(frame)
    addr = _request(p)
    if addr is None:
        return Answer()
    holder = holder_of(state, addr, binding.mac)
    if holder is None:
        return Answer()
    if not receive(state, holder, in_port).allow:
        return Answer(holder)
    return Answer(holder, arp_reply(frame, p, holder) if p.l3 == "arp" else na_reply(frame, p, holder, state))


def arp_reply(frame: bytes, p: fr.Parsed, holder: Mac) -> bytes:
    """The request rewritten in place into the reply (tags and padding kept), as the host sends it."""
    o = p.l3_offset
    assert p.spa is not None and p.tpa is not None
    out = bytearray(frame)
    out[0:6], out[6:12] = frame[6:12], _raw(holder)
    out[o + 6 : o + 8] = b"\x00\x02"
    out[o + 8 : o + 14], out[o + 14 : o + 18] = _raw(holder), p.tpa.packed
    out[o + 18 : o + 24], out[o + 24 : o + 28] = frame[o + 8 : o + 14], p.spa.packed
    return bytes(out)


def na_reply(frame: bytes, p: fr.Parsed, holder: Mac, state: FilterState) -> bytes:
    """The NA the host sends for an NS: to the asker's MAC and address, solicited + override
    (+ router when the holder is registered as one), with the target link-layer option."""
    o = p.l3_offset
    assert p.target is not None and isinstance(p.ip_src, ipaddress.IPv6Address)
    router = state.addresses.get(holder, Addrs()).router
    flags = ND_SOLICITED | ND_OVERRIDE | (ND_ROUTER if router else 0)
    icmp = bytearray(struct.pack("!BBHB3x", fr.ND_NA, 0, 0, flags) + p.target.packed + b"\x02\x01" + _raw(holder))
    pseudo = p.target.packed + p.ip_src.packed + struct.pack("!I3xB", len(icmp), fr.IPPROTO_ICMP6)
    icmp[2:4] = struct.pack("!H", checksum(pseudo + bytes(icmp)))
    ip6 = struct.pack("!IHBB", 0x60000000, len(icmp), fr.IPPROTO_ICMP6, 255) + p.target.packed + p.ip_src.packed
    return frame[6:12] + _raw(holder) + frame[12:o] + ip6 + bytes(icmp)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _raw(mac: Mac) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def send_frame(state: FilterState, in_port: PortName, frame: bytes) -> Verdict:
    """May `frame`, sent by the vNIC of `in_port`, enter the switch (see module doc)? An
    answered request is allowed with a reason saying so: the host consumes it and replies."""
    p = fr.parse(frame)
    verdict = send(state, in_port, p.src)
    binding = state.bindings.get(in_port)
    if not verdict.allow or binding is None or binding.uplink:
        return verdict
    addrs = state.addresses.get(binding.mac)
    if addrs is not None and addrs.guarded:
        drop = _guard(p, binding.mac, addrs)
        if drop is not None:
            return drop
        verdict = Verdict(True, f"{verdict.reason}; its addresses are in order (guarded)")
    else:
        verdict = Verdict(True, f"{verdict.reason} (unguarded: MAC only)")
    ans = answer(state, in_port, frame)
    if ans.holder is None:
        return verdict
    asked = p.tpa if p.l3 == "arp" else p.target
    if ans.reply is None:
        why = f"request for {asked}, held by {ans.holder} which shares no LNID with {in_port}"
        return Verdict(False, why, NO_SHARED_LNID)
    return Verdict(True, f"request for {asked} answered on the host ({ans.holder}), not forwarded")
