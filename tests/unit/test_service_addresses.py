"""Addresses through the manager's use cases (`manager/service.py`), no server: refusals name
the field and change nothing, deltas to exactly the hosts holding the MAC, the store keeps
them (schema version 2, upgraded from version 1), the audit log records the commands,
`--require-addresses`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostvlan import wire
from hostvlan.manager.audit import Audit
from hostvlan.manager.service import InputError, ModelError, Service
from hostvlan.manager.store.sqlite import SCHEMA_VERSION, Row, Store
from hostvlan.model.addresses import UNGUARDED, Addrs, parse_net
from hostvlan.model.ids import HostId, Lnid, Mac

H1, H2, H3 = HostId("EHS1"), HostId("EHS2"), HostId("EHS3")
A, B, C = (Mac(f"52:54:00:40:00:0{i}") for i in range(1, 4))


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    s = Service(Store(tmp_path / "m.db"), audit=Audit(tmp_path / "audit.jsonl"))
    for h in (H1, H2, H3):
        s.add_host(h)
    yield s
    s.store.close()
    s.audit.close()


def state(svc: Service) -> Any:
    return svc.revision, svc.show(), [b"".join(svc.snapshot(h)) for h in (H1, H2, H3)]


def test_reg_with_addresses_show_and_restart(svc: Service) -> None:
    svc.reg(1, A, H1, "vnet0", ips=["10.0.0.1", "fd00::1"])
    svc.reg(1, B, H2, router=True, dhcp_server=True)
    svc.addr_add(A, "10.0.0.100", shared=True)
    svc.addr_add(B, "10.0.0.100", shared=True)
    row = svc.show(mac=A)[0]
    assert row["addresses"] == ["10.0.0.1", "10.0.0.100", "fd00::1"] and row["shared"] == ["10.0.0.100"]
    assert row["guarded"] is True and row["router"] is False
    rb = svc.show(mac=B)[0]
    assert rb["addresses"] == ["10.0.0.100"] and rb["router"] and rb["dhcp_server"]
    assert {h["name"]: h["guarded"] for h in svc.hosts()} == {H1: 1, H2: 1, H3: 0}
    assert svc.trace(A, B)["src_addresses"] == ["10.0.0.1", "10.0.0.100", "fd00::1"]
    assert svc.trace(A, B)["src_guarded"] is True
    again = Service(Store(svc.store.path))
    assert again.show() == svc.show()
    assert {r.mac: r.addrs for r in again.store.rows()}[A].nets == {
        parse_net("10.0.0.1"),
        parse_net("10.0.0.100"),
        parse_net("fd00::1"),
    }
    assert b"".join(again.snapshot(H2)) == b"".join(svc.snapshot(H2))
    view = wire.decode_snapshot(H2, json.loads(b"".join(svc.snapshot(H2))))
    assert view == svc.dc.view(H2) and set(view.addresses) == {A, B}
    # reg without addresses keeps them; with ips=[] the MAC is unguarded again
    svc.reg(2, A, H1)
    assert svc.show(mac=A)[0]["addresses"] == ["10.0.0.1", "10.0.0.100", "fd00::1"]
    svc.reg(2, A, H1, ips=[])
    assert svc.show(mac=A)[0]["guarded"] is False


@pytest.mark.parametrize(
    ("call", "field", "status"),
    [
        (lambda s: s.reg(1, C, H1, ips=["10.0.0.1"]), "conflict", None),  # held by A
        (lambda s: s.reg(1, C, H1, ips=["224.0.0.1"]), "ips[0]", 409),
        (lambda s: s.reg(1, C, H1, ips=["10.0.0.9", "nope"]), "ips[1]", 409),
        (lambda s: s.reg(1, C, H1, ips="10.0.0.9"), "ips", 400),
        (lambda s: s.reg(1, C, H1, ips=["10.0.0.9"], router="yes"), "router", 400),
        (lambda s: s.addr_add(A, "127.0.0.1"), "address", 409),
        (lambda s: s.addr_add(A, "10.0.0.0/24"), "conflict", None),  # overlaps B's 10.0.0.2
        (lambda s: s.addr_add(C, "10.0.0.7"), "not_found", None),
        (lambda s: s.addr_add(B, "10.0.0.1", shared=True), "conflict", None),
        (lambda s: s.addr_add(A, "10.0.0.9", shared="no"), "shared", 400),
        (lambda s: s.addr_del(A, "ff02::1"), "address", 409),
        (
            lambda s: s.batch([{"op": "addr_add", "mac": A, "address": "10.0.0.8"}, {"op": "addr_add"}]),
            "ops[1].mac",
            400,
        ),
        (lambda s: s.batch([{"op": "reg", "lnid": 1, "mac": C, "host": H1, "ips": ["::"]}]), "ops[0].ips[0]", 409),
    ],
)
def test_refusals_name_the_field_and_change_nothing(svc: Service, call: Any, field: str, status: int | None) -> None:
    svc.reg(1, A, H1, ips=["10.0.0.1"])
    svc.reg(2, B, H2, ips=["10.0.0.2"])
    before = state(svc)
    with pytest.raises((InputError, ModelError)) as exc:
        call(svc)
    got = exc.value
    if isinstance(got, InputError):
        assert (got.field, got.status) == (field, status), got
    else:
        assert got.kind == field, got
    assert state(svc) == before
    rec = json.loads((Path(svc.store.path).parent / "audit.jsonl").read_text().splitlines()[-1])
    assert rec["result"] == "refused" and rec["error"].startswith(f"{field}: ")


def test_address_change_is_a_delta_to_the_hosts_holding_the_mac(svc: Service) -> None:
    svc.reg(1, A, H1)
    svc.reg(1, B, H2)
    svc.reg(2, C, H3)
    queues = {h: svc.open_feed(h) for h in (H1, H2, H3)}
    for sub in queues.values():
        sub.snapshot()
    svc.addr_add(A, "fd00::a")
    got = {}
    for h, sub in queues.items():
        q = sub._q
        got[h] = [json.loads(b"".join(q.get_nowait())) for _ in range(q.qsize())]
    assert got[H3] == []
    for h in (H1, H2):
        (line,) = got[h]
        assert line["addrs"] == {A: "fd00::a"} and set(line) == {"type", "revision", "addrs"}
        assert wire.decode_delta(line).addresses == {A: Addrs(frozenset({parse_net("fd00::a")}))}
    svc.addr_del(A, "fd00::a")
    assert json.loads(b"".join(queues[H2]._q.get_nowait()))["addrs"] == {A: ""}
    assert wire.decode_delta({"type": "delta", "revision": 1, "addrs": {A: ""}}).addresses == {A: UNGUARDED}
    assert svc.addr_del(A, "fd00::a").changed is False  # not held: nothing to do
    recs = [json.loads(x) for x in (Path(svc.store.path).parent / "audit.jsonl").read_text().splitlines()]
    assert [r["command"] for r in recs[-3:]] == ["addr_add", "addr_del", "addr_del"]
    assert recs[-3]["args"] == {"mac": A, "address": "fd00::a", "shared": False} and recs[-3]["result"] == "ok"


def test_require_addresses(tmp_path: Path) -> None:
    s = Service(Store(tmp_path / "m.db"), require_addresses=True)
    s.add_host(H1)
    with pytest.raises(InputError) as exc:
        s.reg(1, A, H1)
    assert (exc.value.field, exc.value.status) == ("ips", 409) and "--require-addresses" in exc.value.detail
    assert s.show() == []
    s.reg(1, A, H1, ips=["10.0.0.1"])
    s.reg(2, A, H1)  # keeps its address
    with pytest.raises(InputError) as exc:
        s.addr_del(A, "10.0.0.1")
    assert exc.value.field == "address" and s.show()[0]["addresses"] == ["10.0.0.1"]
    with pytest.raises(InputError) as exc:
        s.batch(
            [
                {"op": "reg", "lnid": 1, "mac": B, "host": H1, "ips": ["10.0.0.2"]},
                {"op": "reg", "lnid": 1, "mac": C, "host": H1},
            ]
        )
    assert exc.value.field == "ops[1].ips" and len(s.show()) == 1


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE hosts (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL);
CREATE TABLE macs (mac TEXT PRIMARY KEY, host TEXT REFERENCES hosts(name), port TEXT);
CREATE TABLE memberships (mac TEXT NOT NULL REFERENCES macs(mac) ON DELETE CASCADE, lnid INTEGER NOT NULL,
    PRIMARY KEY (mac, lnid)) WITHOUT ROWID;
INSERT INTO meta VALUES ('schema_version', '1'), ('revision', '3');
INSERT INTO hosts VALUES ('EHS1', 'x');
INSERT INTO macs VALUES ('52:54:00:40:00:01', 'EHS1', 'vnet0');
INSERT INTO memberships VALUES ('52:54:00:40:00:01', 1);
"""


def test_a_version_1_database_is_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(V1_SCHEMA)
    con.commit()
    con.close()
    store = Store(db)
    assert SCHEMA_VERSION == 2 and store.meta("schema_version") == "2"
    assert list(store.rows()) == [Row(A, H1, "vnet0", frozenset({Lnid(1)}))]  # unguarded
    s = Service(store)
    assert s.revision == 3 and s.show()[0]["guarded"] is False
    s.addr_add(A, "10.0.0.1")
    store.close()
    again = Store(db)
    assert [r.addrs.nets for r in again.rows()] == [{parse_net("10.0.0.1")}]
    again.close()
