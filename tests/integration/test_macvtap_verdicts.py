"""macvtap only: real frames through real macvtaps, where they show what macvlan does.

Every other verdict test runs on macvtap through `test_backend_verdicts`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator

import pytest

from hostvlan.model.ids import PortName
from hostvlan.model.ports import FilterState, PortBinding

from .macvtapnet import OUTSIDE_IP, Host, host_factory
from .switchhost import (
    EXT,
    OUTSIDE,
    OUTSIDE_MAC,
    UPLINK,
    UPLINK_MAC,
    check_model,
    flood_set,
    host_state,
    unicast,
)

pytestmark = pytest.mark.root


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def test_empty_table_passes_nothing(make_mvhost: Callable[[int], Host]) -> None:
    """Every port bound, no LNID table at all: no copy crosses, each one counted (macvlan
    makes a copy for each receiver, each meets that receiver's filter)."""
    host = make_mvhost(3)
    bindings = {vm.port: PortBinding(vm.port, vm.mac) for vm in host.vms}
    bindings[UPLINK] = PortBinding(UPLINK, UPLINK_MAC, uplink=True)
    state = FilterState(entries={}, bindings=bindings)
    filt = host.boot(state)
    assert filt.read() == filt.desired()

    frames = []
    for vm in host.vms:
        frames += flood_set(vm.name, vm.port, vm.mac, "empty")
        frames.append(unicast(vm.name, vm.port, vm.mac, OUTSIDE_MAC, "empty"))
        frames += [unicast(vm.name, vm.port, vm.mac, o.mac, "empty") for o in host.vms if o != vm]
    frames += flood_set(OUTSIDE, UPLINK, EXT, "empty")
    frames += [unicast(OUTSIDE, UPLINK, EXT, vm.mac, "empty") for vm in host.vms]
    got, want = check_model(host, filt, state, host.probe(), frames)

    assert got == {name: [] for name in got}
    assert all(ts == [] for ts in want.delivered.values())
    assert want.tx_dropped == {}
    assert sum(want.rx_dropped.values()) == 3 * (3 * 3 + 1 + 2) + 3 * 3 + 3  # every copy, counted once


def _ping(ns: str, ip: str) -> bool:
    got = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", ip], capture_output=True, timeout=30
    )
    return got.returncode == 0


def test_ping_between_guests_follows_the_lnids(make_mvhost: Callable[[int], Host]) -> None:
    """IP end to end through the stand-ins: same LNID pings, another LNID does not."""
    host = make_mvhost(3)
    a, b, c = host.vms
    state = host_state({a.mac: [1], b.mac: [1], c.mac: [2], OUTSIDE_MAC: [1]}, {vm.port: vm.mac for vm in host.vms})
    host.boot(state)
    assert _ping(a.ns, b.ip) and _ping(b.ns, a.ip)
    assert _ping(a.ns, OUTSIDE_IP)
    assert not _ping(a.ns, c.ip) and not _ping(c.ns, OUTSIDE_IP)
    assert PortName(c.port) in host.standins
