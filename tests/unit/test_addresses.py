"""Addresses in the model and the control plane (issue 13, items 1 and 5's control-plane part).

Properties: for any sequence of batches of commands with addresses (reg --ip, addr add/del,
unreg, rm, move), each host's deltas applied to its view give `host_view` with the data
center's addresses, the manager's feed encoding decodes to the same views, an address-only
change reaches exactly the hosts holding that MAC's entry, and a refused command changes
nothing. Plus the validation of operator input, the compact text and the wire's round trip.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hostvlan import wire
from hostvlan.manager.feed import Encoder
from hostvlan.model.addresses import (
    ADDRESS_PATTERN,
    UNGUARDED,
    AddressError,
    Addrs,
    addrs_text,
    keys_overlap,
    link_local,
    net_key,
    parse_addrs_text,
    parse_net,
    parse_word,
)
from hostvlan.model.datacenter import Batch, DataCenter, HostDelta, ModelError, apply_delta, merge_delta
from hostvlan.model.hostview import HostView, host_view
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName

HOSTS = [HostId(f"h{i}") for i in range(4)]
MACS = [Mac(f"52:54:00:00:00:{i:02x}") for i in range(1, 7)]
LNIDS = [GLOBAL, Lnid(1), Lnid(2), Lnid(3)]
WHERE = st.sampled_from([*HOSTS, None])
PORT = st.sampled_from([None, PortName("p1")])
COMMON = [parse_net(x) for x in ("10.0.9.0/24", "10.0.9.5", "10.0.0.100", "fd00:1::/64")]  # collide on purpose


def nets_of(i: int) -> st.SearchStrategy[Any]:
    """Mostly MAC `i`'s own addresses (so that batches go through), sometimes common ones."""
    own = [parse_net(f"10.0.{i}.1"), parse_net(f"10.0.{i}.2"), parse_net(f"fd00::{i}:1")]
    return st.sampled_from(own * 3 + COMMON)


def addrs_of(i: int) -> st.SearchStrategy[Any]:
    return st.builds(
        lambda nets, router, dhcp: Addrs(frozenset(nets), frozenset(), router, dhcp),
        st.frozensets(nets_of(i), max_size=3),
        st.booleans(),
        st.booleans(),
    )


MAC_I = st.integers(0, len(MACS) - 1)


def home(i: int) -> st.SearchStrategy[Any]:
    """Where MAC `i` is registered: mostly its own place (a `reg` elsewhere is refused)."""
    where = HOSTS[i] if i < len(HOSTS) else None
    return st.sampled_from([where] * 6 + [*HOSTS, None])


commands = st.one_of(
    MAC_I.flatmap(
        lambda i: st.tuples(
            st.just("reg"), st.just(MACS[i]), st.sampled_from(LNIDS), home(i), PORT, st.none() | addrs_of(i)
        )
    ),
    MAC_I.flatmap(lambda i: st.tuples(st.just("addr_add"), st.just(MACS[i]), nets_of(i), st.booleans())),
    MAC_I.flatmap(lambda i: st.tuples(st.just("addr_del"), st.just(MACS[i]), nets_of(i))),
    st.tuples(st.just("unreg"), st.sampled_from(MACS), st.sampled_from(LNIDS)),
    st.tuples(st.just("rm"), st.sampled_from(MACS)),
    st.tuples(st.just("move"), st.sampled_from(MACS), WHERE, PORT),
)


def run(b: Batch, op: tuple[Any, ...]) -> None:
    if op[0] in ("addr_add", "addr_del", "move") and op[1] not in b.dc.table:
        return  # refused ("not registered", tested apart): most batches would be refused for it
    if op[0] == "reg":
        b.reg(op[1], op[2], op[3], op[4], op[5])
    elif op[0] == "addr_add":
        b.addr_add(op[1], op[2], op[3])
    elif op[0] == "addr_del":
        b.addr_del(op[1], op[2])
    elif op[0] == "unreg":
        b.unreg(op[1], op[2])
    elif op[0] == "rm":
        b.rm(op[1])
    else:
        b.move(op[1], op[2], op[3])


def reference(dc: DataCenter, h: HostId) -> HostView:
    return host_view(dc.table, dc.locations, h, dc.addresses())


