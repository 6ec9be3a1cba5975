"""model/hostview.py: the per-host partial table (SPEC §5) and the host's FilterState.

The key property: a host enforcing only its partial view decides every frame exactly as
the whole table would (SPEC §3 evaluated on the manager's full table).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from hostvlan.model.hostview import (
    HostView,
    Location,
    PortSeen,
    VnicBinding,
    bind_ports,
    bound_state,
    filter_state,
    host_lnids,
    host_view,
)
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName, tap_mac
from hostvlan.model.ports import PortBinding
from hostvlan.model.table import LnidTable
from hostvlan.model.verdict import receive, send

from .strategies import HOSTS, PROPERTY, UNBOUND_PORT, UNKNOWN_MACS, DataCenter, data_centers

H1, H2, H3 = HostId("h1"), HostId("h2"), HostId("h3")
MAC_A, MAC_B, MAC_C = Mac("52:54:00:00:00:0a"), Mac("52:54:00:00:00:0b"), Mac("52:54:00:00:00:0c")
L1, L2, L3 = Lnid(1), Lnid(2), Lnid(3)
G = frozenset({GLOBAL})


# ----- examples ---------------------------------------------------------------------------


def test_spec_example_host1_holds_mac_a_and_mac_c() -> None:
    table = LnidTable.of({MAC_A: {L1}, MAC_B: {L2}, MAC_C: {L1}})
    locs = {MAC_A: Location(H1), MAC_B: Location(H2), MAC_C: Location(H3)}
    view = host_view(table, locs, H1)
    assert view.host == H1
    assert dict(view.entries) == {MAC_A: {L1}, MAC_C: {L1}}
    assert dict(view.local) == {MAC_A: None}
    assert dict(host_view(table, locs, H2).entries) == {MAC_B: {L2}}


def test_registration_flow_fig5() -> None:
    """`reg 1 MAC1 EHS1` then `reg 1 MAC2 EHS2`: both hosts end with both entries."""
    mac1, mac2 = Mac("52:54:00:00:00:01"), Mac("52:54:00:00:00:02")
    table = LnidTable()
    locs: dict[Mac, Location] = {}
    table.add(mac1, L1)
    locs[mac1] = Location(H1, PortName("port1"))
    assert dict(host_view(table, locs, H1).entries) == {mac1: {L1}}
    assert dict(host_view(table, locs, H2).entries) == {}
    table.add(mac2, L1)
    locs[mac2] = Location(H2, PortName("port2"))
    v1, v2 = host_view(table, locs, H1), host_view(table, locs, H2)
    assert dict(v1.entries) == dict(v2.entries) == {mac1: {L1}, mac2: {L1}}
    assert dict(v2.local) == {mac2: "port2"}


def test_host_without_vms_holds_only_global_entries() -> None:
    router = Mac("52:54:00:00:00:fe")
    table = LnidTable.of({MAC_A: {L1}, router: {GLOBAL, L2}})
    view = host_view(table, {MAC_A: Location(H1), router: Location(None)}, H2)
    assert dict(view.entries) == {router: G}  # restricted to {global}
    assert dict(view.local) == {}


def test_entries_are_restricted_to_the_host_lnids_and_global() -> None:
    table = LnidTable.of({MAC_A: {L1}, MAC_B: {L1, L2, L3}, MAC_C: {L2, GLOBAL}})
    view = host_view(table, {MAC_A: Location(H1), MAC_B: Location(H2), MAC_C: Location(H2)}, H1)
    assert dict(view.entries) == {MAC_A: {L1}, MAC_B: {L1}, MAC_C: G}


def test_local_vnics_keep_their_full_lnid_sets() -> None:
    table = LnidTable.of({MAC_A: {L1, L2}, MAC_B: {L3}})
    view = host_view(table, {MAC_A: Location(H1), MAC_B: Location(H1)}, H1)
    assert dict(view.entries) == {MAC_A: {L1, L2}, MAC_B: {L3}}
    assert host_lnids(table, {MAC_A, MAC_B}) == {L1, L2, L3}


def test_host_with_global_vm_gets_every_mac() -> None:
    svc = Mac("52:54:00:00:00:5c")
    table = LnidTable.of({svc: {GLOBAL}, MAC_A: {L1}, MAC_B: {L2}, MAC_C: {L1, L3}})
    locs = {svc: Location(H1), MAC_A: Location(H1), MAC_B: Location(H2), MAC_C: Location(None)}
    view = host_view(table, locs, H1)
    assert set(view.entries) == {svc, MAC_A, MAC_B, MAC_C}
    assert view.entries[svc] == G
    assert view.entries[MAC_A] == {L1}
    assert view.entries[MAC_B] == frozenset()  # known, shares nothing here
    assert isinstance(view.entries[MAC_B], frozenset)
    assert view.entries[MAC_C] == {L1}
    # and the global VM's port receives from all of them, the LNID 1 port only from its peers
    state = filter_state(view, {svc: PortName("vsvc"), MAC_A: PortName("va")}, {})
    assert all(receive(state, s, PortName("vsvc")).allow for s in (MAC_A, MAC_B, MAC_C))
    assert not receive(state, MAC_B, PortName("va")).allow
    assert receive(state, MAC_C, PortName("va")).allow


def test_external_macs_are_like_any_mac() -> None:
    router, client = Mac("52:54:00:00:00:fe"), Mac("52:54:00:00:00:fd")
    table = LnidTable.of({MAC_A: {L1}, router: {GLOBAL}, client: {L1, L2}})
    locs = {MAC_A: Location(H1), router: Location(None), client: Location(None)}
    view = host_view(table, locs, H1)
    assert dict(view.entries) == {MAC_A: {L1}, router: G, client: {L1}}
    assert dict(view.local) == {MAC_A: None}
    assert dict(host_view(table, locs, H2).entries) == {router: G}


def test_unregistered_and_unplaced_macs() -> None:
    """A located MAC without LNID is not local; a registered MAC without location is still an entry."""
    table = LnidTable.of({MAC_A: {L1}, MAC_C: {L1}})
    view = host_view(table, {MAC_A: Location(H1), MAC_B: Location(H1)}, H1)
    assert dict(view.local) == {MAC_A: None}
    assert dict(view.entries) == {MAC_A: {L1}, MAC_C: {L1}}


# ----- filter_state ----------------------------------------------------------------------


def test_filter_state_binds_uplinks_as_global_and_exempt() -> None:
    nic = Mac("0c:00:00:00:00:01")
    view = HostView(H1, entries={MAC_A: frozenset({L1}), nic: frozenset({L1})}, local={MAC_A: None})
    state = filter_state(view, {MAC_A: PortName("va")}, {PortName("eth0"): nic})
    assert state.bindings[PortName("eth0")] == PortBinding(PortName("eth0"), nic, uplink=True)
    assert state.entries[nic] == G  # the NIC is global whatever the view said
    assert state.port_lnids(PortName("eth0")) == G
    assert send(state, PortName("eth0"), MAC_C).allow  # exempt
    assert receive(state, MAC_A, PortName("eth0")).allow
    assert receive(state, nic, PortName("va")).allow  # the NIC reaches every local vNIC


def test_uplink_only_passes_sources_of_the_partial_table() -> None:
    """The uplink is `global`, yet a remote source sharing nothing with this host is not in
    its partial table (SPEC §5), so the uplink drops it. Such a frame cannot originate on
    this host anyway: local vNICs pass the send check only with their own MACs."""
    nic = Mac("0c:00:00:00:00:01")
    table = LnidTable.of({MAC_A: {L1}, MAC_B: {L2}, nic: {GLOBAL}})
    locs = {MAC_A: Location(H1), MAC_B: Location(H2), nic: Location(None)}
    state = filter_state(host_view(table, locs, H1), {MAC_A: PortName("va")}, {PortName("eth0"): nic})
    assert receive(state, MAC_A, PortName("eth0")).allow
    dropped = receive(state, MAC_B, PortName("eth0"))
    assert not dropped.allow
    assert "not in this host" in dropped.reason


def test_filter_state_binds_local_macs_on_the_port_found() -> None:
    view = HostView(H1, entries={MAC_A: frozenset({L1}), MAC_B: frozenset({L1})}, local={MAC_A: None, MAC_B: None})
    state = filter_state(view, {MAC_A: PortName("va"), MAC_C: PortName("vc")}, {})
    assert dict(state.bindings) == {PortName("va"): PortBinding(PortName("va"), MAC_A)}
    # MAC_B's port was not found yet: nothing bound for it, and MAC_C is not local here
    assert state.port_lnids(PortName("vb")) is None
    assert state.port_lnids(PortName("vc")) is None
    assert not receive(state, MAC_A, PortName("vb")).allow
    assert "fail closed" in receive(state, MAC_A, PortName("vb")).reason
    assert dict(state.entries) == dict(view.entries)


def test_filter_state_explicit_port_wins() -> None:
    view = HostView(H1, entries={MAC_A: frozenset({L1})}, local={MAC_A: PortName("explicit")})
    state = filter_state(view, {MAC_A: PortName("found")}, {})
    assert set(state.bindings) == {PortName("explicit")}
    assert state.bindings[PortName("explicit")].mac == MAC_A
    assert not state.bindings[PortName("explicit")].uplink


def test_filter_state_does_not_mutate_the_view() -> None:
    nic = Mac("0c:00:00:00:00:01")
    entries = {MAC_A: frozenset({L1})}
    view = HostView(H1, entries=entries, local={MAC_A: None})
    filter_state(view, {}, {PortName("eth0"): nic})
    assert entries == {MAC_A: {L1}}


# ----- bind_ports: where each local vNIC is enforced, or why not ------------------------------
NIC = Mac("0c:00:00:00:00:01")
UPLINK = {PortName("eth0"): NIC}


def _view(local: dict[Mac, str | None]) -> HostView:
    return HostView(
        H1,
        entries={m: frozenset({L1}) for m in local},
        local={m: (PortName(p) if p else None) for m, p in local.items()},
    )


def test_bind_ports_given_port_whose_device_carries_the_vnic() -> None:
    seen = {PortName("vnet0"): PortSeen(tap_mac(MAC_A)), PortName("mvt0"): PortSeen(MAC_B, "same")}
    got = bind_ports(_view({MAC_A: "vnet0", MAC_B: "mvt0"}), {}, seen, UPLINK)
    assert got.report == {MAC_A: VnicBinding(PortName("vnet0")), MAC_B: VnicBinding(PortName("mvt0"))}
    assert got.enforce == {MAC_A: PortName("vnet0"), MAC_B: PortName("mvt0")}
    assert got.unbound() == {}


def test_bind_ports_given_port_that_does_not_exist_is_unbound_but_prebound() -> None:
    got = bind_ports(_view({MAC_A: "vnet7"}), {}, {}, UPLINK)
    assert got.report[MAC_A] == VnicBinding(None, "no such port vnet7")
    assert got.enforce == {MAC_A: PortName("vnet7")}  # its filter is there before its device (macvtap)


def test_bind_ports_mac_mismatch_is_not_bound() -> None:
    """A mistyped --port: the device carries another vNIC, so the vNIC stays unbound (fail closed);
    the other vNIC, discovered on that port, gets it."""
    seen = {PortName("vnet1"): PortSeen(tap_mac(MAC_B))}
    got = bind_ports(_view({MAC_A: "vnet1", MAC_B: None}), {MAC_B: PortName("vnet1")}, seen, UPLINK)
    assert got.report[MAC_A] == VnicBinding(None, f"port vnet1 carries MAC {tap_mac(MAC_B)}, not this vNIC's")
    assert got.report[MAC_B] == VnicBinding(PortName("vnet1"))
    assert got.enforce == {MAC_B: PortName("vnet1")}
    state = bound_state(_view({MAC_A: "vnet1", MAC_B: None}), got, UPLINK)
    assert {p: b.mac for p, b in state.bindings.items()} == {PortName("vnet1"): MAC_B, PortName("eth0"): NIC}


def test_bind_ports_macvtap_and_tap_conventions_differ() -> None:
    """A macvtap carries the vNIC MAC itself; a tap with the vNIC MAC (not fe:…) is not the vNIC's."""
    got = bind_ports(
        _view({MAC_A: "v0", MAC_B: "m0"}),
        {},
        {PortName("v0"): PortSeen(MAC_A, "tap"), PortName("m0"): PortSeen(tap_mac(MAC_B), "same")},
        UPLINK,
    )
    assert not got.report[MAC_A].bound and not got.report[MAC_B].bound
    assert got.enforce == {}


