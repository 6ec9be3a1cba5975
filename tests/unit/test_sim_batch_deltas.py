"""The calc graph's batches, as the manager and the simulated hosts use them at scale.

Property: for any sequence of commands grouped into batches, applying each batch's
per-host deltas (whole LNIDs expanded) to every host's view gives exactly
`hostview.host_view` of the new data center, and a host whose view did not change
gets nothing (the "0 bytes to unaffected hosts" of the benchmark). A refused command
undoes its whole batch.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from hostvlan.model.datacenter import Batch, DataCenter, ModelError, apply_delta
from hostvlan.model.hostview import HostView, host_view
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName
from hostvlan.sim.layout import Layout

HOSTS = [HostId(f"h{i}") for i in range(4)]
MACS = [Mac(f"52:54:00:00:00:{i:02x}") for i in range(1, 9)]
LNIDS = [GLOBAL, Lnid(1), Lnid(2), Lnid(3), Lnid(4)]
WHERE = st.sampled_from([*HOSTS, None])
PORT = st.sampled_from([None, PortName("p1"), PortName("p2")])

commands = st.one_of(
    st.tuples(st.just("reg"), st.sampled_from(MACS), st.sampled_from(LNIDS), WHERE, PORT),
    st.tuples(st.just("reg"), st.sampled_from(MACS), st.sampled_from(LNIDS[1:]), st.sampled_from(HOSTS), PORT),
    st.tuples(st.just("unreg"), st.sampled_from(MACS), st.sampled_from(LNIDS)),
    st.tuples(st.just("rm"), st.sampled_from(MACS)),
    st.tuples(st.just("move"), st.sampled_from(MACS), WHERE, PORT),
)


def run(b: Batch, op: tuple[Any, ...]) -> None:
    if op[0] == "reg":
        b.reg(op[1], op[2], op[3], op[4])
    elif op[0] == "unreg":
        b.unreg(op[1], op[2])
    elif op[0] == "rm":
        b.rm(op[1])
    else:
        b.move(op[1], op[2], op[3])


def reference(dc: DataCenter, h: HostId) -> HostView:
    return host_view(dc.table, dc.locations, h)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(commands, min_size=1, max_size=6), min_size=1, max_size=12))
def test_batch_deltas_carry_every_view_exactly(batches: list[list[tuple[Any, ...]]]) -> None:
    dc = DataCenter()
    for h in HOSTS:
        dc.add_host(h)
    views = {h: dc.view(h) for h in HOSTS}
    for ops in batches:
        b = dc.batch()
        try:
            for op in ops:
                run(b, op)
        except ModelError:
            b.undo()
            for h in HOSTS:
                assert reference(dc, h) == views[h], "undo left the data center changed"
            continue
        deltas = b.deltas()
        for h in HOSTS:
            want = reference(dc, h)
            if h not in deltas:
                assert want == views[h], f"{h}'s view changed but it got no delta"
                continue
            d = dc.expand(deltas[h])
            old = views[h]
            assert d, "an empty delta was sent"
            for mac, lnids in d.entries.items():
                assert old.entries.get(mac) != lnids, f"{mac} set to the value {h} already holds"
            assert d.removed <= set(old.entries), "removed a MAC the host does not hold"
            assert not d.removed & set(d.entries)
            for mac, port in d.local.items():
                assert mac not in old.local or old.local[mac] != port
            assert d.unlocal <= set(old.local)
            views[h] = apply_delta(old, d)
            assert views[h] == want, f"{h}: applying the delta does not give its view"
        for h in HOSTS:  # a fresh snapshot is the same view
            assert dc.view(h) == reference(dc, h)


@settings(max_examples=100, deadline=None)
@given(st.lists(commands, min_size=1, max_size=10))
def test_single_commands_equal_batches_of_one(ops: list[tuple[Any, ...]]) -> None:
    """`DataCenter.reg` & co. return the expanded deltas of a batch of that one command."""
    a, b = DataCenter(), DataCenter()
    for h in HOSTS:
        a.add_host(h)
        b.add_host(h)
    for op in ops:
        batch = b.batch()
        try:
            run(batch, op)
        except ModelError:
            batch.undo()
            continue
        want = {h: b.expand(d) for h, d in batch.deltas().items()}
        if op[0] == "reg":
            got = a.reg(op[1], op[2], op[3], op[4])
        elif op[0] == "unreg":
            got = a.unreg(op[1], op[2])
        elif op[0] == "rm":
            got = a.rm(op[1])
        else:
            got = a.move(op[1], op[2], op[3])
        assert got == want


def test_table1_layout_in_pods_travels_as_whole_lnids() -> None:
    """A pod of hosts loaded in one batch: each host gets its tenants as whole LNIDs, nothing else."""
    lay = Layout(hosts=8, vms_per_host=4, vms_per_tenant=4)
    dc = DataCenter()
    for h in range(lay.hosts):
        dc.add_host(HostId(lay.host_name(h)))
    for pod in range(lay.pods):
        b = dc.batch()
        for op in lay.reg_ops(lay.hosts_of_pod(pod)):
            b.reg(Mac(op["mac"]), Lnid(op["lnid"]), HostId(op["host"]), PortName(op["port"]))
        deltas = b.deltas()
        assert set(deltas) == {HostId(lay.host_name(h)) for h in lay.hosts_of_pod(pod)}
        for h in lay.hosts_of_pod(pod):
            d = deltas[HostId(lay.host_name(h))]
            assert sorted(d.whole) == [lay.lnid(h, s) for s in range(lay.vms_per_host)]
            assert not d.delta.entries and not d.delta.removed
            assert d.delta.local == {lay.mac(h, s): lay.port(s) for s in range(lay.vms_per_host)}
    for h in range(lay.hosts):
        view = dc.view(HostId(lay.host_name(h)))
        assert len(view.entries) == lay.view_entries
        assert {m: tuple(sorted(v)) for m, v in view.entries.items()} == lay.pod_entries(lay.pod(h))
