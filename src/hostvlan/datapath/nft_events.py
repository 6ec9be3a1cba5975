"""Drop events of the nftables back ends (macvtap, the bridge's nft flavours), from NFLOG.

The tables' drop rules are preceded by log rules (`nft_table.logged`: rate-limited, on the drop
path only) whose frames the kernel sends to NFLOG group `nft_table.EVENT_GROUP`. `NftEvents`
subscribes to it on the first read (before that nothing is copied out: the kernel logs to no
one), numbers what it reads and keeps the last `KEPT` for `TenantFilter.drop_events`.

A record's prefix `hv <reason> <iif|oif>` gives the reason and which device is the port: the
input device for the rules on `meta iifname` (a macvtap's ingress, the bridge's prerouting),
the output device for those on `meta oifname` (a macvtap's or the uplink's egress, the bridge's
forward and output; the bridge port, not the bridge). The time is when the agent read it.
One socket per network namespace may hold the group: a second back end object in the same
namespace (EPERM) reads no events until the first is closed.
"""

from __future__ import annotations

import errno
import time
from collections import deque

from hostvlan.datapath.base import DatapathError, DropEvent
from hostvlan.datapath.kernel.nflog import LogRecord, NflogReader
from hostvlan.datapath.nft_table import EVENT_GROUP, EVENT_PREFIX
from hostvlan.model.ids import Mac
from hostvlan.model.verdict import DROP_REASONS

KEPT = 256  # events kept for readers (the bridge's ring has as many slots)


def _mac(raw: bytes) -> Mac:
    return Mac(":".join(f"{b:02x}" for b in raw))


class NftEvents:
    """The NFLOG reader of one back end (see module doc); create it in the host's namespace."""

    def __init__(self, group: int = EVENT_GROUP) -> None:
        self._reader = NflogReader(group)
        self._seq = 0
        self._kept: deque[DropEvent] = deque(maxlen=KEPT)
        self._busy = False  # another socket of the namespace holds the group

    def _event(self, rec: LogRecord, now: float) -> DropEvent | None:
        parts = rec.prefix.split()
        if len(parts) != 3 or parts[0] != EVENT_PREFIX or parts[1] not in DROP_REASONS:
            return None  # not one of hostvlan's log rules
        ifindex = rec.indev if parts[2] == "iif" else rec.outdev
        port = self._reader.ifname(ifindex) or f"ifindex {ifindex}"
        self._seq += 1
        return DropEvent(self._seq, now, port, _mac(rec.src), _mac(rec.dst), rec.ethertype, parts[1])

    def read(self, after: int = 0) -> list[DropEvent]:
        """Events with `seq` above `after`, oldest first (the first call subscribes)."""
        if not self._reader.bound and not self._busy:
            try:
                self._reader.bind()
            except DatapathError as exc:
                if exc.errno not in (errno.EPERM, errno.EBUSY):
                    raise
                self._busy = True
        now = time.time()
        for rec in self._reader.read():
            event = self._event(rec, now)
            if event is not None:
                self._kept.append(event)
        return [e for e in self._kept if e.seq > after]

    def close(self) -> None:
        self._reader.close()