def test_bind_ports_ovs_attached_mac() -> None:
    seen = {PortName("p1"): PortSeen(MAC_B, "attached"), PortName("p2"): PortSeen(None, "attached")}
    got = bind_ports(_view({MAC_A: "p1", MAC_C: "p2"}), {}, seen, UPLINK)
    assert got.report[MAC_A] == VnicBinding(None, f"port p1 carries attached-mac {MAC_B}, not this vNIC's")
    assert got.report[MAC_C] == VnicBinding(PortName("p2"))  # no attached-mac: says nothing against it


def test_bind_ports_one_port_one_vnic() -> None:
    """Two vNICs given the same --port: the first (MAC order) has it, the other is told who."""
    seen = {PortName("vnet1"): PortSeen(None, "attached")}
    got = bind_ports(_view({MAC_B: "vnet1", MAC_A: "vnet1"}), {}, seen, UPLINK)
    assert got.report[MAC_A] == VnicBinding(PortName("vnet1"))
    assert got.report[MAC_B] == VnicBinding(None, f"port vnet1 is bound to {MAC_A}")
    assert got.enforce == {MAC_A: PortName("vnet1")}


def test_bind_ports_given_port_wins_over_a_discovered_one() -> None:
    seen = {PortName("given"): PortSeen(tap_mac(MAC_A)), PortName("found"): PortSeen(tap_mac(MAC_A))}
    got = bind_ports(_view({MAC_A: "given"}), {MAC_A: PortName("found")}, seen, UPLINK)
    assert got.enforce == {MAC_A: PortName("given")}


