"""Drop counts and drop events of the nftables back ends (issue 15): macvtap and the bridge's
all-nftables flavour (`--send-check nft --receive-filter nft`), against the frames of
`test_drops._round` (one round: a -> c x4, forged x3 + x2 from a, a stranger from the wire
x2, d (no binding) broadcasting x3).

Counts are exact. Events are the log rules' (`nft_table.logged`, read over NFLOG): every
counted drop of the table's rules is logged while the rate limit (64 a second, burst 64)
holds, which a round (at most 19 drops) stays under; each names port, source, destination,
ethertype and reason.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from hostvlan.datapath.base import UNBOUND_PORT_NAME, DropEvent
from hostvlan.model.ids import Mac
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE
from hostvlan.testbed.traffic import BROADCAST, ETH_P_PROBE

from .backends import BACKENDS
from .switchhost import FORGED, OUTSIDE_MAC, SwitchHost, host_state
from .test_drops import STRANGER, _round

pytestmark = pytest.mark.root

KINDS = ["macvtap", "bridge-nft"]


@pytest.fixture(params=KINDS)
def host(request: pytest.FixtureRequest, prefix: str) -> Iterator[SwitchHost]:
    factory, _ = BACKENDS[request.param]
    with factory(prefix) as make:
        yield make(4)


def _nonzero(filt: Any) -> dict[tuple[str, str], int]:
    return {k: n for k, n in filt.drops().items() if n}


def _settled(filt: Any, want: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    deadline = time.monotonic() + 5
    got = _nonzero(filt)
    while got != want and time.monotonic() < deadline:
        time.sleep(0.1)
        got = _nonzero(filt)
    return got


def _events(filt: Any, after: int, n: int) -> list[DropEvent]:
    """Events above `after` once there are `n` (or after 5 s)."""
    deadline = time.monotonic() + 5
    got = filt.drop_events(after)
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        got = filt.drop_events(after)
    return list(got)


def _expected(host: SwitchHost) -> tuple[dict[tuple[str, str], int], Counter[tuple[str, str, Mac, Mac]]]:
    """(drops() of one round, its events as (reason, port, src, dst) -> how many)."""
    a, b, c, d = host.vms
    bcast = Mac(BROADCAST)
    want = {(c.port, NO_SHARED_LNID): 4, (a.port, FORGED_SOURCE): 5, (a.port, UNKNOWN_SOURCE): 2}
    events = Counter(
        {
            (NO_SHARED_LNID, c.port, a.mac, c.mac): 4,
            (FORGED_SOURCE, a.port, FORGED, b.mac): 3,
            (FORGED_SOURCE, a.port, FORGED, bcast): 2,
            (UNKNOWN_SOURCE, a.port, STRANGER, a.mac): 2,
        }
    )
    if host.KIND == "macvtap":  # d's macvtap is down (the contract): the guard drops what its VM sends, uncopied
        want[(d.port, UNBOUND_PORT)] = 3
    else:  # the bridge: d's port is up and unbound, its broadcasts dropped at the send check
        want[(UNBOUND_PORT_NAME, UNBOUND_PORT)] = 3 + 4  # + the learning bridge's flood of a -> c to d's port
        events[(UNBOUND_PORT, d.port, d.mac, bcast)] = 3
        events[(UNBOUND_PORT, d.port, a.mac, c.mac)] = 4
    return want, events


def test_drop_counts_and_events_match_the_frames_sent(host: SwitchHost) -> None:
    a, b, c, _ = host.vms
    entries = {a.mac: [1], b.mac: [1], c.mac: [2], OUTSIDE_MAC: [1]}
    filt: Any = host.boot(host_state(entries, {a.port: a.mac, b.port: b.mac, c.port: c.mac}))
    assert _nonzero(filt) == {}
    assert filt.drop_events() == []  # the first read subscribes, as the agent's does
    want, events = _expected(host)
    n = sum(events.values())
    _round(host)
    assert _settled(filt, want) == want
    got = _events(filt, 0, n)
    assert Counter((e.reason, e.port, e.src, e.dst) for e in got) == events
    assert [e.seq for e in got] == list(range(1, n + 1))
    assert {e.ethertype for e in got} == {ETH_P_PROBE}
    assert abs(got[-1].time - time.time()) < 30
    assert filt.drop_events(got[-1].seq) == []
    _round(host)  # cumulative counts; events go on numbering
    twice = {k: 2 * v for k, v in want.items()}
    assert _settled(filt, twice) == twice
    again = _events(filt, got[-1].seq, n)
    assert Counter((e.reason, e.port, e.src, e.dst) for e in again) == events
    assert again[0].seq == n + 1


def test_events_are_rate_limited_and_counts_exact(host: SwitchHost) -> None:
    """A flood of forged frames: every one counted, at most the limit's burst (and what refills
    meanwhile) logged."""
    a, b, _, _ = host.vms
    filt: Any = host.boot(host_state({a.mac: [1], b.mac: [1]}, {a.port: a.mac, b.port: b.mac}))
    filt.drop_events()
    probe = host.probe()
    from hostvlan.testbed.traffic import frame

    data = frame(b.mac, FORGED, "flood")
    start = time.monotonic()
    for _ in range(300):
        probe.send(a.name, data)
        time.sleep(max(host.PACE, 0.0005))
    elapsed = time.monotonic() - start
    probe.collect()
    want = {(a.port, FORGED_SOURCE): 300}
    assert _settled(filt, want) == want
    time.sleep(0.3)
    got = [e for e in filt.drop_events() if e.reason == FORGED_SOURCE]
    assert 64 <= len(got) <= 64 + 64 * (elapsed + 1) and len(got) < 300, (len(got), elapsed)
