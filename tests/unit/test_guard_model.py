"""The address guard's model (issue 13): its rules, the parser, and the compiled guard facts.

Property-based: random host states (addresses, roles, shared VIPs, LNIDs incl. `global`) and
random frames (ARP, IPv4, IPv6 + ICMPv6 ND/RA/MLD, UDP DHCP ports, 0-3 VLAN tags, cut short at
random) check that `frames.parse` never raises, that the guard's invariants hold, and that a
decision made from `guardfacts.GuardFacts` alone (what every back end enforces) equals the
model's `verdict.send_frame` + `guard.answer`.
"""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from hostvlan.model import frames as fr
from hostvlan.model import guard, verdict
from hostvlan.model.addresses import Addrs, link_local
from hostvlan.model.guardfacts import compile_guard, diff
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding

MACS = [Mac(f"52:54:00:00:00:0{i}") for i in range(1, 7)]
V4 = [ipaddress.IPv4Address(f"10.0.0.{i}") for i in range(1, 5)] + [ipaddress.IPv4Address("10.1.0.2")]
V6 = [ipaddress.IPv6Address(f"fd00::{i}") for i in range(1, 5)]
NETS = [ipaddress.ip_network(f"{a}/{a.max_prefixlen}") for a in V4[:4] + V6] + [ipaddress.ip_network("10.1.0.0/30")]
PORTS = [PortName(f"p{i}") for i in range(4)]
UPLINK = PortName("up0")
UPLINK_MAC = Mac("02:00:00:00:0f:01")


@st.composite
def states(draw: st.DrawFn) -> FilterState:
    lnids = st.frozensets(st.sampled_from([Lnid(1), Lnid(2), Lnid(3), GLOBAL]), max_size=2)
    entries = {m: draw(lnids) for m in draw(st.lists(st.sampled_from(MACS), min_size=1, unique=True))}
    entries[UPLINK_MAC] = frozenset({GLOBAL})
    macs = [m for m in entries if m != UPLINK_MAC]
    bindings = {UPLINK: PortBinding(UPLINK, UPLINK_MAC, uplink=True)}
    for port in draw(st.lists(st.sampled_from(PORTS), unique=True, max_size=4)):
        bindings[port] = PortBinding(port, draw(st.sampled_from(macs)))
    addresses: dict[Mac, Addrs] = {}
    for m in macs:
        nets = draw(st.frozensets(st.sampled_from(NETS), max_size=4))
        if nets:
            shared = draw(st.frozensets(st.sampled_from(sorted(nets, key=str))))
            addresses[m] = Addrs(nets, shared, draw(st.booleans()), draw(st.booleans()))
    return FilterState(entries=entries, bindings=bindings, addresses=addresses)


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


@st.composite
def frames(draw: st.DrawFn, state: FilterState) -> tuple[PortName, bytes]:
    port = draw(st.sampled_from(sorted(state.bindings)))
    own = state.bindings[port].mac
    mac = st.sampled_from([own, own, *MACS[:2], Mac("00:00:00:00:00:00")])
    v4 = st.sampled_from([*V4, ipaddress.IPv4Address(0)])
    v6 = st.sampled_from([*V6, link_local(own), ipaddress.IPv6Address(0)])
    src = draw(st.sampled_from([own, own, own, MACS[0]]))
    kind = draw(st.sampled_from(["arp", "ip4", "ip6udp", "nd", "icmp6", "other"]))
    if kind == "arp":
        spa, tpa = draw(v4), draw(v4)
        body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, draw(st.sampled_from([1, 2])))
        body += _mac(draw(mac)) + spa.packed + bytes(6) + tpa.packed
        etype = 0x0806
    elif kind == "ip4":
        sport, dport = draw(st.sampled_from([(68, 67), (67, 68), (1000, 2000), (1000, 67)]))
        frag = draw(st.sampled_from([0, 0, 0x2000, 0x0010]))
        ip = struct.pack("!BBHHHBBH", 0x45, 0, 28, 0, frag, 64, 17, 0) + draw(v4).packed + V4[0].packed
        body, etype = ip + struct.pack("!HHHH", sport, dport, 8, 0), 0x0800
    else:
        etype = 0x86DD
        if kind == "ip6udp":
            nh, l4 = 17, struct.pack("!HHHH", *draw(st.sampled_from([(546, 547), (547, 546), (1, 2)])), 8, 0)
        elif kind == "nd":
            typ = draw(st.sampled_from([fr.ND_NS, fr.ND_NA]))
            l4 = struct.pack("!BBHI", typ, 0, 0, 0) + draw(v6).packed
            for _ in range(draw(st.integers(0, 2))):
                l4 += bytes([draw(st.sampled_from([1, 2])), 1]) + _mac(draw(mac))
            nh = 58
        elif kind == "icmp6":
            nh, l4 = 58, struct.pack("!BBHI", draw(st.sampled_from([128, 131, 134, 137, 143])), 0, 0, 0)
        else:
            nh, l4 = 6, bytes(20)
        if draw(st.booleans()) and nh == 58:  # behind a hop-by-hop header
            l4, nh = bytes([nh, 0]) + bytes(6) + l4, 0
        body = struct.pack("!IHBB", 0x60000000, len(l4), nh, 255) + draw(v6).packed + V6[0].packed + l4
    if kind == "other":
        body, etype = bytes(46), 0x88B5
    head = b"\xff" * 6 + _mac(src)
    for _ in range(draw(st.integers(0, 3))):
        head += struct.pack("!HH", draw(st.sampled_from([0x8100, 0x88A8])), 5)
    data = head + struct.pack("!H", etype) + body
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return port, data


