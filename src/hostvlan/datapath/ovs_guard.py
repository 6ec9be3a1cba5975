"""The address guard on Open vSwitch: OpenFlow tables between the send check and `known`.

`ovs.OvsFilter` sends the frames of a bound VM port (table 1's `bound` flow) through these
tables, compiled from `model.guardfacts.GuardFacts`, then to table 2; uplinks skip them:

  table 10  sources   per guarded port (reg1=<pid>): ARP with arp_sha=<its MAC> and arp_spa
                      in its nets or 0.0.0.0, IPv4 from its nets (0.0.0.0 only UDP 68->67),
                      IPv6 from its nets, its EUI-64 link-local or :: (NS, MLD reports only)
                      -> table 11; any other ARP/IPv4/IPv6 -> drop (arp_spoof / ip_spoof);
                      a tag beyond what OVS parses (dl_type 0x8100/0x88a8) -> drop (malformed)
  table 11  roles/ND  per guarded port: RA/redirect unless router (ra_guard), UDP source 67 /
                      547 unless DHCP server (dhcp_guard), NS with nd_sll not absent and not
                      its MAC, NA whose nd_target is not its own or nd_tll not absent nor its
                      MAC (nd_spoof), UDP ports 0/0 (a UDP header OVS could not read:
                      malformed) -> drop; else table 12
  table 12  answers   per VM port: an ARP request for an address `answers` holds -> the reply,
                      built by the flow (arp_op, sha/spa/tha/tpa, eth addresses rewritten), out
                      of `in_port`; gratuitous requests and NS go on (OVS does not answer NS);
                      any port: ARP request / NS for a `registered` address (not its own)
                      -> table 13; else 2
  table 13  no share  per VM port: drop (no_shared_lnid), counted per port

Every flow of a port carries the kind (cookie bits 32-47, 0x40-0x4f) and the port's pid, so
a port's guard is rewritten by ONE delete of its cookie group plus its adds, in the same
bundle as the rest of the change. The drop flows' n_packets are the counts (`counts`).
Limitations: OVS answers ARP only (an NS for an answered address goes out, as before the
guard); OVS's parser zeroes the fields of a header it cannot read, so a malformed ARP/IP/ND
frame is dropped as spoofed (arp_spoof / ip_spoof / nd_spoof), not as malformed; frames
with two VLAN tags are checked on what they carry only with `other_config:vlan-limit=2` (or
0) in OVSDB's Open_vSwitch table, else a guarded port's double-tagged frames are dropped.
May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hostvlan.datapath.ovs_flows import COOKIE_BASE, T_GUARD, T_KNOWN, T_META, Flow, cookie, note
from hostvlan.model import verdict as V
from hostvlan.model.addresses import IPAddr
from hostvlan.model.guardfacts import GuardFacts, PortGuard
from hostvlan.model.ids import Mac, PortName

T_ROLES, T_ANSWER, T_NOSHARE = T_GUARD + 1, T_GUARD + 2, T_GUARD + 3
K_ALLOW, K_DEFAULT, K_REG, K_ANSWER, K_DIGEST = 0x40, 0x41, 0x42, 0x43, 0x44
K_DROP = {  # kind -> reason of the counted drop flows
    0x48: V.ARP_SPOOF,
    0x49: V.IP_SPOOF,
    0x4A: V.ND_SPOOF,
    0x4B: V.RA_GUARD,
    0x4C: V.DHCP_GUARD,
    0x4D: V.MALFORMED,
    0x4E: V.NO_SHARED_LNID,
}
KIND = {reason: kind for kind, reason in K_DROP.items()}
_ALL = (1 << 64) - 1
GROUP_MASK = (0xFFFF << 48) | (0xFFF0 << 32) | 0xFFFFFFFF  # the kinds 0x40-0x4f of one pid
GROUP = COOKIE_BASE | 0x40 << 32
ANY_GROUP = (GROUP, (0xFFFF << 48) | (0xFFF0 << 32))
_KIND_MASK = (0xFFFF << 48) | (0xFFFF << 32)


def static_flows() -> list[Flow]:
    """The tables' defaults (installed with the rest): on to the next table."""
    c = cookie(K_DEFAULT)
    return [
        Flow(T_GUARD, 0, c, "", f"goto_table:{T_ROLES}"),
        Flow(T_ROLES, 0, c, "", f"goto_table:{T_ANSWER}"),
        Flow(T_ANSWER, 0, c, "", f"resubmit(,{T_KNOWN})"),
        Flow(T_NOSHARE, 0, c, "", "drop"),
        Flow(T_META, 1, cookie(K_DIGEST), "", note("G")),  # the guard's tables are there
    ]


