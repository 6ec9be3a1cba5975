"""Drop events of the nftables back ends without a kernel: the log rules `nft_table.logged`
puts before each counted drop, and the parsing of NFLOG packet messages (`kernel.nflog`)."""

from __future__ import annotations

import struct

from hostvlan.datapath.kernel import nflog
from hostvlan.datapath.kernel.nfnl import parse_attrs
from hostvlan.datapath.nft_table import (
    DROP,
    EVENT_GROUP,
    EVENT_LIMIT,
    IIF,
    OIF,
    logged,
    receive_chain,
    send_rules,
)
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE


def _logs(rules: list[list[dict[str, object]]]) -> list[tuple[int, str]]:
    return [(i, str(e["log"]["prefix"])) for i, r in enumerate(rules) for e in r if "log" in e]  # type: ignore[index]


def test_a_log_rule_precedes_each_counted_drop_and_never_an_accept() -> None:
    rx = receive_chain(IIF)
    out = logged(rx, IIF)
    assert [r for r in out if not any("log" in e for e in r)] == rx  # the filter's rules, unchanged, in order
    assert [p for _, p in _logs(out)] == [
        f"hv {UNKNOWN_SOURCE} iif",
        f"hv {NO_SHARED_LNID} iif",
        f"hv {UNBOUND_PORT} iif",
    ]
    for i, _ in _logs(out):
        log_rule, drop_rule = out[i], out[i + 1]
        assert drop_rule[-1] == DROP  # right before its drop, with the same matches
        assert log_rule[:-2] == [e for e in drop_rule if "match" in e]
        assert log_rule[-2] == {"limit": EVENT_LIMIT} and log_rule[-1]["log"]["group"] == EVENT_GROUP  # type: ignore[index]
    first = min(i for i, _ in _logs(out))
    assert all(r[-1] != {"accept": None} for r in out[first:])  # every accept comes before the first log
    tx = logged(send_rules(OIF), OIF)
    assert [p for _, p in _logs(tx)] == [f"hv {FORGED_SOURCE} oif", f"hv {UNBOUND_PORT} oif"]


def _a(kind: int, payload: bytes) -> bytes:
    return nflog._attr(kind, payload)


ETH = bytes.fromhex("525400000002") + bytes.fromhex("02deadbeef15") + b"\x88\xb5"


def test_an_egress_record_takes_its_macs_from_the_payload() -> None:
    attrs = parse_attrs(
        _a(nflog.NFULA_PACKET_HDR, struct.pack("!HBB", 0, 1, 0))
        + _a(nflog.NFULA_IFINDEX_OUTDEV, struct.pack("!I", 7))
        + _a(nflog.NFULA_PREFIX, b"hv forged_source oif\0")
        + _a(nflog.NFULA_PAYLOAD, ETH + b"x" * 20)
    )
    rec = nflog.parse_packet(attrs)
    assert rec == nflog.LogRecord("hv forged_source oif", 1, 0, 7, ETH[:6], ETH[6:12], 0x88B5)


def test_an_ingress_record_takes_them_from_the_hardware_header_and_a_bridge_port_wins() -> None:
    attrs = parse_attrs(
        _a(nflog.NFULA_PACKET_HDR, struct.pack("!HBB", 0x88B5, 0, 0))
        + _a(nflog.NFULA_IFINDEX_INDEV, struct.pack("!I", 2))
        + _a(nflog.NFULA_IFINDEX_PHYSINDEV, struct.pack("!I", 5))
        + _a(nflog.NFULA_HWHEADER, ETH)
        + _a(nflog.NFULA_PAYLOAD, b"y" * 20)
    )
    rec = nflog.parse_packet(attrs)
    assert rec is not None and (rec.indev, rec.src, rec.dst, rec.ethertype) == (5, ETH[6:12], ETH[:6], 0x88B5)
    assert nflog.parse_packet(parse_attrs(_a(nflog.NFULA_PAYLOAD, b"short"))) is None