def test_bind_ports_discovery_and_uplinks() -> None:
    got = bind_ports(_view({MAC_A: None, MAC_B: None, MAC_C: "eth0"}), {MAC_A: PortName("vnet0")}, {}, UPLINK)
    assert got.report[MAC_A] == VnicBinding(PortName("vnet0"))
    assert got.report[MAC_B] == VnicBinding(None, "no port carries this vNIC")
    assert got.report[MAC_C] == VnicBinding(None, "port eth0 is the host's uplink")
    assert got.enforce == {MAC_A: PortName("vnet0")}


@PROPERTY
@given(dc=data_centers())
def test_bind_ports_agrees_with_filter_state_where_nothing_conflicts(dc: DataCenter) -> None:
    """With every found port carrying its vNIC and no given port shown by another vNIC, the
    bindings are those `filter_state` makes; every local vNIC is reported, bound or not."""
    for host in HOSTS:
        view = host_view(dc.table, dc.locations, host)
        found = dc.found_ports[host]
        seen = {p: PortSeen(tap_mac(m)) for m, p in found.items()}
        got = bind_ports(view, found, seen, dc.uplinks[host])
        assert set(got.report) == set(view.local)
        want = filter_state(view, found, dc.uplinks[host])
        have = bound_state(view, got, dc.uplinks[host])
        claims = [view.local[m] or found.get(m) for m in view.local]
        ports = [p for p in claims if p is not None]
        if len(ports) == len(set(ports)) and not set(ports) & set(dc.uplinks[host]):
            assert have == want
        else:
            assert set(have.bindings) <= set(want.bindings)
        for mac, b in got.report.items():
            assert b.bound == (b.port is not None)
            if b.bound:
                assert have.bindings[b.port].mac == mac  # type: ignore[index]