def _drop(table: int, prio: int, reason: str, pid: int, match: str) -> Flow:
    return Flow(table, prio, cookie(KIND[reason], pid), match, "drop")


def _hex(raw: bytes) -> str:
    return "0x" + raw.hex()


def port_flows(pid: int, g: PortGuard, answers: Iterable[tuple[IPAddr, Mac]]) -> list[Flow]:
    """Every guard flow of one VM port (pid `pid`)."""
    r, m = f"reg1={pid}", g.mac
    flows = [_drop(T_NOSHARE, 100, V.NO_SHARED_LNID, pid, r)]
    for addr, holder in sorted(answers, key=str):
        if isinstance(addr, ipaddress.IPv4Address):
            tpa = f"{r},arp,arp_op=1,arp_tpa={addr}"
            reply = (
                "move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],"
                f"mod_dl_src:{holder},load:0x2->NXM_OF_ARP_OP[],"
                "move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
                f"load:{_hex(bytes.fromhex(holder.replace(':', '')))}->NXM_NX_ARP_SHA[],"
                f"load:{_hex(addr.packed)}->NXM_OF_ARP_SPA[],in_port"
            )
            flows.append(Flow(T_ANSWER, 300, cookie(K_ANSWER, pid), tpa, reply))
            flows.append(Flow(T_ANSWER, 310, cookie(K_ALLOW, pid), f"{tpa},arp_spa={addr}", f"resubmit(,{T_KNOWN})"))
        else:  # OVS answers ARP only: an NS for it goes on
            ns = f"{r},icmp6,icmp_type=135,icmp_code=0,nd_target={addr}"
            flows.append(Flow(T_ANSWER, 300, cookie(K_ALLOW, pid), ns, f"resubmit(,{T_KNOWN})"))
    if not g.guarded:
        return flows
    for own_net in g.nets:  # a request for an address of its own is no other's to answer: it goes on
        if own_net.prefixlen == own_net.max_prefixlen:
            a = own_net.network_address
            own = f"arp,arp_op=1,arp_tpa={a}" if a.version == 4 else f"icmp6,icmp_type=135,icmp_code=0,nd_target={a}"
            flows.append(Flow(T_ANSWER, 105, cookie(K_ALLOW, pid), f"{r},{own}", f"resubmit(,{T_KNOWN})"))
    ok = f"goto_table:{T_ROLES}"
    allow = cookie(K_ALLOW, pid)
    v4 = sorted(str(n) for n in g.nets if n.version == 4)
    v6 = sorted(str(n) for n in g.nets if n.version == 6)
    for net in [*v4, "0.0.0.0"]:
        flows.append(Flow(T_GUARD, 200, allow, f"{r},arp,arp_sha={m},arp_spa={net}", ok))
    for net in v4:
        flows.append(Flow(T_GUARD, 200, allow, f"{r},ip,nw_src={net}", ok))
    flows.append(Flow(T_GUARD, 200, allow, f"{r},udp,nw_src=0.0.0.0,tp_src=68,tp_dst=67", ok))
    for net in v6:
        flows.append(Flow(T_GUARD, 200, allow, f"{r},ipv6,ipv6_src={net}", ok))
    for typ in (135, 131, 143):
        flows.append(Flow(T_GUARD, 200, allow, f"{r},icmp6,ipv6_src=::,icmp_type={typ}", ok))
    flows += [
        _drop(T_GUARD, 100, V.ARP_SPOOF, pid, f"{r},arp"),
        _drop(T_GUARD, 100, V.IP_SPOOF, pid, f"{r},ip"),
        _drop(T_GUARD, 100, V.IP_SPOOF, pid, f"{r},ipv6"),
        _drop(T_GUARD, 100, V.MALFORMED, pid, f"{r},dl_type=0x8100"),
        _drop(T_GUARD, 100, V.MALFORMED, pid, f"{r},dl_type=0x88a8"),
        _drop(T_ROLES, 300, V.MALFORMED, pid, f"{r},udp,tp_src=0,tp_dst=0"),
        _drop(T_ROLES, 300, V.MALFORMED, pid, f"{r},udp6,tp_src=0,tp_dst=0"),
    ]
    if not g.router:
        flows += [_drop(T_ROLES, 200, V.RA_GUARD, pid, f"{r},icmp6,icmp_type={t}") for t in (134, 137)]
    if not g.dhcp_server:
        flows.append(_drop(T_ROLES, 200, V.DHCP_GUARD, pid, f"{r},udp,tp_src=67"))
        flows.append(_drop(T_ROLES, 200, V.DHCP_GUARD, pid, f"{r},udp6,tp_src=547"))
    nd = f"{r},icmp6,icmp_code=0"
    for sll in (m, "00:00:00:00:00:00"):
        flows.append(Flow(T_ROLES, 200, allow, f"{nd},icmp_type=135,nd_sll={sll}", f"goto_table:{T_ANSWER}"))
        for net in v6:
            flows.append(
                Flow(T_ROLES, 200, allow, f"{nd},icmp_type=136,nd_target={net},nd_tll={sll}", f"goto_table:{T_ANSWER}")
            )
    flows += [_drop(T_ROLES, 100, V.ND_SPOOF, pid, f"{nd},icmp_type={t}") for t in (135, 136)]
    return flows


