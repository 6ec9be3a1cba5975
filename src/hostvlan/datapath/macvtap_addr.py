"""The address guard on macvtap hosts: nftables netdev chains at each VM macvtap's egress.

A macvtap's egress hook runs once per frame its VM sends (`macvtap`'s module doc). Beside the
back end's table `netdev hostvlan`, this part owns the table `netdev hostvlan_addr`: per VM
port P with something to enforce, a base chain `g_P` (hook egress device P, priority one
before the send check's, policy accept) compiled from `model.guardfacts.GuardFacts`:

  ether saddr != <bound MAC> accept     the send check's (forged_source), in its own chain
  guarded P:  VLAN-tagged -> malformed (this chain cannot read past a tag: stricter than the
              model); short or wrong ARP/IPv4/IPv6 headers -> malformed; ARP sha/spa ->
              arp_spoof; IPv4/IPv6 source (0.0.0.0 only for UDP 68->67, :: only NS/MLD) ->
              ip_spoof; RA/redirect -> ra_guard; UDP 67 / 547 -> dhcp_guard; the first two
              NDP link-layer options, an NA's target -> nd_spoof
  every VM P: an ARP request / NS for a registered address that the model answers nowhere
              for P (no shared LNID) -> no_shared_lnid

each drop counted by a named counter `P:reason`. The host does not ANSWER requests here:
netdev has no action that turns a frame round and hands it back to the guest (`fwd` on a
macvtap transmits towards the lower device), so an answered request goes out as before
(the bridge's tc program could do it on a macvtap too; not done). Limits beside that: the
third and later NDP options are not read; a UDP header is checked whole only behind a
20-byte IPv4 header; an IPv6 payload length longer than the frame is not caught.

A change rewrites the chains of the ports it touches (flush + rules, counters kept) in one
nftables transaction of this table, after the back end's own. `GuardedMacvtapFilter` is
the back end with this part, built by the factory. May import `hostvlan.datapath` and
`hostvlan.model` only.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from hostvlan.datapath.base import ApplyReport, DatapathError
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.datapath.nft_table import PRIORITY
from hostvlan.model import verdict as V
from hostvlan.model.addresses import IPAddr
from hostvlan.model.guardfacts import GuardFacts, PortGuard
from hostvlan.model.ids import PortName

TABLE = "hostvlan_addr"
T = {"family": "netdev", "table": TABLE}
Cmd = dict[str, Any]
Rule = list[dict[str, Any]]
_Port = tuple[PortGuard, frozenset[IPAddr]]  # its guard, the requests it may not make


def _m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def _pl(proto: str, fld: str) -> dict[str, Any]:
    return {"payload": {"protocol": proto, "field": fld}}


def _raw(offset: int, length: int) -> dict[str, Any]:
    return {"payload": {"base": "th", "offset": offset, "len": length}}


def _net(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> Any:
    a = str(n.network_address)
    return a if n.prefixlen == n.max_prefixlen else {"prefix": {"addr": a, "len": n.prefixlen}}


def _int(raw: bytes) -> str:
    return "0x" + raw.hex()


ETYPE, LEN = _pl("ether", "type"), {"meta": {"key": "length"}}


def port_rules(port: PortName, g: PortGuard, noshare: frozenset[IPAddr]) -> list[tuple[Rule, str]]:
    """(match, reason) of each drop rule of one port, after `ether saddr != MAC accept`; a reason ""
    means accept."""
    mac = _int(bytes.fromhex(g.mac.replace(":", "")))
    out: list[tuple[Rule, str]] = []
    if g.guarded:
        v4 = [_net(n) for n in sorted(g.nets, key=str) if n.version == 4]
        v6 = [_net(n) for n in sorted(g.nets, key=str) if n.version == 6]
        out += [
            ([_m(ETYPE, {"set": [0x8100, 0x88A8]})], V.MALFORMED),
            ([_m(ETYPE, 0x0806), _m(LEN, 42, "<")], V.MALFORMED),
            ([_m(_pl("arp", "htype"), 1, "!=")], V.MALFORMED),
            ([_m(_pl("arp", "ptype"), 0x0800, "!=")], V.MALFORMED),
            ([_m(_pl("arp", "hlen"), 6, "!=")], V.MALFORMED),
            ([_m(_pl("arp", "plen"), 4, "!=")], V.MALFORMED),
            ([_m(_pl("arp", "saddr ether"), g.mac, "!=")], V.ARP_SPOOF),
            ([_m(_pl("arp", "saddr ip"), {"set": [*v4, "0.0.0.0"]}, "!=")], V.ARP_SPOOF),
            ([_m(ETYPE, 0x0800), _m(LEN, 34, "<")], V.MALFORMED),
            ([_m(_pl("ip", "version"), 4, "!=")], V.MALFORMED),
            ([_m(_pl("ip", "hdrlength"), 5, "<")], V.MALFORMED),
            ([_m(_pl("ip", "protocol"), 17), _m(_pl("ip", "hdrlength"), 5), _m(LEN, 42, "<")], V.MALFORMED),
            ([_m(_pl("ip", "saddr"), "0.0.0.0"), _m(_pl("udp", "sport"), 68), _m(_pl("udp", "dport"), 67)], ""),
            ([_m(_pl("ip", "saddr"), {"set": v4}, "!=")] if v4 else [_m(ETYPE, 0x0800)], V.IP_SPOOF),
            ([_m(ETYPE, 0x86DD), _m(LEN, 54, "<")], V.MALFORMED),
            ([_m(_pl("ip6", "version"), 6, "!=")], V.MALFORMED),
            ([_m(_pl("ip6", "saddr"), {"set": [*v6, "::"]}, "!=")], V.IP_SPOOF),
            ([_m(_pl("ip6", "saddr"), "::"), _m({"meta": {"key": "l4proto"}}, 58, "!=")], V.IP_SPOOF),
            ([_m(_pl("ip6", "saddr"), "::"), _m(_pl("icmpv6", "type"), {"set": [135, 131, 143]}, "!=")], V.IP_SPOOF),
        ]
        if not g.router:
            out.append(([_m(_pl("icmpv6", "type"), {"set": [134, 137]})], V.RA_GUARD))
        if not g.dhcp_server:
            out.append(([_m(ETYPE, 0x0800), _m(_pl("udp", "sport"), 67)], V.DHCP_GUARD))
            out.append(([_m(ETYPE, 0x86DD), _m(_pl("udp", "sport"), 547)], V.DHCP_GUARD))
        for at in (192, 256):  # the first two NDP options: a link-layer address not the bound MAC
            nd = [_m(_pl("icmpv6", "type"), {"set": [135, 136]}), _m(_raw(at, 8), {"set": [1, 2]})]
            out.append(([*nd, _m(_raw(at + 16, 48), mac, "!=")], V.ND_SPOOF))
    for addr in sorted(noshare, key=str):
        if addr.version == 4:
            req = [_m(_pl("arp", "operation"), 1), _m(_pl("arp", "daddr ip"), str(addr))]
        else:
            req = [_m(_pl("ip6", "saddr"), "::", "!="), _m(_pl("icmpv6", "type"), 135)]
            req.append(_m(_raw(64, 128), _int(addr.packed)))
        out.append((req, V.NO_SHARED_LNID))
    if g.guarded:  # an NA's target: one of its own, or dropped (last: the accepts end the chain)
        for n in sorted(g.nets, key=str):
            if n.version == 6:
                bits = n.network_address.packed[: (n.prefixlen + 7) // 8]
                head = int.from_bytes(bits, "big") >> (len(bits) * 8 - n.prefixlen) if n.prefixlen else 0
                match = _m(_raw(64, n.prefixlen), hex(head)) if n.prefixlen else None
                out.append(([_m(_pl("icmpv6", "type"), 136), *([match] if match else [])], ""))
        out.append(([_m(_pl("icmpv6", "type"), 136)], V.ND_SPOOF))
    return out


class MacvtapAddrGuard:
    """The table `netdev hostvlan_addr` (see module doc)."""

    def __init__(self) -> None:
        self.rev = -1  # the guard revision the table enforces (-1: unknown, read it back)
        self._have: dict[PortName, _Port] | None = None
        self._staged: dict[PortName, _Port] | None = None

    @staticmethod
    def want(facts: GuardFacts) -> dict[PortName, _Port]:
        answered: dict[PortName, set[IPAddr]] = {}
        for port, addr, _ in facts.answers:
            answered.setdefault(port, set()).add(addr)
        out: dict[PortName, _Port] = {}
        for port, g in facts.ports.items():
            own = {n.network_address for n in g.nets if n.prefixlen == n.max_prefixlen}
            noshare = frozenset(facts.registered - answered.get(port, set()) - own)
            if g.guarded or noshare:
                out[port] = (g, noshare)
        return out

    def cmds(self, facts: GuardFacts, have_chains: set[str] | None) -> list[Cmd]:
        """The transaction to `facts`; `have_chains`: the chains the table holds when `_have` is unknown."""
        want = self.want(facts)
        have = self._have
        cmds: list[Cmd] = [{"add": {"table": {"family": "netdev", "name": TABLE}}}]
        if have is None:
            gone = [c for c in have_chains or set() if c.startswith("g_") and PortName(c[2:]) not in want]
            changed = set(want)
        else:
            gone = [f"g_{p}" for p in have if p not in want]
            changed = {p for p in want if have.get(p) != want[p]}
        cmds += [{"delete": {"chain": {**T, "name": c}}} for c in sorted(gone)]
        for port in sorted(changed):
            g, noshare = want[port]
            name = f"g_{port}"
            chain = {**T, "name": name, "type": "filter", "hook": "egress", "dev": port, "prio": PRIORITY - 1}
            cmds += [{"add": {"chain": {**chain, "policy": "accept"}}}, {"flush": {"chain": {**T, "name": name}}}]
            rules: list[Rule] = [[_m(_pl("ether", "saddr"), g.mac, "!="), {"accept": None}]]
            for match, reason in port_rules(port, g, noshare):
                if reason:
                    counter = f"{port}:{reason}"
                    cmds.append({"add": {"counter": {**T, "name": counter}}})
                    rules.append([*match, {"counter": counter}, {"drop": None}])
                else:
                    rules.append([*match, {"accept": None}])
            cmds += [{"add": {"rule": {**T, "chain": name, "expr": r}}} for r in rules]
        self._staged = want
        return cmds if gone or changed else []

    def commit(self, rev: int) -> None:
        if self._staged is not None:
            self._have, self._staged, self.rev = self._staged, None, rev

    def forget(self) -> None:
        self._have, self._staged, self.rev = None, None, -1


class GuardedMacvtapFilter(MacvtapFilter):
    """The macvtap back end with the address guard (`MacvtapAddrGuard`), one transaction per
    apply that changes it (after the back end's own)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addr = MacvtapAddrGuard()

    def _listing(self) -> list[dict[str, Any]]:
        """This part's table, listed by name (nft 1.0.6 may hang listing `counters` of a family)."""
        try:
            return list(self.table.nft.list(f"table netdev {TABLE}").get("nftables", []))
        except DatapathError as exc:
            if exc.errno == errno.ENOENT:
                return []
            raise

    def _chains(self) -> set[str]:
        return {str(i["chain"]["name"]) for i in self._listing() if "chain" in i}

    def apply(self) -> ApplyReport:
        report = super().apply()
        if self.addr.rev != self._guard_rev:
            try:
                chains = self._chains() if self.addr.rev == -1 else None
                cmds = self.addr.cmds(self.guard_facts(), chains)
                if cmds:
                    self.table.nft.run(cmds)
                self.addr.commit(self._guard_rev)
            except BaseException:
                self.addr.forget()
                raise
        return report

    def drops(self) -> dict[tuple[str, str], int]:
        out = super().drops()
        for item in self._listing():
            c = item.get("counter")
            if c and ":" in str(c["name"]) and c.get("packets"):
                port, reason = str(c["name"]).rsplit(":", 1)
                out[(port, reason)] = out.get((port, reason), 0) + int(c["packets"])
        return out

    def _remove(self) -> None:
        self.addr.forget()
        t = {"family": "netdev", "name": TABLE}
        self.table.nft.run([{"add": {"table": t}}, {"delete": {"table": t}}])
        super()._remove()