# ----- the key property -------------------------------------------------------------------


def whole_table_receive(dc: DataCenter, src: Mac, port_lnids: frozenset[Lnid]) -> bool:
    """SPEC §3 on the manager's full table."""
    if src not in dc.table:
        return False
    src_lnids = dc.table.lnids(src)
    return bool(src_lnids & port_lnids) or GLOBAL in src_lnids or GLOBAL in port_lnids


@PROPERTY
@given(dc=data_centers())
def test_partial_views_decide_like_the_whole_table(dc: DataCenter) -> None:
    sources = [*dc.memberships, *UNKNOWN_MACS]
    for host in HOSTS:
        state = filter_state(host_view(dc.table, dc.locations, host), dc.found_ports[host], dc.uplinks[host])
        local = [m for m in dc.local(host) if m in dc.table]
        scope = host_lnids(dc.table, set(local))

        # vNIC ports: exactly the whole-table verdict, for every source of the data center
        for vm in dc.local(host):
            port = dc.port_of[vm]
            bound = vm in dc.table and (dc.locations[vm].port is not None or vm in dc.found_ports[host])
            assert (port in state.bindings) == bound
            for src in sources:
                got = receive(state, src, port)
                want = bound and whole_table_receive(dc, src, dc.table.lnids(vm))
                assert got.allow == want, (host, src, port, got.reason)
            if bound:
                assert send(state, port, vm).allow
                assert not any(send(state, port, s).allow for s in sources if s != vm)
            else:
                assert not send(state, port, vm).allow

        # uplinks: global. Every frame that can reach them — from a local vNIC (the send
        # check pins its source) or sourced by a `global` MAC — passes as in the whole table.
        for up_port in dc.uplinks[host]:
            assert send(state, up_port, UNKNOWN_MACS[0]).allow
            for src in sources:
                allowed = receive(state, src, up_port).allow
                reachable = src in local or GLOBAL in dc.table.lnids(src)
                if reachable:
                    assert allowed == whole_table_receive(dc, src, G), (host, src, up_port)
                # The partial table (SPEC §5) knows only the sources that share an LNID
                # with this host: other remote sources cannot originate on this host.
                assert allowed == (src in dc.table and bool(dc.table.lnids(src) & (scope | G) or GLOBAL in scope))

        # ports of other hosts' vNICs and unknown ports are not bound here: fail closed
        for vm, port in dc.port_of.items():
            if dc.locations[vm].host != host:
                assert state.port_lnids(port) is None
        assert not any(receive(state, src, UNBOUND_PORT).allow for src in sources)


