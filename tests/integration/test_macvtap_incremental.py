"""macvtap: one change = one small transaction; the paper's worst-case host table (8,192 MACs).

Bounds are generous on purpose (a shared, noisy machine); the measured numbers are printed.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.base import ApplyReport
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.model.ids import Lnid, Mac, PortName, int_to_mac
from hostvlan.model.ports import PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .macvtapnet import OUTSIDE, Host, host_factory, host_state, received

pytestmark = pytest.mark.root

REMOTE = Mac("02:aa:00:00:00:01")


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _timed_apply(filt: MacvtapFilter) -> tuple[ApplyReport, float]:
    t0 = time.perf_counter()
    report = filt.apply()
    return report, time.perf_counter() - t0


def test_single_changes_are_small_transactions(
    make_mvhost: Callable[[int], Host], capsys: pytest.CaptureFixture[str]
) -> None:
    host = make_mvhost(4)
    a, b, c, d = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [2], d.mac: [2]}, {a.port: a.mac, b.port: b.mac, c.port: c.mac})
    filt = host.start(state)
    n_ports = len(host.vms) + 1
    times: dict[str, float] = {}
    batches: list[int] = []
    real_run = filt._nft.run

    def counting_run(cmds: list[dict[str, object]]) -> dict[str, object]:
        batches.append(len(cmds))
        return real_run(cmds)

    filt._nft.run = counting_run  # type: ignore[method-assign]

    def change(label: str, step: Callable[[], None]) -> ApplyReport:
        step()
        del batches[:]
        report, times[label] = _timed_apply(filt)
        assert not report.full
        assert 0 < report.elements <= n_ports + 3, (label, report)
        assert len(batches) == 1 and batches[0] <= 20, (label, batches)  # ONE small batch
        assert filt.read() == filt.desired(), label
        return report

    change("set_entry (join LNID 2)", lambda: filt.set_entry(a.mac, [Lnid(1), Lnid(2)]))
    change("set_entry (new remote MAC)", lambda: filt.set_entry(REMOTE, [Lnid(1)]))
    change("bind (+2 chains)", lambda: filt.bind(PortBinding(d.port, d.mac)))
    host.start_vm(d)
    probe = host.probe()
    probe.send(c.name, frame(BROADCAST, c.mac, "c-after-bind"))
    got = received(probe.collect())
    assert got[d.name] == got[a.name] == got[OUTSIDE] == ["c-after-bind"] and got[b.name] == []

    host.stop_vm(d)
    host.set_up(d.port, up=False)
    change("unbind (-2 chains)", lambda: filt.unbind(d.port))
    change("del_entry", lambda: filt.del_entry(REMOTE))
    with capsys.disabled():
        print("\n[hostvlan timing] macvtap single changes, small host:")
        for label, secs in times.items():
            print(f"[hostvlan timing]   {label:28s} {secs * 1000:7.2f} ms")


N_LNIDS = 128
MACS_PER_LNID = 64
N_PORTS = 126


def _mac(lnid: int, i: int) -> Mac:
    return int_to_mac(0x02_10_00_00_00_00 + (lnid << 8) + i)


def test_worst_case_table_install_and_single_change_timing(
    make_mvhost: Callable[[int], Host],
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    host = make_mvhost(0)
    ports = [PortName(f"macvtap{p}") for p in range(N_PORTS)]
    for p, port in enumerate(ports):  # real devices: every bound port gets its two hooks
        host.add_macvtap(port, _mac(p + 1, 0))
    entries = {_mac(lnid, i): [lnid] for lnid in range(1, N_LNIDS + 1) for i in range(MACS_PER_LNID)}
    bindings = {port: _mac(p + 1, 0) for p, port in enumerate(ports)}
    state = host_state(entries, bindings)
    assert len(state.entries) == N_LNIDS * MACS_PER_LNID + 1

    filt = host.new_filter()
    filt.sync(state)
    report, full_secs = _timed_apply(filt)
    assert report.full
    desired = filt.desired()
    assert len(desired.pairs) == N_PORTS * MACS_PER_LNID
    t0 = time.perf_counter()
    actual = filt.read()
    read_secs = time.perf_counter() - t0
    assert actual == desired
    items = host.kernel_table()
    assert items is not None
    assert sum(1 for i in items if "chain" in i and "hook" in i["chain"]) == 2 * N_PORTS + 1

    applies: list[float] = []
    for k in range(50):
        mac = _mac(1 + k % N_PORTS, 200)
        if k % 2 == 0:
            filt.set_entry(mac, [Lnid(1 + k % N_PORTS)])
        else:
            filt.del_entry(_mac(1 + (k - 1) % N_PORTS, 200))
        r, secs = _timed_apply(filt)
        applies.append(secs)
        assert not r.full and r.elements == 2, r
    binds: list[float] = []
    for k in range(10):  # bind / unbind a port: elements and two hooked chains
        port = ports[k]
        if k % 2 == 0:
            filt.unbind(port)
        else:
            filt.bind(PortBinding(ports[k - 1], bindings[ports[k - 1]]))
        binds.append(_timed_apply(filt)[1])
    assert filt.read() == filt.desired() == desired

    restarted = host.new_filter()
    restarted.sync(state)
    restart_report, restart_secs = _timed_apply(restarted)
    assert restart_report.full and restart_report.elements == 0

    t0 = time.perf_counter()
    filt.remove()
    remove_secs = time.perf_counter() - t0
    assert host.kernel_table() is None

    numbers = {
        "elements_full_install": report.elements,
        "full_install_ms": full_secs * 1000,
        "read_back_ms": read_secs * 1000,
        "single_change_apply_median_ms": statistics.median(applies) * 1000,
        "single_change_apply_max_ms": max(applies) * 1000,
        "bind_or_unbind_median_ms": statistics.median(binds) * 1000,
        "restart_reconcile_ms": restart_secs * 1000,
        "remove_ms": remove_secs * 1000,
    }
    for key, value in numbers.items():
        record_property(key, value)
    with capsys.disabled():
        print(f"\n[hostvlan timing] macvtap: {len(entries)} entries, {N_LNIDS} LNIDs, {N_PORTS} bound macvtaps:")
        for key, value in numbers.items():
            print(f"[hostvlan timing]   {key:36s} {value:10.2f}")
    assert full_secs < 3.0
    assert statistics.median(applies) < 0.050
