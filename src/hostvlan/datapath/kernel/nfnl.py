"""Raw nfnetlink for what nft 1.0.6 cannot say: netdev base chains on a device-name PREFIX.

Since Linux 6.16 a netdev chain's hook may name devices by prefix (`NFTA_DEVICE_PREFIX` in
`NFTA_HOOK_DEVS`): the kernel attaches the chain to every device of the namespace whose name
starts with it, present or created later (before the device can come up), and detaches it
when the device goes. nft 1.0.6 (libnftnl 1.2.4) has no syntax or JSON for that, so this
module builds the one batch it needs by hand: base chains whose single rule accepts a device
in a set of the same table and whose policy drops the rest (`guard_chain`). The table and the
set exist already (created through libnftables); everything else stays libnftables.

One `send_batch` is one nfnetlink transaction (BATCH_BEGIN ... BATCH_END): all or nothing.
The socket is opened where the object is created (the caller's network namespace).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from hostvlan.datapath.base import DatapathError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN, NFT_MSG_NEWRULE = 3, 4, 6
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
NLMSG_ERROR = 2
NLA_F_NESTED = 0x8000
NFPROTO_NETDEV = 5
NF_NETDEV_INGRESS, NF_NETDEV_EGRESS = 0, 1
HOOKS = {"ingress": NF_NETDEV_INGRESS, "egress": NF_NETDEV_EGRESS}
# attribute numbers (include/uapi/linux/netfilter/nf_tables.h, kernel 6.18)
CHAIN_TABLE, CHAIN_NAME, CHAIN_HOOK, CHAIN_POLICY, CHAIN_TYPE = 1, 3, 4, 5, 7
HOOK_HOOKNUM, HOOK_PRIORITY, HOOK_DEVS = 1, 2, 4
DEVICE_PREFIX = 2  # NFTA_DEVICE_PREFIX (6.16+); 1 is NFTA_DEVICE_NAME
RULE_TABLE, RULE_CHAIN, RULE_EXPRESSIONS = 1, 2, 4
LIST_ELEM, EXPR_NAME, EXPR_DATA = 1, 1, 2
META_DREG, META_KEY = 1, 2
META_IIFNAME, META_OIFNAME = 6, 7
LOOKUP_SET, LOOKUP_SREG = 1, 2
IMMEDIATE_DREG, IMMEDIATE_DATA = 1, 2
DATA_VERDICT, VERDICT_CODE = 2, 1
REG_VERDICT, REG_1 = 0, 1
NF_DROP, NF_ACCEPT = 0, 1


def _attr(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


def _nest(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(attrs))


def _str(kind: int, s: str) -> bytes:
    return _attr(kind, s.encode() + b"\0")


def _be32(kind: int, v: int) -> bytes:
    return _attr(kind, struct.pack("!i" if v < 0 else "!I", v))


def _expr(name: str, *attrs: bytes) -> bytes:
    return _nest(LIST_ELEM, _str(EXPR_NAME, name), _nest(EXPR_DATA, *attrs))


@dataclass(frozen=True)
class GuardChain:
    """A netdev base chain on every device named `prefix…`: `<dir>ifname @<allow> accept`, policy drop."""

    name: str
    hook: str  # "ingress" (match iifname) or "egress" (match oifname)
    prefix: str
    allow: str  # a set of ifnames in the same table
    priority: int = -300


class Nfnl:
    """A NETLINK_NETFILTER socket of the namespace it was created in."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._seq = 1

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _msg(self, kind: int, flags: int, family: int, payload: bytes, res_id: int = 0) -> tuple[int, bytes]:
        seq = self._seq
        self._seq += 1
        body = struct.pack("=BBH", family, 0, socket.htons(res_id)) + payload
        return seq, struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body

    def send_batch(self, msgs: list[tuple[int, int, int, bytes]]) -> None:
        """One transaction: each (message type, flags, family, attributes); raises on any error."""
        if self._sock is None:
            raise DatapathError("nfnetlink: closed", errno=errno.EBADF)
        out = [self._msg(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, b"", NFNL_SUBSYS_NFTABLES)[1]]
        want: set[int] = set()
        for kind, flags, family, attrs in msgs:
            seq, raw = self._msg((NFNL_SUBSYS_NFTABLES << 8) | kind, NLM_F_REQUEST | NLM_F_ACK | flags, family, attrs)
            want.add(seq)
            out.append(raw)
        out.append(self._msg(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, b"", NFNL_SUBSYS_NFTABLES)[1])
        self._sock.sendall(b"".join(out))
        first_error = 0
        while want:
            data = self._sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, off + 16)
                    want.discard(seq)
                    if code and not first_error:
                        first_error = -code
                off += (length + 3) & ~3
            if first_error:
                break  # the kernel aborted the whole batch; later acks may not come
        if first_error:
            raise DatapathError(
                f"nfnetlink batch refused: {os.strerror(first_error)} (errno {first_error})", errno=first_error
            )

    def chain_exists(self, family: int, table: str, name: str) -> bool:
        """Whether the chain exists (one NFT_MSG_GETCHAIN; nft 1.0.6 hangs listing a prefix chain)."""
        if self._sock is None:
            raise DatapathError("nfnetlink: closed", errno=errno.EBADF)
        attrs = _str(CHAIN_TABLE, table) + _str(CHAIN_NAME, name)
        seq, raw = self._msg((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN, NLM_F_REQUEST | NLM_F_ACK, family, attrs)
        self._sock.sendall(raw)
        found = False
        while True:
            data = self._sock.recv(1 << 16)
            off = 0
            while off + 16 <= len(data):
                length, kind, _, rseq, _ = struct.unpack_from("=IHHII", data, off)
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", data, off - ((length + 3) & ~3) + 16)
                    if code == 0:
                        return found
                    if -code == errno.ENOENT:
                        return False
                    raise DatapathError(f"nfnetlink: reading chain {table} {name}: {os.strerror(-code)}", errno=-code)
                found = True

    def add_guards(self, table: str, chains: list[GuardChain]) -> None:
        """Create `chains` (with their rule) in the netdev `table`, one transaction."""
        msgs: list[tuple[int, int, int, bytes]] = []
        for c in chains:
            hook = _nest(
                CHAIN_HOOK,
                _be32(HOOK_HOOKNUM, HOOKS[c.hook]),
                _be32(HOOK_PRIORITY, c.priority),
                _nest(HOOK_DEVS, _str(DEVICE_PREFIX, c.prefix)),
            )
            attrs = _str(CHAIN_TABLE, table) + _str(CHAIN_NAME, c.name) + hook
            attrs += _be32(CHAIN_POLICY, NF_DROP) + _str(CHAIN_TYPE, "filter")
            msgs.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, NFPROTO_NETDEV, attrs))
            key = META_IIFNAME if c.hook == "ingress" else META_OIFNAME
            exprs = _nest(
                RULE_EXPRESSIONS,
                _expr("meta", _be32(META_KEY, key), _be32(META_DREG, REG_1)),
                _expr("lookup", _str(LOOKUP_SET, c.allow), _be32(LOOKUP_SREG, REG_1)),
                _expr(
                    "immediate",
                    _be32(IMMEDIATE_DREG, REG_VERDICT),
                    _nest(IMMEDIATE_DATA, _nest(DATA_VERDICT, _be32(VERDICT_CODE, NF_ACCEPT))),
                ),
            )
            rule = _str(RULE_TABLE, table) + _str(RULE_CHAIN, c.name) + exprs
            msgs.append((NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, NFPROTO_NETDEV, rule))
        self.send_batch(msgs)