def invariants(dc: DataCenter) -> None:
    """One owner per net unless shared; shared holders share an LNID; no overlap across MACs."""
    held = [(m, n, n in a.shared) for m, a in dc.addresses().items() for n in a.nets]
    for m1, n1, s1 in held:
        for m2, n2, s2 in held:
            if m1 == m2 or not keys_overlap(net_key(n1), net_key(n2)):
                continue
            assert n1 == n2 and s1 and s2, f"{n1} of {m1} and {n2} of {m2}"
            assert dc.table.lnids(m1) & dc.table.lnids(m2), f"shared {n1} across LNIDs"


def feed_view(enc: Encoder, dc: DataCenter, h: HostId) -> HostView:
    line = b"".join(enc.snapshot(dc.view_parts(h), 1))
    return wire.decode_snapshot(h, json.loads(line))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(commands, min_size=1, max_size=5), min_size=1, max_size=10))
def test_deltas_and_feed_carry_every_view_with_its_addresses(batches: list[list[tuple[Any, ...]]]) -> None:
    dc = DataCenter()
    for h in HOSTS:
        dc.add_host(h)
    enc = Encoder(dc)
    views = {h: dc.view(h) for h in HOSTS}
    agents = dict(views)  # what an agent holds, from the feed's delta lines
    for ops in batches:
        b = dc.batch()
        before = {h: reference(dc, h) for h in HOSTS}
        try:
            for op in ops:
                run(b, op)
        except ModelError:
            b.undo()
            for h in HOSTS:
                assert reference(dc, h) == before[h], "a refused batch left the data center changed"
            continue
        invariants(dc)
        deltas = b.deltas()
        for h in HOSTS:
            want = reference(dc, h)
            if h not in deltas or not deltas[h]:
                assert want == views[h], f"{h}'s view changed but it got no delta"
                continue
            line = b"".join(enc.delta(deltas[h], 2))
            agents[h] = apply_delta(agents[h], wire.decode_delta(json.loads(line)))
            d = dc.expand(deltas[h])
            assert d, "an empty delta was sent"
            views[h] = apply_delta(views[h], d)
            assert views[h] == want, f"{h}: applying the delta does not give its view"
            assert agents[h] == want, f"{h}: the feed's delta line does not give its view"
        for h in HOSTS:
            assert dc.view(h) == reference(dc, h)
            assert feed_view(enc, dc, h) == reference(dc, h)


def test_an_address_change_reaches_exactly_the_hosts_holding_the_mac() -> None:
    dc = DataCenter()
    for h in HOSTS:
        dc.add_host(h)
    a, b, c, r = MACS[:4]
    dc.reg(a, Lnid(1), HOSTS[0])
    dc.reg(b, Lnid(1), HOSTS[1])
    dc.reg(c, Lnid(2), HOSTS[2])
    dc.reg(r, GLOBAL, HOSTS[3])
    got = dc.addr_add(a, parse_net("10.0.0.1"))
    # h0 (a's own), h1 (LNID 1) and h3 (a global vNIC knows every MAC); not h2 (LNID 2 only)
    assert set(got) == {HOSTS[0], HOSTS[1], HOSTS[3]}
    for d in got.values():
        assert d == HostDelta(addresses={a: Addrs(frozenset({parse_net("10.0.0.1")}))})
    got = dc.addr_add(r, parse_net("10.0.0.254"))
    assert set(got) == set(HOSTS)  # a global MAC is in every view
    assert dc.addr_add(a, parse_net("10.0.0.1")) == {}  # already held: nothing to send
    got = dc.addr_del(a, parse_net("10.0.0.1"))
    assert {h: d.addresses for h, d in got.items()} == {h: {a: UNGUARDED} for h in (HOSTS[0], HOSTS[1], HOSTS[3])}
    assert dc.view(HOSTS[1]).addresses == {r: Addrs(frozenset({parse_net("10.0.0.254")}))}


