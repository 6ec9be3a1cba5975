"""One change = one small transaction; the paper's worst-case host table (8,192 MACs).

Timing bounds are generous on purpose (a shared, noisy machine) and per back end
(`WORST_CASE_LIMITS`); the measured numbers are printed and recorded as properties so
the real targets (full install ≤ 100 ms, one change ≤ 10 ms) can be reported separately.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest

from hostvlan.datapath.base import ApplyReport
from hostvlan.model.ids import Lnid, Mac, int_to_mac
from hostvlan.model.ports import PortBinding
from hostvlan.testbed.traffic import BROADCAST, frame

from .switchhost import OUTSIDE, SwitchHost, host_state, received

pytestmark = pytest.mark.root

REMOTE = Mac("02:aa:00:00:00:01")
MakeHost = Callable[[int], SwitchHost]


def _timed_apply(filt: Any) -> tuple[ApplyReport, float]:
    t0 = time.perf_counter()
    report = filt.apply()
    return report, time.perf_counter() - t0


def test_single_changes_are_small_transactions(make_host: MakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    host = make_host(4)
    a, b, c, d = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [2], d.mac: [2]}, {a.port: a.mac, b.port: b.mac, c.port: c.mac})
    host.boot(state)  # d runs unbound
    filt = host.new_filter()  # a restarted agent finds everything in place …
    filt.sync(state)
    assert filt.apply().elements == 0
    host.calls(filt)
    probe = host.probe()
    n_ports = len(host.vms) + 1  # VM ports and the uplink
    times: dict[str, float] = {}

    def change(label: str, step: Callable[[], None]) -> None:  # … and makes every change in one transaction
        step()
        report, times[label] = _timed_apply(filt)
        assert not report.full
        assert 0 < report.elements <= n_ports + 3, (label, report)
        calls = host.calls(filt)
        assert [kind for kind, _ in calls] == ["txn"], (label, calls)  # one transaction, and nothing else
        assert calls[0][1] <= host.max_txn(report.elements, ports=True), (label, calls, report)
        assert filt.read() == filt.desired(), label
        host.calls(filt)

    change("set_entry (join LNID 2)", lambda: filt.set_entry(a.mac, [Lnid(1), Lnid(2)]))
    change("set_entry (new remote MAC)", lambda: filt.set_entry(REMOTE, [Lnid(1)]))
    change("bind", lambda: filt.bind(PortBinding(d.port, d.mac)))
    host.bring_up(d)
    probe.send(c.name, frame(BROADCAST, c.mac, "c-after-bind"))
    got = received(probe.collect())
    assert got[d.name] == got[a.name] == got[OUTSIDE] == ["c-after-bind"] and got[b.name] == []

    host.take_down(d)
    change("unbind", lambda: filt.unbind(d.port))
    probe.send(c.name, frame(BROADCAST, c.mac, "c-after-unbind"))
    got = received(probe.collect())
    assert got[d.name] == [] and got[a.name] == ["c-after-unbind"]

    change("del_entry", lambda: filt.del_entry(REMOTE))
    with capsys.disabled():
        print(f"\n[hostvlan timing] {host.KIND} single changes, small host:")
        for label, secs in times.items():
            print(f"[hostvlan timing]   {label:28s} {secs * 1000:7.2f} ms")


N_LNIDS = 128
MACS_PER_LNID = 64
N_PORTS = 126


def _mac(lnid: int, i: int) -> Mac:
    return int_to_mac(0x02_10_00_00_00_00 + (lnid << 8) + i)


def test_worst_case_table_install_and_single_change_timing(
    make_host: MakeHost,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    host = make_host(0)
    ports = host.worst_case_ports([_mac(p + 1, 0) for p in range(N_PORTS)])
    entries = {_mac(lnid, i): [lnid] for lnid in range(1, N_LNIDS + 1) for i in range(MACS_PER_LNID)}
    bindings = {port: _mac(p + 1, 0) for p, port in enumerate(ports)}
    state = host_state(entries, bindings)
    assert len(state.entries) == N_LNIDS * MACS_PER_LNID + 1  # + the uplink's NIC

    filt = host.new_filter()
    filt.sync(state)
    report, full_secs = _timed_apply(filt)
    assert report.full
    txns = [size for kind, size in host.calls(filt) if kind == "txn"]
    assert len(txns) == 1  # the whole table in one transaction
    desired = filt.desired()
    assert len(desired.pairs) == N_PORTS * MACS_PER_LNID
    t0 = time.perf_counter()
    actual = filt.read()
    read_secs = time.perf_counter() - t0
    assert actual == desired
    layout = host.layout_numbers(N_PORTS)
    host.calls(filt)

    # 50 single changes: a new remote MAC joins / leaves an LNID that has a local port
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
        assert not r.full and r.elements == 2, r  # the MAC in `known` + one (MAC, port) pair
        # and the digest: OVS known, dst, pair, digest; nftables known, pairs, the digest flushed and set
        assert host.calls(filt) == [("txn", 4)]
    binds: list[float] = []
    for k in range(10):  # bind / unbind a port: its elements (macvtap: and its two hooked chains)
        if k % 2 == 0:
            filt.unbind(ports[k])
        else:
            filt.bind(PortBinding(ports[k - 1], bindings[ports[k - 1]]))
        binds.append(_timed_apply(filt)[1])
    assert filt.read() == filt.desired() == desired

    # an agent restart on this big table: one read-back, nothing to push
    restarted = host.new_filter()
    restarted.sync(state)
    restart_report, restart_secs = _timed_apply(restarted)
    assert restart_report.full and restart_report.elements == 0
    assert not [size for kind, size in host.calls(restarted) if kind == "txn"]
    t0 = time.perf_counter()
    restarted.set_entry(_mac(1, 201), [Lnid(1)])
    first_after_restart = restarted.apply()
    first_after_restart_secs = time.perf_counter() - t0
    assert first_after_restart.elements == 2

    t0 = time.perf_counter()
    filt.remove()
    remove_secs = time.perf_counter() - t0
    assert not host.installed()

    median = statistics.median(applies)
    numbers = layout | {
        "txn_size_full_install": txns[0],
        "elements_full_install": report.elements,
        "full_install_ms": full_secs * 1000,
        "read_back_ms": read_secs * 1000,
        "single_change_apply_median_ms": median * 1000,
        "single_change_apply_max_ms": max(applies) * 1000,
        "single_change_with_model_median_ms": statistics.median(totals) * 1000,
        "bind_or_unbind_median_ms": statistics.median(binds) * 1000,
        "restart_reconcile_ms": restart_secs * 1000,
        "first_change_after_restart_ms": first_after_restart_secs * 1000,
        "remove_ms": remove_secs * 1000,
    }
    for key, value in numbers.items():
        record_property(key, value)
    with capsys.disabled():
        print(f"\n[hostvlan timing] {host.KIND}: {len(entries)} entries, {N_LNIDS} LNIDs, {N_PORTS} bound ports:")
        for key, value in numbers.items():
            print(f"[hostvlan timing]   {key:36s} {value:10.2f}")
    full_limit, median_limit = host.WORST_CASE_LIMITS
    assert full_secs < full_limit
    assert median < median_limit
