"""`hostvlan.wire`: every feed line and the status body, encoded and decoded.

The manager's fast feed encoder (`manager/feed.py`, shared bytes) must say exactly what
the reference encoder says, for any table.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostvlan import wire
from hostvlan.manager.feed import Encoder
from hostvlan.model.datacenter import DataCenter, HostDelta
from hostvlan.model.hostview import HostView
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName

from .strategies import LNID_POOL, MAC_POOL, PORT_POOL, PROPERTY

H1, H2 = HostId("EHS1"), HostId("EHS2")
M1, M2 = Mac("52:54:00:50:00:01"), Mac("52:54:00:50:00:02")


def test_lines_round_trip() -> None:
    view = HostView(H1, {M1: frozenset({Lnid(1), GLOBAL}), M2: frozenset()}, {M1: PortName("vnet0"), M2: None})
    line = wire.encode_snapshot(view, 7)
    assert line.endswith(b"\n") and b'"global"' in line
    snap = wire.decode_line(line)
    assert isinstance(snap, wire.Snapshot) and snap.revision == 7
    assert wire.snapshot_view(H1, snap) == view
    d = HostDelta({M1: frozenset({Lnid(2**63 - 1)})}, {M2}, {M1: None}, set())
    got = wire.decode_line(wire.encode_delta(d, 8))
    assert isinstance(got, wire.Delta) and wire.host_delta(got) == d
    assert b"unlocal" not in wire.encode_delta(d, 8), "empty fields are left out"
    assert wire.decode_line(wire.encode_heartbeat(9)) == wire.Heartbeat(9)
    assert wire.decode_delta({"type": "delta", "revision": 3}) == HostDelta()


def test_unknown_lines_are_skipped_and_bad_ones_named() -> None:
    assert wire.decode_feed({"type": "future-kind", "revision": 1}) is None
    for msg, field in [
        ([], "line"),
        ({"revision": 1}, "type"),
        ({"type": "delta"}, "revision"),
        ({"type": "delta", "revision": True}, "revision"),
        ({"type": "delta", "revision": 1, "removed": {}}, "removed"),
        ({"type": "snapshot", "revision": 1, "entries": []}, "entries"),
    ]:
        with pytest.raises(wire.WireError) as exc:
            wire.decode_feed(msg)
        assert exc.value.field == field, msg
    with pytest.raises(wire.WireError):
        wire.decode_line(b"{not json")
    with pytest.raises(wire.WireError) as exc:
        wire.snapshot_view(H1, wire.Snapshot(1, {M1: [0]}, {}))
    assert exc.value.field == "entries"
    with pytest.raises(wire.WireError):
        wire.decode_snapshot(H1, {"type": "delta", "revision": 1})


def _reg(dc: DataCenter, ops: list[tuple[Mac, Lnid, HostId | None, PortName | None]]) -> dict[HostId, Any]:
    b = dc.batch()
    for mac, lnid, host, port in ops:
        b.reg(mac, lnid, host, port)
    return b.deltas()


placements = st.tuples(st.sampled_from(MAC_POOL), st.sampled_from(LNID_POOL), st.sampled_from((H1, H2, None)))


@PROPERTY
@given(st.lists(placements, max_size=12), st.lists(placements, max_size=6), st.sampled_from(PORT_POOL))
def test_the_fast_encoder_says_what_the_reference_says(
    first: list[tuple[Mac, Lnid, HostId | None]], then: list[tuple[Mac, Lnid, HostId | None]], port: PortName
) -> None:
    dc = DataCenter()
    dc.add_host(H1)
    dc.add_host(H2)
    enc = Encoder(dc)
    where: dict[Mac, HostId | None] = {}

    def ops(items: list[tuple[Mac, Lnid, HostId | None]]) -> list[tuple[Mac, Lnid, HostId | None, PortName | None]]:
        out = []
        for mac, lnid, host in items:
            h = where.setdefault(mac, host)  # one place per MAC
            out.append((mac, lnid, h, port if h else None))
        return out

    _reg(dc, ops(first))
    for h in (H1, H2):
        fast = wire.decode_line(b"".join(enc.snapshot(dc.view_parts(h), 5)))
        assert isinstance(fast, wire.Snapshot)
        assert fast == wire.decode_line(wire.encode_snapshot(dc.view(h), 5))
    for bulk in _reg(dc, ops(then)).values():
        if bulk:
            fast = wire.decode_line(b"".join(enc.delta(bulk, 6)))
            assert fast == wire.decode_line(wire.encode_delta(dc.expand(bulk), 6))
