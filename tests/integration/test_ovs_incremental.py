"""OVS: one change = one small bundle; the paper's worst-case host table (8,192 MACs).

Timing bounds are generous on purpose (a shared, noisy machine); the measured numbers
are printed and recorded as properties.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.base import ApplyReport
from hostvlan.datapath.ovs import OvsFilter
from hostvlan.model.ids import Lnid, Mac, PortName, int_to_mac
from hostvlan.model.ports import PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .hostnet import OUTSIDE, host_state
from .ovsnet import OvsHost, RecordingTools, ovs_hosts, received

pytestmark = pytest.mark.root

REMOTE = Mac("02:aa:00:00:00:01")


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def _timed_apply(filt: OvsFilter) -> tuple[ApplyReport, float]:
    t0 = time.perf_counter()
    report = filt.apply()
    return report, time.perf_counter() - t0


def _calls(filt: OvsFilter) -> list[tuple[tuple[str, ...], int]]:
    tools = filt._tools
    assert isinstance(tools, RecordingTools)
    calls = list(tools.calls)
    tools.calls.clear()
    return calls


def test_single_changes_are_one_small_bundle_each(
    make_host: Callable[..., OvsHost], capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_host(4)
    a, b, c, d = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [2], d.mac: [2]}, {a.port: a.mac, b.port: b.mac, c.port: c.mac})
    host.start(state)
    filt = host.new_filter(record=True)
    filt.sync(state)
    assert filt.apply().elements == 0
    _calls(filt)
    probe = host.probe()
    n_ports = len(host.vms) + 1
    times: dict[str, float] = {}

    def change(label: str, step: Callable[[], None]) -> None:
        step()
        report, times[label] = _timed_apply(filt)
        assert not report.full
        assert 0 < report.elements <= n_ports + 3, (label, report)
        calls = _calls(filt)
        bundles = [lines for args, lines in calls if args[:1] == ("bundle",)]
        assert len(bundles) == 1, (label, calls)  # one process, one transaction
        assert [args[0] for args, _ in calls] == ["bundle"], (label, calls)  # and nothing else
        # a flow or two per element, plus the forwarding / port flows it touches and the digest
        assert bundles[0] <= 3 * report.elements + 4, (label, bundles, report)
        assert filt.read() == filt.desired(), label
        _calls(filt)

    change("set_entry (join LNID 2)", lambda: filt.set_entry(a.mac, [Lnid(1), Lnid(2)]))
    change("set_entry (new remote MAC)", lambda: filt.set_entry(REMOTE, [Lnid(1)]))
    change("bind", lambda: filt.bind(PortBinding(d.port, d.mac)))
    probe.send(c.name, frame(BROADCAST, c.mac, "c-after-bind"))
    got = received(probe.collect())
    assert got[d.name] == got[a.name] == got[OUTSIDE] == ["c-after-bind"] and got[b.name] == []

    change("unbind", lambda: filt.unbind(d.port))
    probe.send(c.name, frame(BROADCAST, c.mac, "c-after-unbind"))
    got = received(probe.collect())
    assert got[d.name] == [] and got[a.name] == ["c-after-unbind"]

    change("del_entry", lambda: filt.del_entry(REMOTE))
    with capsys.disabled():
        print("\n[hostvlan timing] OVS single changes, small host:")
        for label, secs in times.items():
            print(f"[hostvlan timing]   {label:28s} {secs * 1000:7.2f} ms")


N_LNIDS = 128
MACS_PER_LNID = 64
N_PORTS = 126


def _mac(lnid: int, i: int) -> Mac:
    return int_to_mac(0x02_10_00_00_00_00 + (lnid << 8) + i)


def test_worst_case_table_install_and_single_change_timing(
    make_host: Callable[..., OvsHost],
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    host = make_host(0)  # the 126 bound ports need not exist: their facts are programmed all the same
    entries = {_mac(lnid, i): [lnid] for lnid in range(1, N_LNIDS + 1) for i in range(MACS_PER_LNID)}
    bindings = {PortName(f"vnet{p}"): _mac(p + 1, 0) for p in range(N_PORTS)}
    state = host_state(entries, bindings)
    assert len(state.entries) == N_LNIDS * MACS_PER_LNID + 1

    filt = host.new_filter(record=True)
    filt.sync(state)
    report, full_secs = _timed_apply(filt)
    assert report.full
    bundles = [lines for args, lines in _calls(filt) if args[:1] == ("bundle",)]
    assert len(bundles) == 1
    desired = filt.desired()
    assert len(desired.pairs) == N_PORTS * MACS_PER_LNID
    t0 = time.perf_counter()
    actual = filt.read()
    read_secs = time.perf_counter() - t0
    assert actual == desired
    n_flows = len(host.dump_flows())
    _calls(filt)

    applies: list[float] = []
    totals: list[float] = []
    for k in range(50):
        mac = _mac(1 + k % N_PORTS, 200)
        t0 = time.perf_counter()
        if k % 2 == 0:
            filt.set_entry(mac, [Lnid(1 + k % N_PORTS)])
        else:
            filt.del_entry(_mac(1 + (k - 1) % N_PORTS, 200))
        r, secs = _timed_apply(filt)
        totals.append(time.perf_counter() - t0)
        applies.append(secs)
        assert not r.full and r.elements == 2, r
        calls = _calls(filt)
        assert [(args[0], lines) for args, lines in calls] == [("bundle", 4)], calls  # known, dst, pair, digest
    assert filt.read() == filt.desired() == desired

    restarted = host.new_filter(record=True)
    restarted.sync(state)
    restart_report, restart_secs = _timed_apply(restarted)
    assert restart_report.full and restart_report.elements == 0
    assert not [args for args, _ in _calls(restarted) if args[:1] == ("bundle",)]
    t0 = time.perf_counter()
    restarted.set_entry(_mac(1, 201), [Lnid(1)])
    first_after_restart = restarted.apply()
    first_after_restart_secs = time.perf_counter() - t0
    assert first_after_restart.elements == 2

    median = statistics.median(applies)
    numbers = {
        "flows_installed": n_flows,
        "bundle_lines_full_install": bundles[0],
        "elements_full_install": report.elements,
        "full_install_ms": full_secs * 1000,
        "read_back_ms": read_secs * 1000,
        "single_change_apply_median_ms": median * 1000,
        "single_change_apply_max_ms": max(applies) * 1000,
        "single_change_with_model_median_ms": statistics.median(totals) * 1000,
        "restart_reconcile_ms": restart_secs * 1000,
        "first_change_after_restart_ms": first_after_restart_secs * 1000,
    }
    for key, value in numbers.items():
        record_property(key, value)
    with capsys.disabled():
        print(f"\n[hostvlan timing] OVS: {len(entries)} entries, {N_LNIDS} LNIDs, {N_PORTS} bound ports:")
        for key, value in numbers.items():
            print(f"[hostvlan timing]   {key:36s} {value:10.2f}")
    assert full_secs < 20.0
    assert median < 0.100