def registered_flows(addr: IPAddr) -> list[Flow]:
    """A request from any VM port for a registered address not answered for it: table 13."""
    c = cookie(K_REG)
    if isinstance(addr, ipaddress.IPv4Address):
        req = f"arp,arp_op=1,arp_tpa={addr}"
        return [
            Flow(T_ANSWER, 100, c, req, f"{note('R', str(addr))},goto_table:{T_NOSHARE}"),
            Flow(T_ANSWER, 110, c, f"{req},arp_spa={addr}", f"resubmit(,{T_KNOWN})"),  # gratuitous
        ]
    ns = f"icmp6,icmp_type=135,icmp_code=0,nd_target={addr}"
    return [
        Flow(T_ANSWER, 100, c, ns, f"{note('R', str(addr))},goto_table:{T_NOSHARE}"),
        Flow(T_ANSWER, 110, c, f"{ns},ipv6_src=::", f"resubmit(,{T_KNOWN})"),  # DAD
    ]


def _delete_group(pid: int) -> str:
    return f"delete cookie={GROUP | pid:#x}/{GROUP_MASK:#x}"


_Port = tuple[int, PortGuard, frozenset[tuple[IPAddr, Mac]]]  # pid, its guard, its answers


class GuardFlows:
    """What the switch holds of the guard (per port: the digest of its flows), and the flow
    changes to the next GuardFacts. A port's digest lives in a flow of table 200 (never hit)
    in its group, each registered address in a note of its flow: a restarted agent reads them
    back (`load`) and rewrites only what differs."""

    def __init__(self) -> None:
        self.rev = -1  # the back end's guard revision these flows enforce (-1: unknown)
        self._ports: dict[PortName, tuple[int, str]] | None = None  # port -> (pid, digest)
        self._registered: frozenset[IPAddr] = frozenset()
        self._staged: tuple[int, dict[PortName, tuple[int, str]], frozenset[IPAddr]] | None = None

    @staticmethod
    def _want(facts: GuardFacts, pids: Mapping[PortName, int]) -> dict[PortName, _Port]:
        answers: dict[PortName, set[tuple[IPAddr, Mac]]] = {}
        for port, addr, mac in facts.answers:
            answers.setdefault(port, set()).add((addr, mac))
        return {p: (pids[p], g, frozenset(answers.get(p, ()))) for p, g in facts.ports.items() if p in pids}

    @staticmethod
    def digest(v: _Port) -> str:
        text = repr((v[0], repr(v[1]), sorted(map(str, v[2]))))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def load(self, dump: Callable[[str], Iterable[Any]]) -> None:
        """A restart: what the switch holds, from its digest and registered flows (`dump`: a
        `dump-flows` of a match); without the guard's marker, unknown (the first plan rewrites
        every guard flow)."""
        kinds = f"{COOKIE_BASE | K_DIGEST << 32:#x}/{_KIND_MASK:#x}", f"{COOKIE_BASE | K_REG << 32:#x}/{_KIND_MASK:#x}"
        dumped = [*dump(f"table={T_META},cookie={kinds[0]}"), *dump(f"table={T_ANSWER},cookie={kinds[1]}")]
        ports: dict[PortName, tuple[int, str]] = {}
        registered: set[IPAddr] = set()
        marker = False
        for f in dumped:
            if f.kind == K_DIGEST and f.fields == ["G"]:
                marker = True
            elif f.kind == K_DIGEST and len(f.fields) == 3 and f.fields[0] == "P":
                ports[PortName(f.fields[1])] = (f.pid, f.fields[2])
            elif f.kind == K_REG and len(f.fields) == 2 and f.fields[0] == "R":
                registered.add(ipaddress.ip_address(f.fields[1]))
        if marker:
            self._ports, self._registered = ports, frozenset(registered)

    def plan(self, facts: GuardFacts, pids: Mapping[PortName, int], rev: int) -> list[str]:
        """The bundle lines that move the switch to `facts`; `commit()` once the bundle succeeded."""
        want = self._want(facts, pids)
        digests = {p: (v[0], self.digest(v)) for p, v in want.items()}
        lines: list[str] = []
        have = self._ports
        if have is None:  # unknown: rewrite every guard flow
            lines.append(f"delete cookie={ANY_GROUP[0]:#x}/{ANY_GROUP[1]:#x}")
            lines += [f.add() for f in static_flows()]
            have, reg_have = {}, frozenset[IPAddr]()
        else:
            reg_have = self._registered
        for port, (pid, _) in have.items():
            if digests.get(port) != have[port]:
                lines.append(_delete_group(pid))
        for port, (pid, g, ans) in want.items():
            if have.get(port) != digests[port]:
                lines += [f.add() for f in port_flows(pid, g, ans)]
                mark = note("P", port, digests[port][1])
                lines.append(Flow(T_META, 2, cookie(K_DIGEST, pid), f"reg1={pid}", mark).add())
        for addr in reg_have - facts.registered:
            lines += [f.delete() for f in registered_flows(addr)]
        for addr in facts.registered - reg_have:
            lines += [f.add() for f in registered_flows(addr)]
        self._staged = (rev, digests, facts.registered)
        return lines

    def commit(self) -> None:
        if self._staged is not None:
            self.rev, self._ports, self._registered = self._staged
            self._staged = None

    def forget(self) -> None:
        """The switch's guard flows are unknown (a failed bundle, a removal): rewrite them all next."""
        self.rev, self._ports, self._staged = -1, None, None


def counts(dumped: Iterable[Any], k_port: int) -> dict[tuple[str, str], int]:
    """Drops per (port, reason) from the dumped flows (with stats) of hostvlan's cookie range;
    `k_port` is the kind of the flows that name each port (`ovs.K_PORT`)."""
    names = {f.pid: f.fields[1] for f in dumped if f.kind == k_port and f.fields[:1] == ["p"]}
    out: dict[tuple[str, str], int] = {}
    for f in dumped:
        reason = K_DROP.get(f.kind)
        if reason is not None and f.packets and f.pid in names:
            key = (names[f.pid], reason)
            out[key] = out.get(key, 0) + f.packets
    return out


def merge(a: dict[tuple[str, str], int], b: Mapping[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    for key, n in b.items():
        a[key] = a.get(key, 0) + n
    return a
