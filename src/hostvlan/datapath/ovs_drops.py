"""The OVS back end's drop counts per (port, reason), from the n_packets of its counted drop flows.

The drop flows (`ovs.py` tables 0, 1, 2, 4) carry a cookie of the port group 0x80-0x87 whose
kind says what they drop and whose low bits name the port's pid; one `dump-flows` of the group
(with statistics) holds every count and, in the `ports` facts' notes, each pid's name:

  K_PORT        table 1, reg1=<pid> -> drop        forged_source at that port (its way in)
  K_UNKNOWN_IN  table 2, reg1=<uplink> -> drop     unknown_source at that uplink (VM ports'
                                                   frames carry their own, known MAC by then)
  K_PORT_RX     table 4, reg0=<pid> -> drop        no_shared_lnid at that port (a copy's way out)
  K_UNBOUND_TX  table 0 default                    unbound_port, as "(unbound)"
  K_UNKNOWN_SRC table 2 default                    unknown_source, as "(unbound)" (none once every
                                                   uplink has its flow)
May import `hostvlan.datapath.base` and `hostvlan.model` only.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from hostvlan.datapath.base import PortCounters
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

K_PORT = 0x80  # fact `ports`: the send check's per-port drop (counted tx)
K_PORT_RX = 0x81  # the receive filter's per-port drop (counted rx)
K_UNBOUND_TX = 0x82
K_UNKNOWN_SRC = 0x83
K_UNKNOWN_IN = 0x86  # fact `uplinks`: a source not in the table, from this uplink (counted rx)

UNBOUND = "(unbound)"  # counters(): frames from ports without a binding
UNKNOWN = "(unknown)"  # counters(): frames whose source MAC is not in the host's table


class Counted(Protocol):
    @property
    def kind(self) -> int: ...
    @property
    def pid(self) -> int: ...
    @property
    def packets(self) -> int: ...
    @property
    def fields(self) -> list[str]: ...


def tally(flows: Iterable[Counted], with_zeros: bool) -> dict[tuple[str, str], int]:
    """Drops per (port, reason) of the dumped port group (see module doc)."""
    out: dict[tuple[str, str], int] = {}
    names: dict[int, str] = {}
    by_pid: list[tuple[int, str, int]] = []
    for f in flows:
        if f.kind == K_PORT and f.fields[:1] == ["p"]:
            names[f.pid] = f.fields[1]
            out[(f.fields[1], FORGED_SOURCE)] = f.packets
        elif f.kind == K_PORT_RX:
            by_pid.append((f.pid, NO_SHARED_LNID, f.packets))
        elif f.kind == K_UNKNOWN_IN:
            by_pid.append((f.pid, UNKNOWN_SOURCE, f.packets))
        elif f.kind == K_UNBOUND_TX:
            out[(UNBOUND, UNBOUND_PORT)] = f.packets
        elif f.kind == K_UNKNOWN_SRC and (f.packets or with_zeros):
            out[(UNBOUND, UNKNOWN_SOURCE)] = f.packets
    for p, reason, packets in by_pid:
        if p in names:
            out[(names[p], reason)] = packets
    return out if with_zeros else {k: n for k, n in out.items() if n}


def as_counters(drops: dict[tuple[str, str], int]) -> dict[str, PortCounters]:
    """The older per-port view (`TenantFilter.counters`): tx = forged and unbound, rx = no shared
    LNID per port, unknown sources in one bucket "(unknown)"."""
    rx: dict[str, int] = {}
    tx: dict[str, int] = {}
    for (port, reason), n in drops.items():
        if reason == FORGED_SOURCE or (reason == UNBOUND_PORT and port == UNBOUND):
            tx[port] = tx.get(port, 0) + n
        elif reason == UNKNOWN_SOURCE:
            rx[UNKNOWN] = rx.get(UNKNOWN, 0) + n
        else:
            rx[port] = rx.get(port, 0) + n
    return {p: PortCounters(rx.get(p, 0), tx.get(p, 0)) for p in sorted(set(rx) | set(tx))}
