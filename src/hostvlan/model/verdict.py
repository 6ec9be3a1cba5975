"""The verdicts of the tenant filter, each with its reason (SPEC §3; issue 13's guard).

This module is the single source of truth for the semantics: every back end is tested
against `receive` and `send` (the paper's MAC-only filter, `model.macfilter`) and
`send_frame` (the whole send check of one frame, with the address guard, `model.guard`).
"""

from __future__ import annotations

from hostvlan.model import guard
from hostvlan.model.ids import PortName
from hostvlan.model.macfilter import (
    ARP_SPOOF,
    DHCP_GUARD,
    DROP_REASONS,
    FORGED_SOURCE,
    IP_SPOOF,
    MALFORMED,
    ND_SPOOF,
    NO_SHARED_LNID,
    RA_GUARD,
    UNBOUND_PORT,
    UNKNOWN_SOURCE,
    Verdict,
    receive,
    send,
)
from hostvlan.model.ports import FilterState


def send_frame(state: FilterState, in_port: PortName, frame: bytes) -> Verdict:
    """The whole send check of one frame: `send` plus the address guard and the host's ARP/ND
    answers (`hostvlan.model.guard.send_frame`, where the rules are written)."""
    return guard.send_frame(state, in_port, frame)


__all__ = [
    "ARP_SPOOF",
    "DHCP_GUARD",
    "DROP_REASONS",
    "FORGED_SOURCE",
    "IP_SPOOF",
    "MALFORMED",
    "ND_SPOOF",
    "NO_SHARED_LNID",
    "RA_GUARD",
    "UNBOUND_PORT",
    "UNKNOWN_SOURCE",
    "Verdict",
    "receive",
    "send",
    "send_frame",
]
