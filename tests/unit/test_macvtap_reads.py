"""The macvtap back end reads nothing nft 1.0.6 hangs on while the guard's prefix chains exist
(no `list ruleset/tables/counters/counter`: its table and sets by name, counters over
nfnetlink), and `drops()` maps its counters to (port, reason). No kernel: fakes for both."""

from __future__ import annotations

import struct
from typing import Any

from hostvlan.datapath.base import UNBOUND_PORT_NAME, TenantFilter
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel import nfnl
from hostvlan.datapath.macvtap_guard import GUARD_RULES, GUARD_TABLE, SEEN
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import PortBinding
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

SCOPED = {"table", "set", "map", "chain"}  # listings of one named object: never the whole ruleset


class FakeNft:
    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.batches = 0

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        self.batches += 1
        return {}

    def run_text(self, text: str) -> None:
        self.batches += 1

    def list(self, what: str) -> dict[str, Any]:
        kind, family, table = what.split()
        return self.list_obj({kind: {"family": family, "name": table}})

    def list_counted(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.list_obj(obj)

    def list_obj(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.listed.append(obj)
        if obj.get("set", {}).get("name") == SEEN:  # the guard's drops per device
            elems = [{"elem": {"val": "macvtap7", "counter": {"packets": 8, "bytes": 512}}}]
            return {"nftables": [{"set": {"name": SEEN, "elem": elems}}]}
        return {"nftables": []}

    def close(self) -> None:
        pass


class FakeNfnl:
    def __init__(self, counters: dict[str, dict[str, int]]) -> None:
        self._counters = counters

    def counters(self, family: int, table: str) -> dict[str, int]:
        return dict(self._counters.get(table, {}))

    def chain_exists(self, family: int, table: str, name: str) -> bool:
        return True

    def rule_count(self, family: int, table: str, chain: str) -> int:
        return GUARD_RULES

    def add_guards(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


TABLE_COUNTERS = {
    "layout_macvtap_v4_guard": 0,
    "rx:macvtap0": 2,
    "ru:macvtap0": 1,
    "tx:macvtap0": 3,
    "rx:uplink0": 0,
    "ru:uplink0": 4,
    "tx:uplink0": 0,
    "rx_unbound": 1,
    "tx_unbound": 0,
}


def _filter() -> tuple[TenantFilter, FakeNft]:
    nft = FakeNft()
    fake = FakeNfnl({"hostvlan": TABLE_COUNTERS, GUARD_TABLE: {"guard_in": 5, "guard_out": 6 + 8}})
    spec = BackendSpec("macvtap")  # the closing guard, without the address guard's chains
    return build_backend(spec, nft=nft, nfnl=fake, address_guard=False), nft  # type: ignore[arg-type]


def test_drops_map_each_counter_to_its_port_and_reason() -> None:
    filt, _ = _filter()
    assert filt.drops() == {
        ("macvtap0", NO_SHARED_LNID): 2,
        ("macvtap0", UNKNOWN_SOURCE): 1,
        ("macvtap0", FORGED_SOURCE): 3,
        ("uplink0", NO_SHARED_LNID): 0,
        ("uplink0", UNKNOWN_SOURCE): 4,
        ("uplink0", FORGED_SOURCE): 0,
        ("macvtap7", UNBOUND_PORT): 8,  # the guard's, per device
        (UNBOUND_PORT_NAME, UNBOUND_PORT): 1 + 5 + 6,  # the table's, and the guard's of no recorded device
    }
    c = filt.counters()
    assert (c["macvtap0"].rx_dropped, c["macvtap0"].tx_dropped) == (3, 3)
    assert (c[UNBOUND_PORT_NAME].rx_dropped, c[UNBOUND_PORT_NAME].tx_dropped) == (1, 0)  # the table's only


def test_every_listing_is_scoped_to_one_named_object() -> None:
    filt, nft = _filter()
    filt.bind(PortBinding(PortName("macvtap0"), Mac("52:54:00:00:00:01")))
    filt.set_entry(Mac("52:54:00:00:00:01"), [])
    filt.apply()
    filt.audit()
    filt.read()
    filt.counters()
    filt.drops()
    assert nft.listed, "the back end lists its table and sets"
    for obj in nft.listed:
        ((kind, spec),) = obj.items()
        assert kind in SCOPED and spec.get("name"), obj


class FakeSock:
    """Answers one GETOBJ dump: two counters of table t, one of another table, then DONE."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self._out: list[bytes] = []

    def sendall(self, raw: bytes) -> None:
        self.sent.append(raw)
        (seq,) = struct.unpack_from("=I", raw, 8)
        msgs = b"".join(self._obj(seq, t, n, p) for t, n, p in (("t", "a", 7), ("t", "b", 0), ("u", "c", 9)))
        done = struct.pack("=IHHII", 20, nfnl.NLMSG_DONE, 2, seq, 0) + b"\0" * 4
        self._out = [msgs, done]

    @staticmethod
    def _obj(seq: int, table: str, name: str, packets: int) -> bytes:
        data = nfnl._attr(nfnl.COUNTER_PACKETS, struct.pack("!Q", packets))
        data += nfnl._attr(nfnl.COUNTER_BYTES, struct.pack("!Q", packets * 64))
        body = struct.pack("=BBH", 5, 0, 0) + nfnl._str(nfnl.OBJ_TABLE, table) + nfnl._str(nfnl.OBJ_NAME, name)
        body += nfnl._be32(nfnl.OBJ_TYPE, nfnl.NFT_OBJECT_COUNTER) + nfnl._nest(nfnl.OBJ_DATA, data)
        return struct.pack("=IHHII", 16 + len(body), (10 << 8) | 18, 2, seq, 0) + body

    def recv(self, n: int) -> bytes:
        return self._out.pop(0)

    def close(self) -> None:
        pass


def test_counters_parse_a_getobj_dump_of_one_table() -> None:
    sock = nfnl.Nfnl()
    sock._sock.close()  # type: ignore[union-attr]
    fake = FakeSock()
    sock._sock = fake  # type: ignore[assignment]
    assert sock.counters(nfnl.NFPROTO_NETDEV, "t") == {"a": 7, "b": 0}  # the kernel filters; so do we
    (raw,) = fake.sent
    length, kind, flags = struct.unpack_from("=IHH", raw)
    assert kind == (10 << 8) | nfnl.NFT_MSG_GETOBJ and flags & nfnl.NLM_F_DUMP == nfnl.NLM_F_DUMP
    attrs = nfnl.parse_attrs(raw[20:length])
    assert attrs[nfnl.OBJ_TABLE] == b"t\0" and attrs[nfnl.OBJ_TYPE] == struct.pack("!I", nfnl.NFT_OBJECT_COUNTER)