def test_cross_data_center_refusals_change_nothing() -> None:
    dc = DataCenter()
    dc.add_host(HOSTS[0])
    a, b, c = MACS[:3]
    v4 = parse_net("10.0.0.1")
    dc.reg(a, Lnid(1), HOSTS[0], addrs=Addrs(frozenset({v4})))
    dc.reg(b, Lnid(1), HOSTS[0])
    dc.reg(c, Lnid(2), HOSTS[0])
    snap = (dc.addresses(), {h: dc.view(h) for h in HOSTS[:1]})
    with pytest.raises(ModelError, match=r"address 10\.0\.0\.1 is held by MAC 52:54:00:00:00:01"):
        dc.addr_add(b, v4)
    with pytest.raises(ModelError, match="is held by MAC"):
        dc.reg(b, Lnid(1), HOSTS[0], addrs=Addrs(frozenset({v4, parse_net("fd00::1")})))
    with pytest.raises(ModelError, match=r"overlaps 10\.0\.0\.1 held by MAC"):
        dc.addr_add(b, parse_net("10.0.0.0/24"))
    with pytest.raises(ModelError, match="not registered"):
        dc.addr_add(MACS[5], parse_net("10.9.9.9"))
    assert (dc.addresses(), {h: dc.view(h) for h in HOSTS[:1]}) == snap
    # shared: only among MACs sharing an LNID, and never beside a sole owner
    vip = parse_net("10.0.0.100")
    dc.addr_add(a, vip, shared=True)
    dc.addr_add(b, vip, shared=True)  # b shares LNID 1 with a
    with pytest.raises(ModelError, match="shares no LNID"):
        dc.addr_add(c, vip, shared=True)
    with pytest.raises(ModelError, match="registered --shared"):
        dc.addr_add(c, vip)
    dc.reg(b, Lnid(2), HOSTS[0])
    with pytest.raises(ModelError, match="shares no LNID"):
        dc.unreg(b, Lnid(1))  # b would leave the VIP's LNID
    assert vip in dc.addrs(b).shared and dc.table.lnids(b) == {Lnid(1), Lnid(2)}
    dc.rm(a)  # a MAC gone frees its addresses
    dc.addr_add(c, v4)
    assert dc.addrs(c).nets == {v4}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not-an-ip", "not an IPv4/IPv6"),
        ("10.0.0.1/24", "host bits set"),
        ("224.0.0.5", "multicast"),
        ("ff02::1", "multicast"),
        ("239.0.0.0/8", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("0.0.0.0/8", "unspecified"),
        ("0.0.0.0/0", "every address"),
        (7, "must be a string"),
        ("", "must be a string"),
    ],
)
def test_parse_net_refuses(text: Any, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        parse_net(text)


def test_parse_net_takes_hosts_and_prefixes() -> None:
    assert parse_net("10.0.0.5") == ipaddress.ip_network("10.0.0.5/32")
    assert parse_net(" fd00::5 ") == ipaddress.ip_network("fd00::5/128")
    assert parse_net("10.0.1.0/24").num_addresses == 256
    assert parse_net("fe80::1234") == ipaddress.ip_network("fe80::1234/128")


@given(st.ip_addresses())
def test_api_pattern_takes_every_canonical_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    import re

    if addr.version == 6 and addr.ipv4_mapped is not None:
        return  # written with a dotted quad: the API takes the hex form only
    assert re.fullmatch(ADDRESS_PATTERN, str(addr))
    assert re.fullmatch(ADDRESS_PATTERN, f"{addr}/{addr.max_prefixlen}")


nets = st.one_of(
    st.ip_addresses(v=4).map(lambda a: ipaddress.ip_network(a)),
    st.ip_addresses(v=6).map(lambda a: ipaddress.ip_network(a)),
    st.tuples(st.ip_addresses(v=4), st.integers(1, 32)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", False)),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 128)).map(lambda t: ipaddress.ip_network(f"{t[0]}/{t[1]}", False)),
)


@given(st.frozensets(nets, max_size=4), st.data(), st.booleans(), st.booleans())
def test_text_round_trip(ns: frozenset[Any], data: st.DataObject, router: bool, dhcp: bool) -> None:
    shared = data.draw(st.frozensets(st.sampled_from(sorted(ns, key=str)))) if ns else frozenset()
    a = Addrs(ns, shared, router, dhcp)
    text = addrs_text(a)
    assert parse_addrs_text(text) == a
    assert '"' not in text and "\\" not in text  # goes into JSON as is
    assert (text == "") == (a == UNGUARDED)


def test_holds_includes_the_eui64_link_local() -> None:
    mac = Mac("52:54:00:12:34:56")
    a = Addrs(frozenset({parse_net("10.0.0.1"), parse_net("fd00::/64")}))
    assert str(link_local(mac)) == "fe80::5054:ff:fe12:3456"
    assert a.holds(link_local(mac), mac) and a.holds(ipaddress.ip_address("fd00::9"), mac)
    assert not a.holds(ipaddress.ip_address("10.0.0.2"), mac)


def test_wire_round_trip_and_old_lines() -> None:
    h = HOSTS[0]
    a = Addrs(frozenset({parse_net("10.0.0.1"), parse_net("fd00::1")}), frozenset({parse_net("fd00::1")}), True)
    view = HostView(h, {MACS[0]: frozenset({Lnid(1)}), MACS[1]: frozenset({GLOBAL})}, {MACS[0]: None}, {MACS[0]: a})
    line = wire.encode_snapshot(view, 3)
    assert b'"addrs":{"52:54:00:00:00:01":"10.0.0.1 ~fd00::1 +router"}' in line
    assert wire.decode_snapshot(h, json.loads(line)) == view
    delta = HostDelta(entries={MACS[2]: frozenset({Lnid(1)})}, addresses={MACS[2]: a, MACS[0]: UNGUARDED})
    got = wire.decode_delta(json.loads(wire.encode_delta(delta, 4)))
    assert got == delta
    # a line of a manager from before addresses: no `addrs`, nothing guarded
    old = {"type": "snapshot", "revision": 1, "entries": {MACS[0]: [1]}, "local": {}}
    assert wire.decode_snapshot(h, old).addresses == {}
    assert wire.decode_delta({"type": "delta", "revision": 2, "entries": {MACS[0]: [1]}}).addresses == {}
    assert not wire.encode_snapshot(HostView(h, {MACS[0]: frozenset({Lnid(1)})}), 1).count(b"addrs")
    with pytest.raises(wire.WireError, match="addrs"):
        wire.decode_delta({"type": "delta", "revision": 2, "addrs": {MACS[0]: "10.0.0.300"}})
    with pytest.raises(wire.WireError, match="addrs"):
        wire.decode_delta({"type": "delta", "revision": 2, "addrs": {MACS[0]: 7}})


def test_merge_delta_keeps_the_latest_addresses() -> None:
    a = Addrs(frozenset({parse_net("10.0.0.1")}))
    acc = HostDelta(entries={MACS[0]: frozenset({Lnid(1)})}, addresses={MACS[0]: a})
    merge_delta(acc, HostDelta(removed={MACS[0]}))
    assert acc.addresses == {} and acc.removed == {MACS[0]}
    merge_delta(acc, HostDelta(entries={MACS[0]: frozenset({Lnid(1)})}, addresses={MACS[0]: a}))
    view = apply_delta(HostView(HOSTS[0], {MACS[0]: frozenset({Lnid(2)})}, {}, {MACS[0]: UNGUARDED}), acc)
    assert view.addresses == {MACS[0]: a}


def test_feed_lines_are_sent_in_pieces_joined_one_at_a_time() -> None:
    from hostvlan.manager.feed import chunks

    parts = [b"a" * 40000, b"b" * 40000, b"c", b"d" * 70000, b"e"]
    got = chunks(parts, 1 << 16)
    first = next(got)  # a generator: the rest is not joined yet
    assert len(first) == 80000
    assert [first, *got] == [b"a" * 40000 + b"b" * 40000, b"c" + b"d" * 70000, b"e"]
    assert list(chunks([b"x"])) == [b"x"] and list(chunks([])) == []


# the fast path of `parse_word` (the C parser) against `parse_net`: the same key and text, or the same refusal
@pytest.mark.parametrize(
    "word",
    [
        "10.0.0.5",
        "01.2.3.4",
        "1.02.3.4",
        "1.2.3",
        "1.2.3.256",
        " 10.0.0.5 ",
        "10.0.0.5\x00",
        "\u0661.2.3.4",
        "0.0.0.0",
        "127.0.0.1",
        "224.0.0.1",
        "255.255.255.255",
        "fd00::5",
        "FD00::ABCD",
        "fd00::0:102",
        "::ffff:10.0.0.5",
        "1::2:3:4:5:6:7:8",
        "1:2:3:4:5:6:7::",
        "fd00:::1",
        "00000::1",
        "::",
        "::1",
        "ff02::1",
        "fe80::1%eth0",
        "10.0.0.5:80",
    ],
)
def test_parse_word_fast_path_agrees_with_parse_net(word: str) -> None:
    try:
        net = parse_net(word)
    except AddressError as exc:
        with pytest.raises(AddressError) as got:
            parse_word(word)
        assert str(got.value) == str(exc)
        return
    key, text = parse_word(word)
    assert key == net_key(net)
    assert ipaddress.ip_network(text) == net
