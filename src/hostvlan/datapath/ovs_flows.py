"""The OpenFlow vocabulary hostvlan's flows are written in (Open vSwitch back end).

Shared by `ovs` (the facts), `ovs_guard` (the address guard) and `ovs_drops` (the
counted drops): hostvlan's cookie range, the table numbers, the `Flow` line builder and
the `note` action that carries a flow's key. No behaviour: names only.
"""

from __future__ import annotations

from typing import NamedTuple

COOKIE_BASE = 0x4856 << 48
COOKIE_MASK = 0xFFFF << 48
ALL = (1 << 64) - 1

# tables
T_CLASSIFY, T_SEND, T_KNOWN, T_FORWARD, T_RECEIVE, T_OUTPUT, T_UPLINKS = 0, 1, 2, 3, 4, 5, 6
T_META = 200
T_GUARD = 10  # the address guard's tables 10-13 (`ovs_guard`), between the send check and `known`


def cookie(kind: int, pid: int = 0) -> int:
    """A flow's cookie: hostvlan's base, the kind in bits 32-47, the port's pid below."""
    return COOKIE_BASE | kind << 32 | pid


class Flow(NamedTuple):
    table: int
    priority: int
    cookie: int
    match: str
    actions: str

    def add(self) -> str:
        m = f",{self.match}" if self.match else ""
        return f"add table={self.table},priority={self.priority},cookie={self.cookie:#x}{m},actions={self.actions}"

    def delete(self) -> str:
        m = f",{self.match}" if self.match else ""
        return f"delete_strict table={self.table},priority={self.priority},cookie={self.cookie:#x}/{ALL:#x}{m}"


def note(*fields: str) -> str:
    """A no-op `note` action holding `fields` (NUL-separated: no MAC or ifname contains NUL)."""
    return "note:" + "\0".join(fields).encode().hex(".")