@st.composite
def cases(draw: st.DrawFn) -> tuple[FilterState, PortName, bytes]:
    state = draw(states())
    port, data = draw(frames(state))
    return state, port, data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_parse_never_raises(data: bytes) -> None:
    p = fr.parse(data)
    assert p.bad or len(data) >= 14


@settings(max_examples=300, deadline=None)
@given(cases())
def test_guard_facts_decide_as_the_model(case: tuple[FilterState, PortName, bytes]) -> None:
    """What a back end decides from the compiled facts = the model, frame by frame."""
    state, port, data = case
    v = verdict.send_frame(state, port, data)
    ans = guard.answer(state, port, data) if v.allow else guard.Answer()
    facts = compile_guard(state)
    b = state.bindings[port]
    p = fr.parse(data)
    # the facts' decision, as hv_guard.c / ovs_guard / macvtap_addr make it
    if b.uplink or p.src != b.mac:
        assert v == verdict.send(state, port, p.src)
        return
    g = facts.ports[port]
    if g.guarded:
        drop = guard._guard(p, g.mac, Addrs(g.nets, router=g.router, dhcp_server=g.dhcp_server))
        if drop is not None:
            assert (v.allow, v.code) == (False, drop.code), v
            return
    addr = guard._request(p)
    held = [m for q, a, m in facts.answers if q == port and a == addr]
    if addr is not None and held:
        assert v.allow and ans.holder == held[0] and ans.reply is not None
    elif addr is not None and addr in facts.registered and ipaddress.ip_network(addr) not in g.nets:
        assert (v.allow, v.code) == (False, verdict.NO_SHARED_LNID) and ans.reply is None
    else:
        assert v.allow and ans.holder is None


@settings(max_examples=300, deadline=None)
@given(cases())
def test_a_guarded_port_never_sends_a_source_it_does_not_hold(case: tuple[FilterState, PortName, bytes]) -> None:
    state, port, data = case
    b = state.bindings[port]
    addrs = state.addresses.get(b.mac)
    p = fr.parse(data)
    if b.uplink or addrs is None or not verdict.send_frame(state, port, data).allow:
        return
    assert not p.bad
    if p.l3 == "arp":
        assert p.sha == b.mac and (p.spa == fr.IP4_ANY or addrs.holds(p.spa, b.mac))  # type: ignore[arg-type]
    if p.l3 in ("ip4", "ip6") and p.ip_src not in (fr.IP4_ANY, fr.IP6_ANY):
        assert p.ip_src is not None and addrs.holds(p.ip_src, b.mac)
    if p.icmp6 in (fr.ND_RA, fr.ND_REDIRECT):
        assert addrs.router
    if p.proto == fr.IPPROTO_UDP and p.sport in (fr.DHCP4_SERVER, fr.DHCP6_SERVER):
        assert addrs.dhcp_server
    assert all(lla == b.mac for _, lla in p.lla)


@settings(max_examples=300, deadline=None)
@given(cases())
def test_an_unguarded_port_keeps_the_mac_only_verdict(case: tuple[FilterState, PortName, bytes]) -> None:
    state, port, data = case
    b = state.bindings[port]
    if b.uplink or b.mac in state.addresses:
        return
    v, mac_only = verdict.send_frame(state, port, data), verdict.send(state, port, fr.parse(data).src)
    assert v.allow == mac_only.allow or v.code == verdict.NO_SHARED_LNID


@settings(max_examples=200, deadline=None)
@given(cases())
def test_answers_never_name_a_shared_address_or_the_asker(case: tuple[FilterState, PortName, bytes]) -> None:
    state, _, _ = case
    facts = compile_guard(state)
    for port, addr, mac in facts.answers:
        assert mac != state.bindings[port].mac
        assert ipaddress.ip_network(addr) not in state.addresses[mac].shared
        assert verdict.receive(state, mac, port).allow
    assert not diff(facts, compile_guard(state))


def test_the_reply_is_the_request_turned_round() -> None:
    a, r = MACS[0], MACS[1]
    state = FilterState(
        entries={a: frozenset({Lnid(1)}), r: frozenset({Lnid(1)})},
        bindings={PortName("p0"): PortBinding(PortName("p0"), a)},
        addresses={r: Addrs(frozenset({ipaddress.ip_network("10.0.0.9/32")}))},
    )
    req = b"\xff" * 6 + _mac(a) + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
    req += _mac(a) + V4[0].packed + bytes(6) + ipaddress.IPv4Address("10.0.0.9").packed
    ans = guard.answer(state, PortName("p0"), req)
    assert ans.reply is not None and ans.holder == r
    p = fr.parse(ans.reply)
    assert (p.dst, p.src, p.op, p.sha, str(p.spa), str(p.tpa)) == (a, r, 2, r, "10.0.0.9", "10.0.0.1")
    v = verdict.send_frame(state, PortName("p0"), req)
    assert v.allow and "answered on the host" in v.reason
