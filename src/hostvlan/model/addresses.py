"""The IP addresses a vNIC may use, as the guard enforces them (issue 13's contract).

A vNIC registered with addresses is *guarded*: what it sends is checked against them
(ARP, IPv4/IPv6 sources, NS/NA, RA/DHCP-server roles). A vNIC without addresses keeps the
paper's MAC-only behaviour (*unguarded*). `nets` are host addresses (/32, /128) or prefixes
an operator allows; `shared` are the nets registered `--shared` (a VRRP VIP that several
MACs of one LNID may hold; the host never answers ARP/ND for them). A vNIC's IPv6
link-local address derived from its MAC (EUI-64) is always its own, registered or not.

This module holds the types, the pure helpers and the checks of one address
(`parse_net`: no multicast/broadcast/loopback/unspecified); the checks across the data
center (one owner per address, shared only among MACs sharing an LNID) live with
`model.datacenter`. `addrs_text` is the compact form the store and the feed carry.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field

from hostvlan.model.ids import InvalidValue, Mac, mac_to_int

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


# ----- operator input ------------------------------------------------------------------------
# The form of an address the API takes, as a regular expression (no anchors, no look-around):
# a dotted-quad IPv4 address or hex-and-colons IPv6 one, optionally with a prefix length.
# It states the syntax only: `parse_net` decides the rest (host bits, multicast, …).
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
ADDRESS_PATTERN = (
    f"(?:{_OCTET}(?:\\.{_OCTET}){{3}}(?:/(?:3[0-2]|[12]?[0-9]))?"
    "|[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)"
)


class AddressError(InvalidValue):
    """An address given by an operator that no vNIC may hold (the message says why)."""


_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def parse_net(text: object) -> IPNet:
    """One address a vNIC may hold, as the operator wrote it: `10.0.0.5`, `fd00::5`, or a
    prefix `10.0.1.0/24` (host bits must be zero). Refused: anything not an address,
    multicast, broadcast, loopback, unspecified, and the prefix /0 (use no addresses:
    a vNIC without addresses is unguarded)."""
    if not isinstance(text, str) or not text.strip():
        raise AddressError(f"an address must be a string like 10.0.0.5, fd00::5 or 10.0.1.0/24, got {text!r}")
    s = text.strip()
    if "%" in s:
        raise AddressError(f"{s!r} has a zone (%…): give the address alone")
    try:
        net: IPNet = ipaddress.ip_network(s, strict=True)
    except ValueError as exc:
        raise AddressError(f"{s!r} is not an IPv4/IPv6 address or prefix ({exc})") from None
    if net.prefixlen == 0:
        raise AddressError(f"{s!r} is every address; register none to leave the vNIC unguarded")
    first = net.network_address
    what = None
    if first.is_multicast or net.broadcast_address.is_multicast:
        what = "a multicast"
    elif isinstance(first, ipaddress.IPv4Address) and _LIMITED_BROADCAST in net:
        what = "the broadcast"
    elif first.is_loopback or net.broadcast_address.is_loopback:
        what = "a loopback"
    elif first.is_unspecified and net.num_addresses == 1:
        what = "the unspecified"
    elif first.is_unspecified:
        what = "a prefix holding the unspecified"
    if what is not None:
        raise AddressError(f"{s!r} is {what} address and cannot be a vNIC's")
    return net


def net_text(net: IPNet) -> str:
    """A net as the control plane writes it: a host address bare, a prefix with its length."""
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


ROUTER_TOKEN = "+router"
DHCP_TOKEN = "+dhcp_server"
SHARED_MARK = "~"


def addrs_text(addrs: Addrs) -> str:
    """The compact text of `addrs` the store and the feed carry (one string per MAC):
    space-separated nets in order (IPv4 first), a shared one prefixed `~`, then the roles
    `+router` and `+dhcp_server`. "" is unguarded."""
    words = [
        (SHARED_MARK if n in addrs.shared else "") + net_text(n)
        for n in sorted(addrs.nets, key=lambda n: (n.version, n.network_address, n.prefixlen))
    ]
    if addrs.router:
        words.append(ROUTER_TOKEN)
    if addrs.dhcp_server:
        words.append(DHCP_TOKEN)
    return " ".join(words)


def parse_addrs_text(text: str) -> Addrs:
    """The inverse of `addrs_text` (AddressError on a word it cannot read)."""
    if not text:
        return UNGUARDED
    nets: set[IPNet] = set()
    shared: set[IPNet] = set()
    router = dhcp = False
    for word in text.split():
        if word == ROUTER_TOKEN:
            router = True
        elif word == DHCP_TOKEN:
            dhcp = True
        else:
            is_shared = word.startswith(SHARED_MARK)
            try:
                net = ipaddress.ip_network(word[1:] if is_shared else word, strict=True)
            except ValueError:
                raise AddressError(f"unreadable address {word!r}") from None
            nets.add(net)
            if is_shared:
                shared.add(net)
    return Addrs(frozenset(nets), frozenset(shared), router, dhcp)


NetKey = tuple[int, int, int]
"""A net as an index key: (IP version, first address as an integer, prefix length)."""


def net_key(net: IPNet) -> NetKey:
    return (net.version, int(net.network_address), net.prefixlen)


def text_keys(text: str) -> list[tuple[NetKey, bool]]:
    """The nets of an `addrs_text` as index keys, each with whether it is shared (no objects kept)."""
    out = []
    for word in text.split():
        if word[0] == "+":
            continue
        is_shared = word[0] == SHARED_MARK
        out.append((net_key(ipaddress.ip_network(word[1:] if is_shared else word)), is_shared))
    return out


def keys_overlap(a: NetKey, b: NetKey) -> bool:
    """Whether two nets (as keys) share an address."""
    if a[0] != b[0]:
        return False
    bits = 32 if a[0] == 4 else 128
    shift = bits - min(a[2], b[2])
    return (a[1] >> shift) == (b[1] >> shift)


def key_text(key: NetKey) -> str:
    addr: IPAddr = ipaddress.IPv4Address(key[1]) if key[0] == 4 else ipaddress.IPv6Address(key[1])
    return str(addr) if key[2] == addr.max_prefixlen else f"{addr}/{key[2]}"


def text_json(text: str) -> dict[str, object]:
    """What `show`, `trace` and the API say of an `addrs_text`: the nets as written, the
    shared ones, the roles, and whether the vNIC is guarded."""
    nets: list[str] = []
    shared: list[str] = []
    for word in text.split():
        if word[0] == "+":
            continue
        if word[0] == SHARED_MARK:
            word = word[1:]
            shared.append(word)
        nets.append(word)
    words = text.split()
    return {
        "addresses": nets,
        "shared": shared,
        "router": ROUTER_TOKEN in words,
        "dhcp_server": DHCP_TOKEN in words,
        "guarded": bool(nets),
    }


# ----- the light form the control plane registers at scale -----------------------------------
@dataclass(frozen=True)
class AddrSet:
    """A vNIC's addresses as the data center keeps them: their `addrs_text` and index keys
    (each with whether it is shared). Building one costs a few microseconds per address;
    `Addrs` objects cost ten times that (and 600 bytes each), too much for a million vNICs."""

    text: str
    keys: tuple[tuple[NetKey, bool], ...]


def addr_set(addrs: Addrs) -> AddrSet:
    return AddrSet(addrs_text(addrs), tuple((net_key(n), n in addrs.shared) for n in addrs.nets))


# socket.inet_pton is a pure function (no I/O): the C parser of both forms
_pton = socket.inet_pton
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6


def _v4_host(s: str) -> int | None:
    """A dotted quad without leading zeros as an integer; None if `s` is not one (the C
    parser: a few hundred nanoseconds, where a regular expression took microseconds)."""
    try:
        return int.from_bytes(_pton(_AF_INET, s), "big")
    except (OSError, ValueError):  # not a dotted quad; a NUL or a character outside ASCII
        return None


def _v6_host(s: str) -> int | None:
    """An IPv6 address in hex groups (no embedded IPv4, no zone) as an integer; None if `s`
    is not one."""
    if "." in s:  # an embedded IPv4 address: `parse_net` decides (and writes it its way)
        return None
    try:
        return int.from_bytes(_pton(_AF_INET6, s), "big")
    except (OSError, ValueError):
        return None


def parse_word(text: object) -> tuple[NetKey, str]:
    """`parse_net` of one address, as an index key and its text: the fast path of a host
    address (IPv4 dotted quad, IPv6) with the same refusals; prefixes take `parse_net`."""
    if isinstance(text, str) and "/" not in text:
        s = text.strip()
        if ":" in s:  # never a dotted quad: one parser tried, not two
            v6 = _v6_host(s)
            if v6 is not None and v6 > 1 and v6 >> 120 != 0xFF:
                return (6, v6, 128), s.lower()
        else:
            v4 = _v4_host(s)
            if v4 is not None:
                top = v4 >> 24
                if v4 == 0 or top == 127 or 224 <= top <= 239 or v4 == 0xFFFFFFFF:
                    parse_net(s)  # raises with the reason
                return (4, v4, 32), s
    net = parse_net(text)
    return net_key(net), net_text(net)


def parse_ips(words: list[object], router: bool = False, dhcp_server: bool = False) -> AddrSet:
    """Operator input (`reg --ip …`) as an AddrSet; AddressError names the index (`ips[1]`)
    in `index` of the error (see `IpsError`)."""
    got: dict[NetKey, str] = {}
    for i, word in enumerate(words):
        try:
            key, text = parse_word(word)
        except AddressError as exc:
            raise IpsError(i, str(exc)) from None
        got[key] = text
    order = sorted(got)
    out = [got[k] for k in order]
    if router:
        out.append(ROUTER_TOKEN)
    if dhcp_server:
        out.append(DHCP_TOKEN)
    return AddrSet(" ".join(out), tuple((k, False) for k in order))


class IpsError(AddressError):
    """An address of a list refused: `index` says which."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
