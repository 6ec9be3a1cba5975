"""The two verdicts of the paper's MAC-only tenant filter (SPEC §3), each with its reason,
and the closed set of drop reason codes.

Read through `hostvlan.model.verdict`, which adds the address guard's `send_frame`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hostvlan.model.ids import GLOBAL, Mac, PortName, format_lnids
from hostvlan.model.ports import FilterState

# Why a frame is dropped, as a closed set of codes: every back end counts its drops per
# (port, code), metrics export them as `reason`, and the address guard adds its own.
FORGED_SOURCE = "forged_source"  # send: the source MAC is not the one bound to the port
UNKNOWN_SOURCE = "unknown_source"  # receive: the source MAC is not in the host's table
NO_SHARED_LNID = "no_shared_lnid"  # receive: source and output port share no LNID
UNBOUND_PORT = "unbound_port"  # send or receive: the port has no binding (fail closed)
ARP_SPOOF = "arp_spoof"  # guard: ARP sender hardware/protocol address not the port's
ND_SPOOF = "nd_spoof"  # guard: NS/NA link-layer option or NA target not the port's
IP_SPOOF = "ip_spoof"  # guard: IPv4/IPv6 source address not the port's
RA_GUARD = "ra_guard"  # guard: router advertisement/redirect from a vNIC not registered as a router
DHCP_GUARD = "dhcp_guard"  # guard: DHCP/DHCPv6 server message from a vNIC not registered as one
MALFORMED = "malformed"  # guard: a guarded port's ARP/IP/ICMPv6 headers could not be parsed
DROP_REASONS = (
    FORGED_SOURCE,
    UNKNOWN_SOURCE,
    NO_SHARED_LNID,
    UNBOUND_PORT,
    ARP_SPOOF,
    ND_SPOOF,
    IP_SPOOF,
    RA_GUARD,
    DHCP_GUARD,
    MALFORMED,
)


@dataclass(frozen=True)
class Verdict:
    """`reason` is for people; `code` (one of DROP_REASONS) says why a drop is a drop ("" when allowed)."""

    allow: bool
    reason: str
    code: str = ""

    def __bool__(self) -> bool:  # pragma: no cover - convenience only
        return self.allow


def receive(state: FilterState, src: Mac, out_port: PortName) -> Verdict:
    """May a frame with source MAC `src` leave the switch through `out_port`?

    Applies to unicast and to every copy of a flood; the destination's LNIDs are the
    output port's, never a lookup of the destination MAC.
    """
    port_lnids = state.port_lnids(out_port)
    if port_lnids is None:
        return Verdict(False, f"port {out_port} has no binding (fail closed)", UNBOUND_PORT)
    src_lnids = state.entries.get(src)
    if src_lnids is None:
        return Verdict(False, f"source {src} is not in this host's LNID table", UNKNOWN_SOURCE)
    if GLOBAL in src_lnids:
        return Verdict(True, f"source {src} is global")
    if GLOBAL in port_lnids:
        return Verdict(True, f"port {out_port} is global")
    shared = src_lnids & port_lnids
    if shared:
        return Verdict(True, f"shared LNID {format_lnids(shared)}")
    return Verdict(
        False,
        f"no shared LNID (source {src} in {format_lnids(src_lnids)}, port {out_port} in {format_lnids(port_lnids)})",
        NO_SHARED_LNID,
    )


def send(state: FilterState, in_port: PortName, src: Mac) -> Verdict:
    """May a frame with source MAC `src` enter the switch from `in_port`? (anti-spoofing)"""
    binding = state.bindings.get(in_port)
    if binding is None:
        return Verdict(False, f"port {in_port} has no binding (fail closed)", UNBOUND_PORT)
    if binding.uplink:
        return Verdict(True, f"port {in_port} is an uplink (send check exempt)")
    if binding.mac != src:
        return Verdict(False, f"forged source {src}: port {in_port} is bound to {binding.mac}", FORGED_SOURCE)
    return Verdict(True, f"source {src} is the MAC bound to port {in_port}")
