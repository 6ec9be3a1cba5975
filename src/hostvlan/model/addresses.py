"""The IP addresses a vNIC may use, as the guard enforces them (issue 13's contract).

A vNIC registered with addresses is *guarded*: what it sends is checked against them
(ARP, IPv4/IPv6 sources, NS/NA, RA/DHCP-server roles). A vNIC without addresses keeps the
paper's MAC-only behaviour (*unguarded*). `nets` are host addresses (/32, /128) or prefixes
an operator allows; `shared` are the nets registered `--shared` (a VRRP VIP that several
MACs of one LNID may hold; the host never answers ARP/ND for them). A vNIC's IPv6
link-local address derived from its MAC (EUI-64) is always its own, registered or not.

This module holds the types and the pure helpers; validation of operator input (unique
owner, shared only within one LNID, no multicast/loopback) lives with the data center.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hostvlan.model.ids import Mac, mac_to_int

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Addrs:
    """One vNIC's addresses and roles. An empty `nets` means unguarded (MAC-only)."""

    nets: frozenset[IPNet] = field(default_factory=frozenset)
    shared: frozenset[IPNet] = field(default_factory=frozenset)  # subset of nets
    router: bool = False  # may send router advertisements and redirects
    dhcp_server: bool = False  # may send DHCP / DHCPv6 server messages

    @property
    def guarded(self) -> bool:
        return bool(self.nets)

    def holds(self, addr: IPAddr, mac: Mac) -> bool:
        """Whether a vNIC with MAC `mac` and these addresses may use `addr` as its own."""
        if isinstance(addr, ipaddress.IPv6Address) and addr == link_local(mac):
            return True
        return any(addr.version == net.version and addr in net for net in self.nets)


UNGUARDED = Addrs()


def link_local(mac: Mac) -> ipaddress.IPv6Address:
    """The IPv6 link-local address a NIC with `mac` derives by modified EUI-64 (RFC 4291 §2.5.1)."""
    value = mac_to_int(mac)
    hi, lo = value >> 24, value & 0xFFFFFF
    iid = ((hi ^ 0x020000) << 40) | (0xFFFE << 24) | lo
    return ipaddress.IPv6Address((0xFE80 << 112) | iid)
