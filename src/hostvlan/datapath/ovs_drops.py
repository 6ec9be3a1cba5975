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

Drop events: the flows that drop a whole frame (tables 0, 1, 2: forged, unbound, unknown)
also send it to the controller through hostvlan's meter (`METER`: at most `EVENTS_PER_S` a
second, the excess dropped in the datapath; the flow's n_packets still counts every frame),
and `Sampler` reads the packet-ins over the bridge's management socket (`kernel.ofmonitor`):
the cookie says the reason and the port's pid. The receive filter's drops (table 4) are copies
of a frame whose other copies go on: a meter there would cut the rest of the flood's actions
and a controller action would send the whole flood's datapath flow to the slow path, so they
are counted, never sampled. No allowed frame meets a meter or a controller action.
May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Protocol

from hostvlan.datapath.base import DropEvent, PortCounters
from hostvlan.datapath.kernel.ofmonitor import PacketIns
from hostvlan.datapath.kernel.ovs_proc import OvsTools
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

K_PORT = 0x80  # fact `ports`: the send check's per-port drop (counted tx)
K_PORT_RX = 0x81  # the receive filter's per-port drop (counted rx)
K_UNBOUND_TX = 0x82
K_UNKNOWN_SRC = 0x83
K_UNKNOWN_IN = 0x86  # fact `uplinks`: a source not in the table, from this uplink (counted rx)

METER = 0x4856  # hostvlan's OpenFlow meter: the drop events' rate limit
EVENTS_PER_S = 64
SAMPLE = "controller(max_len=64)"  # after a drop flow's own actions (its first: f"meter:{METER}")
REASONS = {  # the sampled drop flows' reasons
    K_PORT: FORGED_SOURCE,
    K_UNKNOWN_IN: UNKNOWN_SOURCE,
    K_UNBOUND_TX: UNBOUND_PORT,
    K_UNKNOWN_SRC: UNKNOWN_SOURCE,
}

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


def sampled(actions: str = "") -> str:
    """A drop flow's actions: its own (a note), then a rate-limited copy to the controller."""
    return ",".join(a for a in (f"meter:{METER}", actions, SAMPLE) if a)


def ensure_meter(tools: OvsTools, target: str) -> None:
    """hostvlan's meter on the bridge (before any flow refers to it): added, or left as it is."""
    if f"meter={METER} " not in tools.ofctl("-O", "OpenFlow13", "dump-meters", target, f"meter={METER}"):
        tools.ofctl("-O", "OpenFlow13", "add-meter", target, f"meter={METER},pktps,band=type=drop,rate={EVENTS_PER_S}")


def remove_meter(tools: OvsTools, target: str) -> None:
    """After hostvlan's flows are gone (deleting a meter deletes the flows that use it)."""
    tools.ofctl("-O", "OpenFlow13", "del-meters", target, f"meter={METER}")


class Sampler:
    """The drop events of one bridge: packet-ins of hostvlan's drop flows, numbered."""

    def __init__(self, path: str) -> None:
        self._ins = PacketIns(path)
        self._events: deque[DropEvent] = deque(maxlen=256)
        self._seq = 0

    def read(self, after: int, pids: Mapping[PortName, int]) -> list[DropEvent]:
        names = {pid: str(p) for p, pid in pids.items()}
        now = time.time()
        for cookie, data in self._ins.poll():
            kind, pid = (cookie >> 32) & 0xFFFF, cookie & 0xFFFFFFFF
            if kind not in REASONS or len(data) < 14:
                continue
            port = UNBOUND if kind in (K_UNBOUND_TX, K_UNKNOWN_SRC) else names.get(pid, f"pid {pid}")
            self._seq += 1
            dst, src, ethertype = Mac(data[0:6].hex(":")), Mac(data[6:12].hex(":")), int.from_bytes(data[12:14])
            self._events.append(DropEvent(self._seq, now, port, src, dst, ethertype, REASONS[kind]))
        return [e for e in self._events if e.seq > after]

    def close(self) -> None:
        self._ins.close()
