"""Raw nfnetlink for what nft 1.0.6 cannot say: netdev base chains on a device-name PREFIX.

Since Linux 6.16 a netdev chain's hook may name devices by prefix (`NFTA_DEVICE_PREFIX` in
`NFTA_HOOK_DEVS`): the kernel attaches the chain to every device of the namespace whose name
starts with it, present or created later (before the device can come up), and detaches it
when the device goes. nft 1.0.6 (libnftnl 1.2.4) has no syntax or JSON for that, so this
module builds the one batch it needs by hand: base chains whose first rule accepts a device
in a set of the same table, whose second counts the rest in a named counter and third per
device in a dynamic set, and whose policy drops it (`GuardChain`). The table, the sets and the
counter exist already (created through libnftables); every change stays libnftables.

Reading: nft 1.0.6 hangs in any listing whose cache fill dumps every chain of the namespace
(`list ruleset`, `list tables`, `list counters`, `list counter …`) while a prefix chain
exists. Listings scoped to one table without such a chain (`list table netdev hostvlan`,
`list set …`) dump only that table's chains (the kernel filters the dump by table) and work;
counters are read here instead (`counters`: one NFT_MSG_GETOBJ dump of one table's counter
objects, filtered by the kernel), and so is a chain's existence and its rule count. Every
read has a receive timeout (`TIMEOUT`): a kernel that does not answer is an ETIMEDOUT error,
never a hang.

One `send_batch` is one nfnetlink transaction (BATCH_BEGIN ... BATCH_END): all or nothing.
The socket is opened where the object is created (the caller's network namespace).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass

from hostvlan.datapath.base import DatapathError

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_GETTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN = 1, 3, 4
NFT_MSG_NEWRULE, NFT_MSG_GETRULE, NFT_MSG_DELRULE, NFT_MSG_GETOBJ = 6, 7, 8, 19
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x1, 0x4, 0x200, 0x400, 0x800
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TIMEOUT = 10.0  # seconds a read waits for the kernel's answer
NLA_F_NESTED = 0x8000
NFPROTO_UNSPEC, NFPROTO_NETDEV = 0, 5
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}
NF_NETDEV_INGRESS, NF_NETDEV_EGRESS = 0, 1
HOOKS = {"ingress": NF_NETDEV_INGRESS, "egress": NF_NETDEV_EGRESS}
# attribute numbers (include/uapi/linux/netfilter/nf_tables.h, kernel 6.18)
TABLE_NAME = 1
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
OBJREF_IMM_TYPE, OBJREF_IMM_NAME = 1, 2
DYNSET_SET_NAME, DYNSET_OP, DYNSET_SREG_KEY, DYNSET_EXPR, DYNSET_OP_UPDATE = 1, 3, 4, 7, 1
OBJ_TABLE, OBJ_NAME, OBJ_TYPE, OBJ_DATA = 1, 2, 3, 4
NFT_OBJECT_COUNTER = 1
COUNTER_BYTES, COUNTER_PACKETS = 1, 2
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


def parse_attrs(buf: bytes) -> dict[int, bytes]:
    """The attributes of one level (type without the NESTED/BYTEORDER flags → payload)."""
    out: dict[int, bytes] = {}
    off = 0
    while off + 4 <= len(buf):
        n, kind = struct.unpack_from("=HH", buf, off)
        if n < 4:
            break
        out[kind & 0x3FFF] = buf[off + 4 : off + n]
        off += (n + 3) & ~3
    return out


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


@dataclass(frozen=True)
class GuardChain:
    """A netdev base chain on every device named `prefix…`: `<dir>ifname @<allow> accept`, policy drop."""

    name: str
    hook: str  # "ingress" (match iifname) or "egress" (match oifname)
    prefix: str
    allow: str  # a set of ifnames in the same table
    counter: str  # a named counter of the same table: what the policy drops
    seen: str  # a dynamic ifname set of the same table: per device, what the policy drops (counter each)
    priority: int = -300


class Nfnl:
    """A NETLINK_NETFILTER socket of the namespace it was created in."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self._sock.bind((0, 0))
        self._sock.settimeout(TIMEOUT)
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
            data = self._recv("the batch's acks")
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

    def _recv(self, what: str) -> bytes:
        assert self._sock is not None
        try:
            return self._sock.recv(1 << 16)
        except TimeoutError:
            raise DatapathError(
                f"nfnetlink: no answer reading {what} in {TIMEOUT:.0f} s", errno=errno.ETIMEDOUT
            ) from None

    def query(self, kind: int, family: int, attrs: bytes, *, dump: bool, what: str) -> list[bytes]:
        """One GET request (a dump with `dump`); the attributes of every answer (ENOENT: [])."""
        return [body for _, body in self._query(kind, family, attrs, dump=dump, what=what)]

    def _query(self, kind: int, family: int, attrs: bytes, *, dump: bool, what: str) -> list[tuple[int, bytes]]:
        if self._sock is None:
            raise DatapathError("nfnetlink: closed", errno=errno.EBADF)
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        seq, raw = self._msg((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, family, attrs)
        self._sock.sendall(raw)
        out: list[tuple[int, bytes]] = []
        while True:
            data = self._recv(what)
            off = 0
            while off + 16 <= len(data):
                length, mtype, _, rseq, _ = struct.unpack_from("=IHHII", data, off)
                body = data[off + 16 : off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if mtype == NLMSG_DONE:
                    return out
                if mtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body)
                    if code == 0 or -code == errno.ENOENT:
                        return out if code == 0 else []
                    raise DatapathError(f"nfnetlink: reading {what}: {os.strerror(-code)}", errno=-code)
                out.append((body[0], body[4:]))  # (nfgenmsg's family, the attributes); a GET's ack follows

    def tables(self) -> list[tuple[str, str]]:
        """(family, name) of every table of the namespace (what `nft list tables` says; it hangs)."""
        out = []
        for family, body in self._dump_families(NFT_MSG_GETTABLE, b"", "tables"):
            name = parse_attrs(body).get(TABLE_NAME)
            if name is not None:
                out.append((FAMILIES.get(family, str(family)), _cstr(name)))
        return sorted(out)

    def table_exists(self, family: int, name: str) -> bool:
        return bool(self.query(NFT_MSG_GETTABLE, family, _str(TABLE_NAME, name), dump=False, what=f"table {name}"))

    def _dump_families(self, kind: int, attrs: bytes, what: str) -> list[tuple[int, bytes]]:
        """A dump over every family (NFPROTO_UNSPEC): (family, attributes) of each answer."""
        return self._query(kind, NFPROTO_UNSPEC, attrs, dump=True, what=what)

    def chain_exists(self, family: int, table: str, name: str) -> bool:
        """Whether the chain exists (one NFT_MSG_GETCHAIN; nft 1.0.6 hangs listing a prefix chain)."""
        attrs = _str(CHAIN_TABLE, table) + _str(CHAIN_NAME, name)
        return bool(self.query(NFT_MSG_GETCHAIN, family, attrs, dump=False, what=f"chain {table} {name}"))

    def rule_count(self, family: int, table: str, chain: str) -> int:
        """The number of rules in a chain (a dump the kernel filters by table and chain)."""
        attrs = _str(RULE_TABLE, table) + _str(RULE_CHAIN, chain)
        return len(self.query(NFT_MSG_GETRULE, family, attrs, dump=True, what=f"rules of {table} {chain}"))

    def counters(self, family: int, table: str) -> dict[str, int]:
        """Packets of every named counter of `table` (absent table: {}), in one dump the kernel
        filters by table and type: never the whole ruleset, so no prefix chain is read."""
        attrs = _str(OBJ_TABLE, table) + _be32(OBJ_TYPE, NFT_OBJECT_COUNTER)
        out: dict[str, int] = {}
        for msg in self.query(NFT_MSG_GETOBJ, family, attrs, dump=True, what=f"counters of {table}"):
            a = parse_attrs(msg)
            if _cstr(a.get(OBJ_TABLE, b"")) != table or OBJ_NAME not in a:
                continue
            data = parse_attrs(a.get(OBJ_DATA, b""))
            (packets,) = struct.unpack("!Q", data[COUNTER_PACKETS]) if COUNTER_PACKETS in data else (0,)
            out[_cstr(a[OBJ_NAME])] = int(packets)
        return out

    def add_guards(self, table: str, chains: list[GuardChain], existing: Collection[str] = ()) -> None:
        """Create `chains` (with their two rules) in the netdev `table`, one transaction; a chain
        named in `existing` is kept (its hook too) and only its rules are replaced."""
        msgs: list[tuple[int, int, int, bytes]] = []
        for c in chains:
            if c.name in existing:  # DELRULE without a handle: every rule of the chain
                msgs.append((NFT_MSG_DELRULE, 0, NFPROTO_NETDEV, _str(RULE_TABLE, table) + _str(RULE_CHAIN, c.name)))
                msgs += self._guard_rules(table, c)
                continue
            hook = _nest(
                CHAIN_HOOK,
                _be32(HOOK_HOOKNUM, HOOKS[c.hook]),
                _be32(HOOK_PRIORITY, c.priority),
                _nest(HOOK_DEVS, _str(DEVICE_PREFIX, c.prefix)),
            )
            attrs = _str(CHAIN_TABLE, table) + _str(CHAIN_NAME, c.name) + hook
            attrs += _be32(CHAIN_POLICY, NF_DROP) + _str(CHAIN_TYPE, "filter")
            msgs.append((NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, NFPROTO_NETDEV, attrs))
            msgs += self._guard_rules(table, c)
        self.send_batch(msgs)

    @staticmethod
    def _guard_rules(table: str, c: GuardChain) -> list[tuple[int, int, int, bytes]]:
        """`<dir>ifname @<allow> accept`; `counter name <counter>`; `update @<seen> { <dir>ifname
        counter }` (the policy drops what reaches the end; a full `seen` breaks only its rule)."""
        key = _expr(
            "meta", _be32(META_KEY, META_IIFNAME if c.hook == "ingress" else META_OIFNAME), _be32(META_DREG, REG_1)
        )
        accept = _nest(
            RULE_EXPRESSIONS,
            key,
            _expr("lookup", _str(LOOKUP_SET, c.allow), _be32(LOOKUP_SREG, REG_1)),
            _expr(
                "immediate",
                _be32(IMMEDIATE_DREG, REG_VERDICT),
                _nest(IMMEDIATE_DATA, _nest(DATA_VERDICT, _be32(VERDICT_CODE, NF_ACCEPT))),
            ),
        )
        count = _nest(
            RULE_EXPRESSIONS,
            _expr("objref", _be32(OBJREF_IMM_TYPE, NFT_OBJECT_COUNTER), _str(OBJREF_IMM_NAME, c.counter)),
        )
        zero = _attr(COUNTER_BYTES, struct.pack("!Q", 0)) + _attr(COUNTER_PACKETS, struct.pack("!Q", 0))
        per_device = _nest(
            RULE_EXPRESSIONS,
            key,
            _expr(
                "dynset",
                _str(DYNSET_SET_NAME, c.seen),
                _be32(DYNSET_OP, DYNSET_OP_UPDATE),
                _be32(DYNSET_SREG_KEY, REG_1),
                _nest(DYNSET_EXPR, _str(EXPR_NAME, "counter"), _nest(EXPR_DATA, zero)),
            ),
        )
        where = _str(RULE_TABLE, table) + _str(RULE_CHAIN, c.name)
        rules = (accept, count, per_device)
        return [(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, NFPROTO_NETDEV, where + e) for e in rules]
