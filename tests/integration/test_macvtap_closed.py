"""macvtap with the guard (`macvtap_guard.MacvtapGuard`, the factory's default), real frames through
the QEMU stand-ins: a macvtap created on the uplink and brought up while no agent runs (what libvirt
does when a domain starts) receives nothing and sends nothing; bound VMs keep talking; once a new
agent binds it, it works. Also: `drops()` counts per (port, reason) exactly, read while the guard's
prefix chains exist (nft 1.0.6 hangs listing counters then: no nft listing here may hang, each nft
command runs with a timeout), and an old guard's chains are upgraded in place.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.base import UNBOUND_PORT_NAME
from hostvlan.datapath.factory import build_backend
from hostvlan.datapath.kernel.nfnl import NFPROTO_NETDEV, NFT_MSG_DELRULE, RULE_CHAIN, RULE_TABLE, _str
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.datapath.macvtap_guard import GUARD_RULES, GUARD_SET, GUARD_TABLE
from hostvlan.model.ids import Mac
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, frame

from .macvtapnet import OUTSIDE, OUTSIDE_MAC, Host, host_factory, host_state, received
from .switchhost import FORGED, UPLINK, closed_port_traffic, counter_delta, drops

pytestmark = pytest.mark.root

UNKNOWN = Mac("02:aa:00:00:00:99")  # a source behind the wire no table holds


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _guarded(filt: object) -> MacvtapFilter:
    assert isinstance(filt, MacvtapFilter) and filt.guard is not None and filt.guard.guarded()
    return filt


def test_a_macvtap_raised_while_no_agent_runs_is_closed_until_bound(make_host: Callable[[int], Host]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    entries = {a.mac: [1], b.mac: [1], c.mac: [1], OUTSIDE_MAC: [1]}  # only c's binding is missing
    filt = _guarded(host.boot(host_state(entries, {a.port: a.mac, b.port: b.mac})))
    assert filt.read() == filt.desired()
    filt.close()  # the agent is gone
    host.stop_vm(c)
    host.del_macvtap(c.port)
    host.add_macvtap(c.port, c.mac)  # libvirt creates the macvtap and QEMU brings it up at once
    host.start_vm(c)
    probe = host.probe()
    got = closed_port_traffic(probe, a, b, c)
    assert got[c.name] == []
    assert got[b.name] == ["a-bcast", "a-to-b", "out-bcast"]  # bound VMs keep talking
    assert got[a.name] == ["out-bcast"]
    assert got[OUTSIDE] == ["a-bcast"]

    agent = _guarded(host.new_filter())  # an agent starts and binds c
    agent.sync(host_state(entries, {vm.port: vm.mac for vm in host.vms}))
    agent.apply()
    assert agent.read() == agent.desired()
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, c.mac, "c-bcast"))
    probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))
    probe.send(c.name, frame(b.mac, FORGED, "c-forged"))
    got = received(probe.collect())
    assert got[c.name] == ["a-to-c"]
    assert got[a.name] == ["c-bcast"] and got[b.name] == ["c-bcast"] and got[OUTSIDE] == ["c-bcast"]

    agent.remove()  # both tables in one transaction
    assert GUARD_TABLE not in {name for _, name in host.nfnl().tables()}
    assert host.leftovers() == []


def _nonzero(drops: dict[tuple[str, str], int], before: dict[tuple[str, str], int]) -> Counter[tuple[str, str]]:
    return Counter({k: v - before.get(k, 0) for k, v in drops.items() if v != before.get(k, 0)})


def test_drops_count_each_reason_at_its_port(make_host: Callable[[int], Host]) -> None:
    """Forged, cross-LNID, unknown-source and unbound-port frames, each counted once where it is
    dropped: the port it came in by (send check, guard) or would have left by (receive filter)."""
    host = make_host(4)
    a, b, c, d = host.vms  # a, b in LNID 1, c in LNID 2, d unbound but up (the guard closes it)
    entries = {a.mac: [1], b.mac: [1], c.mac: [2], d.mac: [1], OUTSIDE_MAC: [1]}
    filt = _guarded(host.boot(host_state(entries, {vm.port: vm.mac for vm in (a, b, c)})))
    host.set_up(d.port)  # its stand-in runs (boot): only the guard stands between it and the others
    before, (rx0, tx0) = filt.drops(), drops(filt)
    assert set(before) - {(d.port, UNBOUND_PORT)} == {
        (p, r) for p in (a.port, b.port, c.port, UPLINK) for r in (NO_SHARED_LNID, UNKNOWN_SOURCE, FORGED_SOURCE)
    } | {(UNBOUND_PORT_NAME, UNBOUND_PORT)}  # (d's own, if its stand-in wrote while d was down)
    probe = host.probe()
    probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))  # c: no shared LNID
    probe.send(a.name, frame(b.mac, FORGED, "a-forged"))  # a: forged
    probe.send(a.name, frame(BROADCAST, FORGED, "a-forged-bcast"))  # a: forged (before any copy)
    probe.send(OUTSIDE, frame(b.mac, UNKNOWN, "unknown-to-b"))  # b: unknown source
    probe.send(OUTSIDE, frame(BROADCAST, UNKNOWN, "unknown-bcast"))  # a, b, c: unknown; d: guard
    probe.send(d.name, frame(BROADCAST, d.mac, "d-bcast"))  # d: guard (egress)
    probe.send(d.name, frame(a.mac, d.mac, "d-to-a"))  # d: guard (egress)
    probe.send(a.name, frame(BROADCAST, a.mac, "a-bcast"))  # b, wire: pass; c: no shared LNID; d: guard
    got = received(probe.collect())
    assert got == {a.name: [], b.name: ["a-bcast"], c.name: [], d.name: [], OUTSIDE: ["a-bcast"]}
    assert _nonzero(filt.drops(), before) == {
        (c.port, NO_SHARED_LNID): 2,
        (a.port, FORGED_SOURCE): 2,
        (b.port, UNKNOWN_SOURCE): 2,
        (a.port, UNKNOWN_SOURCE): 1,
        (c.port, UNKNOWN_SOURCE): 1,
        (d.port, UNBOUND_PORT): 4,  # two copies to d, two frames from d: the guard knows its name
    }
    rx, tx = drops(filt)  # counters(): the same counts, by port and direction
    assert counter_delta(rx0, rx) == {c.port: 3, b.port: 2, a.port: 1}  # the guard's: in drops() only
    assert counter_delta(tx0, tx) == {a.port: 2}
    # a fresh back end (an agent restart) reads the same counts
    assert host.new_filter().drops() == filt.drops()


def test_no_nft_listing_of_the_back_end_touches_the_prefix_chains(make_host: Callable[[int], Host]) -> None:
    """Proof by test of the scoping: with the guard in place, `nft list ruleset` hangs (nft 1.0.6),
    while every read the back end makes (its table by name, sets by name, counters over
    nfnetlink) answers; cleanup finds and removes both tables."""
    host = make_host(1)
    filt = _guarded(host.boot(host_state({host.vms[0].mac: [1]}, {host.vms[0].port: host.vms[0].mac})))
    nft_version = subprocess.run(["nft", "--version"], capture_output=True, text=True, check=True).stdout
    try:  # times out on nft 1.0.6
        subprocess.run(["ip", "netns", "exec", host.ns, "nft", "list", "ruleset"], capture_output=True, timeout=5)
        hangs = False
    except subprocess.TimeoutExpired:
        hangs = True
    assert hangs == ("v1.0.6" in nft_version), nft_version
    assert filt.read() == filt.desired() and filt.audit().elements == 0
    assert host.nft_cli("list", "table", "netdev", "hostvlan").returncode == 0
    assert host.nft_cli("list", "set", "netdev", GUARD_TABLE, GUARD_SET).returncode == 0
    assert sorted(host.clean()) == sorted(["nft table netdev hostvlan", f"nft table netdev {GUARD_TABLE}"])
    assert host.leftovers() == []


def test_guard_chains_of_the_old_layout_are_upgraded_in_place(make_host: Callable[[int], Host]) -> None:
    """Guard chains whose rules are not this layout's (the first guard had one rule, no counter) keep
    their hook and get this layout's rules in one transaction."""
    host = make_host(2)
    a, b = host.vms
    filt = _guarded(host.boot(host_state({a.mac: [1], b.mac: [1]}, {a.port: a.mac})))
    assert filt.guard is not None
    nfnl = filt.guard.nfnl
    chains = ("guard_in", "guard_out")
    assert [nfnl.rule_count(NFPROTO_NETDEV, GUARD_TABLE, c) for c in chains] == [GUARD_RULES] * 2
    where = [_str(RULE_TABLE, GUARD_TABLE) + _str(RULE_CHAIN, c) for c in chains]
    nfnl.send_batch([(NFT_MSG_DELRULE, 0, NFPROTO_NETDEV, w) for w in where])  # rules of another layout: none
    assert not filt.guard.guarded() and filt.read() is None
    filt.audit()  # reinstalls the table; the chains stay, their rules are rewritten
    assert filt.guard.guarded() and filt.read() == filt.desired()
    host.set_up(b.port)  # unbound, up: closed
    probe = host.probe()
    probe.send(a.name, frame(BROADCAST, a.mac, "a-bcast"))
    probe.send(b.name, frame(BROADCAST, b.mac, "b-bcast"))
    assert received(probe.collect()) == {a.name: [], b.name: [], OUTSIDE: ["a-bcast"]}


def test_an_agent_without_the_guard_removes_an_earlier_agents_guard(make_host: Callable[[int], Host]) -> None:
    """`--no-macvtap-guard` after a guarded agent: its install drops the guard's table in the same
    batch (its set would no longer follow the bindings), and a port bound then works."""
    host = make_host(2)
    a, b = host.vms
    entries = {a.mac: [1], b.mac: [1], OUTSIDE_MAC: [1]}
    _guarded(host.boot(host_state(entries, {a.port: a.mac}))).close()
    with netns.inside(host.ns):
        plain = build_backend(host.spec(), guard=False)
    host._closers.append(plain.close)
    plain.sync(host_state(entries, {a.port: a.mac, b.port: b.mac}))
    plain.apply()
    assert plain.read() == plain.desired()
    assert GUARD_TABLE not in {name for _, name in host.nfnl().tables()}
    host.set_up(b.port)
    probe = host.probe()
    probe.send(b.name, frame(BROADCAST, b.mac, "b-bcast"))
    assert received(probe.collect()) == {a.name: ["b-bcast"], b.name: [], OUTSIDE: ["b-bcast"]}
