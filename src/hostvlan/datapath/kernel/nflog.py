"""Raw NFLOG (nfnetlink_log) reader: the frames nftables `log group N` statements copy out.

An nftables rule `... limit rate 64/second log group N prefix "<reason>"` hands each frame it
logs to the kernel's nfnetlink_log, which sends it to the one socket of the network namespace
bound to group N (NFNL_SUBSYS_ULOG, NFULNL_MSG_CONFIG with NFULNL_CFG_CMD_BIND). Nothing is
copied while no socket is bound, and a logged frame costs the kernel only on the path that
reaches the log rule (hostvlan's are on the drop path only).

What one message gives (`LogRecord`): the hook (NFULA_PACKET_HDR: ethertype, hook number), the
input and output devices (NFULA_IFINDEX_*; the bridge family gives the bridge as INDEV/OUTDEV
and the bridge port as PHYSINDEV/PHYSOUTDEV), the prefix (NFULA_PREFIX: hostvlan's reason
code), and the Ethernet header: NFULA_HWHEADER where the kernel had pulled it already (an
ingress hook; the bridge family's input side), NFULA_L2HDR (bridge family), else the first 14
bytes of NFULA_PAYLOAD (a netdev egress hook sees the frame from its MAC header on). Times
are the reader's (no NFULA_TIMESTAMP without a skb timestamp).

The socket is opened where the object is created (the caller's network namespace); `bind()`
may run later from anywhere. Reads never block (`read()` drains what is queued). A socket
whose receive buffer overflowed loses messages (ENOBUFS, counted in `lost`), never blocks the
kernel. Device names are resolved in the same namespace (SIOCGIFNAME on a socket opened with it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.kernel.nfnl import NETLINK_NETFILTER, NLMSG_ERROR, parse_attrs

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH = 1, 2, 5
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 1, 4, 5
NFULA_IFINDEX_PHYSINDEV, NFULA_IFINDEX_PHYSOUTDEV = 6, 7
NFULA_PAYLOAD, NFULA_PREFIX, NFULA_HWHEADER, NFULA_L2HDR = 9, 10, 16, 21
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
SIOCGIFNAME = 0x8910
COPY_RANGE = 64  # bytes of each frame copied: the Ethernet header and some
ETH_HLEN = 14


@dataclass(frozen=True)
class LogRecord:
    """One logged frame: `hook` as the family numbers it, devices as ifindex (0: none)."""

    prefix: str
    hook: int
    indev: int
    outdev: int
    dst: bytes  # 6 bytes
    src: bytes  # 6 bytes
    ethertype: int


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _u32(raw: bytes | None) -> int:
    return struct.unpack("!I", raw[:4])[0] if raw is not None and len(raw) >= 4 else 0


def parse_packet(attrs: dict[int, bytes]) -> LogRecord | None:
    """A LogRecord from the attributes of one NFULNL_MSG_PACKET (None: no Ethernet header)."""
    hdr = attrs.get(NFULA_PACKET_HDR, b"")
    proto, hook = struct.unpack_from("!HB", hdr) if len(hdr) >= 3 else (0, 0)
    eth = b""
    for kind in (NFULA_HWHEADER, NFULA_L2HDR):
        raw = attrs.get(kind, b"")
        if len(raw) >= ETH_HLEN:
            eth = raw
            break
    if not eth:
        payload = attrs.get(NFULA_PAYLOAD, b"")
        if len(payload) < ETH_HLEN:
            return None
        eth = payload
    if NFULA_HWHEADER not in attrs and NFULA_L2HDR not in attrs:
        (proto,) = struct.unpack_from("!H", eth, 12)
    prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode(errors="replace")
    indev = _u32(attrs.get(NFULA_IFINDEX_PHYSINDEV)) or _u32(attrs.get(NFULA_IFINDEX_INDEV))
    outdev = _u32(attrs.get(NFULA_IFINDEX_PHYSOUTDEV)) or _u32(attrs.get(NFULA_IFINDEX_OUTDEV))
    return LogRecord(prefix, hook, indev, outdev, bytes(eth[0:6]), bytes(eth[6:12]), int(proto))


class NflogReader:
    """A NETLINK_NETFILTER socket of the namespace it was created in, for one NFLOG group."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.lost = 0  # messages the kernel could not queue (ENOBUFS)
        self.bound = False
        self._seq = 1
        self._sock: socket.socket | None = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._names = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # SIOCGIFNAME in this namespace

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._names.close()
            self.bound = False

    def __del__(self) -> None:  # pragma: no cover - best effort, as `Nft`'s
        self.close()

    def _config(self, *attrs: bytes) -> None:
        assert self._sock is not None
        seq, self._seq = self._seq, self._seq + 1
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.group)) + b"".join(attrs)
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        self._sock.sendall(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)
        self._sock.settimeout(5.0)
        try:
            while True:
                data = self._sock.recv(1 << 16)
                off = 0
                while off + 16 <= len(data):
                    length, mtype, _, rseq, _ = struct.unpack_from("=IHHII", data, off)
                    if mtype == NLMSG_ERROR and rseq == seq:
                        (code,) = struct.unpack_from("=i", data, off + 16)
                        if code:
                            raise DatapathError(
                                f"nflog group {self.group}: {os.strerror(-code)} (errno {-code})", errno=-code
                            )
                        return
                    off += (length + 3) & ~3
        except TimeoutError:
            raise DatapathError(f"nflog group {self.group}: no answer", errno=errno.ETIMEDOUT) from None
        finally:
            self._sock.setblocking(False)

    def bind(self) -> None:
        """Subscribe to the group (EPERM: another socket of the namespace holds it), copying
        `COPY_RANGE` bytes of each frame, each frame sent at once (queue threshold 1)."""
        if self._sock is None:
            raise DatapathError("nflog: closed", errno=errno.EBADF)
        if self.bound:
            return
        self._config(_attr(NFULA_CFG_CMD, struct.pack("=B", NFULNL_CFG_CMD_BIND) + b"\0" * 3))
        self.bound = True
        mode = struct.pack("!IBB", COPY_RANGE, NFULNL_COPY_PACKET, 0) + b"\0" * 2
        self._config(_attr(NFULA_CFG_MODE, mode[:6]), _attr(NFULA_CFG_QTHRESH, struct.pack("!I", 1)))

    def read(self, limit: int = 4096) -> list[LogRecord]:
        """What is queued now, oldest first (at most `limit` messages; never blocks)."""
        if self._sock is None or not self.bound:
            return []
        out: list[LogRecord] = []
        packet = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
        while len(out) < limit:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.lost += 1
                    continue
                raise
            off = 0
            while off + 16 <= len(data):
                length, mtype, _, _, _ = struct.unpack_from("=IHHII", data, off)
                if length < 16:
                    break
                if mtype == packet:
                    rec = parse_packet(parse_attrs(data[off + 20 : off + length]))
                    if rec is not None:
                        out.append(rec)
                off += (length + 3) & ~3
        return out

    def ifname(self, ifindex: int) -> str | None:
        """The device's name in this reader's namespace (None: no such device)."""
        try:
            res = fcntl.ioctl(self._names, SIOCGIFNAME, struct.pack("16si", b"", ifindex) + b"\0" * 20)
        except OSError:
            return None
        return res[:16].split(b"\0", 1)[0].decode()