@PROPERTY
@given(dc=data_centers())
def test_view_entries_are_the_restriction(dc: DataCenter) -> None:
    everything = set(dc.table)
    for host in HOSTS:
        view = host_view(dc.table, dc.locations, host)
        local = {m for m in dc.local(host) if m in dc.table}
        assert set(view.local) == local
        scope = host_lnids(dc.table, local)
        assert scope == frozenset().union(*(dc.memberships[m] for m in local))
        for mac, lnids in view.entries.items():
            assert isinstance(lnids, frozenset)
            assert lnids == dc.table.lnids(mac) & (scope | G)
        if GLOBAL in scope:
            assert set(view.entries) == everything
        else:
            assert set(view.entries) == {m for m in everything if dc.table.lnids(m) & (scope | G)}
            assert all(view.entries.values())  # no empty entry without a global vNIC
        for mac in local:
            assert view.entries[mac] == dc.table.lnids(mac)  # full sets for local vNICs


@PROPERTY
@given(dc=data_centers(), data=st.data())
def test_far_away_changes_never_reach_a_host(dc: DataCenter, data: st.DataObject) -> None:
    far = Lnid(2**40 + 7)  # no vNIC of any host is in it
    newcomer = Mac("52:54:00:ff:00:01")
    before = {h: host_view(dc.table, dc.locations, h) for h in HOSTS}
    mac = data.draw(st.sampled_from([*dc.memberships, newcomer]))
    dc.table.add(mac, far)
    for h in HOSTS:
        after = host_view(dc.table, dc.locations, h)
        if dc.locations.get(mac, Location(None)).host == h:
            assert after.entries[mac] == dc.table.lnids(mac)  # a local vNIC's change does arrive
            assert far in after.entries[mac]
        elif GLOBAL not in host_lnids(dc.table, set(after.local)):
            assert after == before[h]
        else:
            assert far not in after.entries[mac]  # the MAC is known, the far LNID is not


@PROPERTY
@given(dc=data_centers(), data=st.data())
def test_migration_touches_only_source_and_destination(dc: DataCenter, data: st.DataObject) -> None:
    placed = [m for m, loc in dc.locations.items() if loc.host is not None and m in dc.table]
    if not placed:
        return
    vm = data.draw(st.sampled_from(placed))
    src_host = dc.locations[vm].host
    assert src_host is not None
    dst_host = data.draw(st.sampled_from([h for h in HOSTS if h != src_host]))
    before = {h: host_view(dc.table, dc.locations, h) for h in HOSTS}
    moved = {**dc.locations, vm: Location(dst_host)}
    after = {h: host_view(dc.table, moved, h) for h in HOSTS}
    for h in HOSTS:
        if h not in (src_host, dst_host):
            assert after[h] == before[h]
    assert vm in after[dst_host].local and vm not in after[src_host].local
    # the destination's table changes only if it lacked one of the VM's LNIDs
    if dc.table.lnids(vm) <= host_lnids(dc.table, set(before[dst_host].local)):
        assert after[dst_host].entries == before[dst_host].entries
    # and the source's only if no other local vNIC keeps those LNIDs there
    if dc.table.lnids(vm) <= host_lnids(dc.table, set(after[src_host].local)):
        assert after[src_host].entries == before[src_host].entries
