"""Atomic changes under live traffic, on every back end: no window where isolation opens or
allowed traffic stops.

Two streams run: one allowed (LNID 1), one that must never cross into LNID 1 (LNID 2).
The churn touches the very sets the streams are matched in, re-binds a running port to
another MAC and back, and binds/unbinds an idle port (on macvtap creating and deleting its
hooked chains) while every apply commits (an nftables batch; an OpenFlow bundle followed
by a purge of the datapath flow cache). How hard it drives is the host's `CHURN`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from hostvlan.model.ids import Lnid, Mac, int_to_mac
from hostvlan.model.ports import PortBinding
from hostvlan.testbed.traffic import BROADCAST, Received, frame

from .switchhost import SwitchHost, host_state

pytestmark = pytest.mark.root


def _remote(i: int) -> Mac:
    return int_to_mac(0x02_20_00_00_00_00 + i)


def test_applies_under_traffic_never_leak_nor_lose(make_host: Callable[[int], SwitchHost]) -> None:
    host = make_host(6)
    churn = host.CHURN
    ok_tx, ok_rx, x_tx, x_rx, spare, idle = host.vms  # LNID 1: ok_tx → ok_rx; LNID 2: x_tx → x_rx
    alt = Mac("02:20:ff:00:00:01")  # a second vNIC MAC the spare port is re-bound to
    state = host_state(
        {ok_tx.mac: [1], ok_rx.mac: [1], x_tx.mac: [2], x_rx.mac: [2], spare.mac: [3], alt: [4], idle.mac: [1]},
        {vm.port: vm.mac for vm in host.vms if vm != idle},
    )
    filt = host.boot(state)  # idle stays unbound (on macvtap: down)

    senders = host.probe(ok_tx.name, x_tx.name)
    watchers = host.probe(*(vm.name for vm in (ok_tx, ok_rx, x_rx, spare)))

    stop_send, stop_watch = threading.Event(), threading.Event()
    sent = Counter[str]()
    got: dict[str, list[Received]] = {vm.name: [] for vm in (ok_tx, ok_rx, x_rx, spare)}
    errors: list[BaseException] = []

    def send() -> None:
        try:
            i = 0
            while not stop_send.is_set():
                senders.send(ok_tx.name, frame(BROADCAST, ok_tx.mac, f"ok-{i}"))
                senders.send(x_tx.name, frame(BROADCAST, x_tx.mac, f"x-{i}"))
                sent["ok"] += 1
                sent["x"] += 1
                i += 1
                time.sleep(churn.pace)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def watch() -> None:
        try:
            while not stop_watch.is_set():
                for name, rs in watchers.collect(settle=0.02, deadline=0.2).items():
                    got[name].extend(rs)
            for name, rs in watchers.collect(settle=0.5).items():
                got[name].extend(rs)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=watch), threading.Thread(target=send)]
    for t in threads:
        t.start()
    reports = []
    try:
        while sent["ok"] < 50:  # traffic is flowing before the first change
            time.sleep(0.005)
        live: list[Mac] = []
        during = sent["ok"]
        for k in range(churn.applies):
            # unrelated churn that touches the very sets the streams are matched in:
            # remote MACs join LNIDs 1 and 2 (new (MAC, port) pairs at the streams' ports) and leave
            mac = _remote(k)
            filt.set_entry(mac, [Lnid(1 + k % 3)])
            live.append(mac)
            if len(live) > 8:
                filt.del_entry(live.pop(0))
            if k % 10 == 5:  # re-bind the spare port to another vNIC MAC, and back
                filt.bind(PortBinding(spare.port, alt if k % 20 == 5 else spare.mac))
            if k % 10 == 0:  # and move the spare VM between two LNIDs of its own
                filt.set_entry(spare.mac, [Lnid(3 if k % 20 else 5)])
            if k % 10 == 3:  # bind / unbind the idle port (macvtap: its hooked chains come and go)
                if k % 20 == 3:
                    filt.bind(PortBinding(idle.port, idle.mac))
                else:
                    filt.unbind(idle.port)
            reports.append(filt.apply())
            time.sleep(churn.gap)
        during = sent["ok"] - during
        after = sent["ok"]
        while sent["ok"] < after + 50:  # and keeps flowing after the last one
            time.sleep(0.005)
    finally:
        stop_send.set()
        threads[1].join()
        stop_watch.set()
        threads[0].join()

    assert not errors, errors
    assert during >= churn.applies, f"only {during} frames of the stream overlapped the applies"
    assert len(reports) == churn.applies and all(not r.full and r.elements > 0 for r in reports)
    assert filt.read() == filt.desired()

    tags = {name: Counter(r.tag for r in rs) for name, rs in got.items()}
    leaked = {
        ok_tx.name: [t for t in tags[ok_tx.name] if t.startswith("x-")],
        ok_rx.name: [t for t in tags[ok_rx.name] if t.startswith("x-")],
        x_rx.name: [t for t in tags[x_rx.name] if t.startswith("ok-")],
        spare.name: list(tags[spare.name]),
    }
    assert leaked == {ok_tx.name: [], ok_rx.name: [], x_rx.name: [], spare.name: []}, "cross-LNID frames delivered"
    ok = tags[ok_rx.name]
    want_ok = {f"ok-{i}" for i in range(sent["ok"])}
    assert set(ok) == want_ok, f"allowed stream lost {len(want_ok - set(ok))} of {sent['ok']} frames"
    assert all(n == 1 for n in ok.values()), "duplicated frames"
    # the cross-LNID stream was really sent and forwarded inside its own LNID
    assert {t for t in tags[x_rx.name] if t.startswith("x-")} == {f"x-{i}" for i in range(sent["x"])}
    frames = f"{sent['ok']} + {sent['x']} frames, {during} during"
    print(f"\n[hostvlan] {host.KIND} atomicity: {churn.applies} applies, {frames}")
