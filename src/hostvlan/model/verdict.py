"""The two verdicts of the tenant filter (SPEC §3), each with its reason.

This module is the single source of truth for the semantics: every back end is tested
against `receive` and `send`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hostvlan.model.ids import GLOBAL, Mac, PortName, format_lnids
from hostvlan.model.ports import FilterState


@dataclass(frozen=True)
class Verdict:
    allow: bool
    reason: str

    def __bool__(self) -> bool:  # pragma: no cover - convenience only
        return self.allow


def receive(state: FilterState, src: Mac, out_port: PortName) -> Verdict:
    """May a frame with source MAC `src` leave the switch through `out_port`?

    Applies to unicast and to every copy of a flood; the destination's LNIDs are the
    output port's, never a lookup of the destination MAC.
    """
    port_lnids = state.port_lnids(out_port)
    if port_lnids is None:
        return Verdict(False, f"port {out_port} has no binding (fail closed)")
    src_lnids = state.entries.get(src)
    if src_lnids is None:
        return Verdict(False, f"source {src} is not in this host's LNID table")
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
    )


def send(state: FilterState, in_port: PortName, src: Mac) -> Verdict:
    """May a frame with source MAC `src` enter the switch from `in_port`? (anti-spoofing)"""
    binding = state.bindings.get(in_port)
    if binding is None:
        return Verdict(False, f"port {in_port} has no binding (fail closed)")
    if binding.uplink:
        return Verdict(True, f"port {in_port} is an uplink (send check exempt)")
    if binding.mac != src:
        return Verdict(False, f"forged source {src}: port {in_port} is bound to {binding.mac}")
    return Verdict(True, f"source {src} is the MAC bound to port {in_port}")
