"""The manager's use cases (`manager/service.py`) on a temporary SQLite file, no root, no server.

Commands (reg/unreg/rm/move/batch), refusals that name their field and change nothing,
deltas published to exactly the hosts they concern (decoded with `hostvlan.wire` and
compared with the model), the agents' status reports and bindings as `hosts`/`show`
answer them, `trace` on the reported bindings (a property: it equals
`model.verdict.receive` of the filter state those bindings give), the audit log and the
store's schema version.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostvlan import wire
from hostvlan.manager.audit import Audit
from hostvlan.manager.service import InputError, ModelError, Service
from hostvlan.manager.store.sqlite import SCHEMA_VERSION, Store, StoreError
from hostvlan.model.datacenter import DataCenter
from hostvlan.model.hostview import Location, host_view
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.model.table import LnidTable
from hostvlan.model.verdict import receive

from .strategies import LNID_POOL, MAC_POOL, PORT_POOL, PROPERTY, UNKNOWN_MACS

H1, H2, H3 = HostId("EHS1"), HostId("EHS2"), HostId("EHS3")
A, B, C, D = (Mac(f"52:54:00:30:00:0{i}") for i in range(1, 5))
GW = Mac("52:54:00:30:ff:01")


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[Service]:
    s = Service(Store(tmp_path / "m.db"), audit=Audit(tmp_path / "audit.jsonl"))
    for h in (H1, H2, H3):
        s.add_host(h)
    yield s
    s.store.close()
    s.audit.close()


def reopen(svc: Service) -> Service:
    """A new service over the same file: what a restart would load."""
    return Service(Store(svc.store.path))


def bound(port: str) -> wire.Binding:
    return wire.Binding(PortName(port), "bound")


# ----- commands ------------------------------------------------------------------------------
def test_commands_change_the_table_durably(svc: Service) -> None:
    r1 = svc.reg(1, A, H1, "vnet0")
    assert r1.changed and svc.reg(1, A, H1, "vnet0") == type(r1)(r1.revision, False)
    svc.reg(2, A, H1, "vnet0")
    svc.reg(1, B, H2)
    svc.reg("global", GW, external=True)
    rows = {r["mac"]: r for r in svc.show()}
    assert rows[A]["lnids"] == [1, 2] and rows[A]["port"] == "vnet0" and rows[A]["host"] == H1
    assert rows[GW] == {
        "mac": GW,
        "lnids": ["global"],
        "host": None,
        "port": None,
        "external": True,
        "state": "external",
        "bound_port": None,
        "addresses": [],
        "shared": [],
        "router": False,
        "dhcp_server": False,
        "guarded": False,
    }
    assert svc.unreg(2, A).changed and svc.show(mac=A)[0]["lnids"] == [1]
    assert svc.move(B, H3, "vnet9").changed and svc.show(mac=B)[0]["host"] == H3
    assert svc.rm(B).changed and svc.show(mac=B) == []
    r = svc.batch([{"op": "reg", "lnid": 5, "mac": C, "host": H2}, {"op": "reg", "lnid": 5, "mac": D, "host": H3}])
    assert r.revision == svc.revision and {x["mac"] for x in svc.show(lnid=5)} == {C, D}
    again = reopen(svc)
    assert again.show() == svc.show()
    assert again.revision == svc.revision


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda s: s.reg(0, A, H1), "lnid"),
        (lambda s: s.reg(1, "zz", H1), "mac"),
        (lambda s: s.reg(1, "01:00:5e:00:00:01", H1), "mac"),  # multicast: not a vNIC
        (lambda s: s.reg(1, A), "host"),
        (lambda s: s.reg(1, A, H1, external=True), "host"),
        (lambda s: s.reg(1, A, H1, "bad port name with spaces"), "port"),
        (lambda s: s.unreg("x", A), "lnid"),
        (lambda s: s.move(A, "bad/host"), "host"),
        (lambda s: s.batch([{"op": "reg", "lnid": 1, "mac": C, "host": H1}, {"op": "rm", "mac": "no"}]), "ops[1].mac"),
        (lambda s: s.batch([{"op": "nope"}]), "ops[0].op"),
        (lambda s: s.batch("x"), "ops"),
    ],
)
def test_bad_input_names_its_field_and_changes_nothing(svc: Service, call: Any, field: str) -> None:
    svc.reg(1, A, H1)
    before, rev = svc.show(), svc.revision
    with pytest.raises(InputError) as exc:
        call(svc)
    assert exc.value.field == field
    assert svc.show() == before and svc.revision == rev
    assert reopen(svc).revision == rev


def test_conflicts_and_unknowns_change_nothing(svc: Service) -> None:
    svc.reg(1, A, H1)
    before, rev = svc.show(), svc.revision
    with pytest.raises(ModelError) as exc:
        svc.reg(1, A, H2)
    assert exc.value.kind == "conflict" and "move" in str(exc.value)
    with pytest.raises(ModelError) as exc:
        svc.reg(1, B, "NOSUCH")
    assert exc.value.kind == "not_found"
    with pytest.raises(ModelError):  # the whole batch or nothing
        svc.batch([{"op": "reg", "lnid": 2, "mac": C, "host": H2}, {"op": "reg", "lnid": 1, "mac": A, "host": H3}])
    with pytest.raises(ModelError):
        svc.remove_host(H1)  # it still has a vNIC
    assert svc.show() == before and svc.revision == rev and reopen(svc).show(mac=C) == []


# ----- feeds ---------------------------------------------------------------------------------
def _drain(q: asyncio.Queue[list[bytes]]) -> list[Any]:
    out = []
    while not q.empty():
        out.append(wire.decode_line(b"".join(q.get_nowait())))
    return out


def test_deltas_reach_exactly_the_hosts_they_concern(svc: Service) -> None:
    mirror = DataCenter()
    for h in (H1, H2, H3):
        mirror.add_host(h)
    svc.reg(1, A, H1)
    mirror.reg(A, Lnid(1), H1)
    svc.reg(2, B, H2)
    mirror.reg(B, Lnid(2), H2)
    subs = {h: svc.open_feed(h) for h in (H1, H2, H3)}
    for h, sub in subs.items():
        snap = wire.decode_line(sub.snapshot())
        assert isinstance(snap, wire.Snapshot) and snap.revision == svc.revision
        assert wire.snapshot_view(h, snap) == mirror.view(h)
    queues = {h: next(iter(svc.feed.status[h].subscribers)) for h in subs}

    steps: list[tuple[Any, Any]] = [
        (lambda: svc.reg(1, C, H3), lambda: mirror.reg(C, Lnid(1), H3)),  # H1 and H3: LNID 1
        (lambda: svc.reg(7, D, H2), lambda: mirror.reg(D, Lnid(7), H2)),  # H2 only
        (lambda: svc.move(C, H2, "vnet3"), lambda: mirror.move(C, H2, PortName("vnet3"))),
        (lambda: svc.rm(A), lambda: mirror.rm(A)),
    ]
    for command, model in steps:
        rev = command().revision
        want = {h: d for h, d in model().items() if d}
        got = {h: _drain(q) for h, q in queues.items()}
        assert {h for h, lines in got.items() if lines} == set(want)
        for h, d in want.items():
            (line,) = got[h]
            assert isinstance(line, wire.Delta) and line.revision == rev
            assert wire.host_delta(line) == d
            assert wire.decode_line(wire.encode_delta(d, rev)) == line, "fast encoder = reference encoder"
    for sub in subs.values():
        sub.close()
    assert not any(st.connected for st in svc.feed.status.values())


def test_subscription_heartbeats_and_ends(svc: Service) -> None:
    async def main() -> None:
        sub = svc.open_feed(H1)
        sub.snapshot()
        beat = wire.decode_line(await sub.next(0.01) or b"")
        assert beat == wire.Heartbeat(svc.revision)
        svc.rotate_host_token(H1)
        assert await sub.next(1.0) is None
        sub.close()

    asyncio.run(main())


# ----- status, bindings, hosts, show ---------------------------------------------------------------
def test_status_reports_and_what_hosts_and_show_say(svc: Service) -> None:
    svc.reg(1, A, H1, "vnet0")
    svc.reg(2, B, H1)
    svc.reg(3, C, H1, "vnet7")
    assert {r["mac"]: r["state"] for r in svc.show(host=H1)} == dict.fromkeys((A, B, C), "host down")
    sub = svc.open_feed(H1)
    assert {r["mac"]: r["state"] for r in svc.show(host=H1)} == dict.fromkeys((A, B, C), "pending")
    row = next(h for h in svc.hosts() if h["name"] == H1)
    assert row["connected"] and row["in_sync"] is False and row["agent_in_sync"] is True and row["unbound"] == 0

    svc.record_status(H1, {"revision": svc.revision})  # an old agent: revision only
    row = next(h for h in svc.hosts() if h["name"] == H1)
    assert row["in_sync"] is True and row["error"] is None
    body = {
        "revision": svc.revision,
        "bindings": {
            A: {"port": "vnet0", "state": "bound", "reason": None},
            B: {"port": "vnet1", "state": "bound", "reason": None},
            C: {"port": "vnet7", "state": "unbound", "reason": "no such port vnet7"},
        },
    }
    svc.record_status(H1, body)
    rows = {r["mac"]: r for r in svc.show(host=H1)}
    assert (rows[A]["state"], rows[A]["bound_port"], rows[A]["port"]) == ("bound", "vnet0", "vnet0")
    assert (rows[B]["state"], rows[B]["bound_port"], rows[B]["port"]) == ("bound", "vnet1", None)
    assert (rows[C]["state"], rows[C]["bound_port"]) == ("unbound: no such port vnet7", None)
    row = next(h for h in svc.hosts() if h["name"] == H1)
    assert row["in_sync"] is True and row["unbound"] == 1

    # a failing agent: not in sync, with its error; bindings absent = unchanged
    svc.record_status(H1, {"revision": svc.revision, "in_sync": False, "error": "apply failed: EBUSY"})
    row = next(h for h in svc.hosts() if h["name"] == H1)
    assert (row["in_sync"], row["agent_in_sync"], row["error"], row["unbound"]) == (
        False,
        False,
        "apply failed: EBUSY",
        1,
    )
    # a new vNIC is pending until reported; a moved one loses its old binding
    svc.reg(1, D, H1)
    svc.move(A, H1, "vnet4")
    rows = {r["mac"]: r["state"] for r in svc.show(host=H1)}
    assert rows[D] == "pending" and rows[A] == "pending" and rows[B] == "bound"
    # a late report (of a revision before the move) does not bind A where it was
    late = svc.revision - 1
    svc.record_status(H1, wire.Status(late, bindings={A: bound("vnet0"), B: bound("vnet1"), D: bound("vnet2")}))
    rows = {r["mac"]: r["state"] for r in svc.show(host=H1)}
    assert rows[A] == "pending" and rows[D] == "bound" and rows[B] == "bound"
    svc.record_status(H1, wire.Status(svc.revision, bindings={A: bound("vnet4"), B: bound("vnet1")}))
    rows = {r["mac"]: r["state"] for r in svc.show(host=H1)}
    assert rows[A] == "bound" and rows[D] == "pending"
    # the agent goes: the last report stays, the host is down
    sub.close()
    rows2 = {r["mac"]: r for r in svc.show(host=H1)}
    assert rows2[B]["state"] == "host down" and rows2[B]["bound_port"] == "vnet1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "revision"),
        ({"revision": -1}, "revision"),
        ({"revision": "3"}, "revision"),
        ({"revision": 1, "in_sync": "yes"}, "in_sync"),
        ({"revision": 1, "error": 3}, "error"),
        ({"revision": 1, "bindings": []}, "bindings"),
        ({"revision": 1, "bindings": {A: {"state": "lost"}}}, f"bindings.{A}.state"),
        ({"revision": 1, "bindings": {A: {"state": "bound", "port": None}}}, f"bindings.{A}.port"),
        ([1], "body"),
    ],
)
def test_bad_status_bodies_name_their_field(svc: Service, body: Any, field: str) -> None:
    with pytest.raises(InputError) as exc:
        svc.record_status(H1, body)
    assert exc.value.field == field
    assert H1 not in svc.feed.status


def test_status_body_round_trips() -> None:
    st = wire.Status(4, False, "audit failed", {A: bound("vnet0"), B: wire.Binding(None, "unbound", "no port")})
    assert wire.decode_status(json.loads(wire.dumps(wire.encode_status(st)))) == st
    assert wire.decode_status({"revision": 4}) == wire.Status(4)


# ----- trace ----------------------------------------------------------------------------------
def test_trace_uses_the_reported_bindings(svc: Service) -> None:
    # issue 14: two port-less vNICs on one host in different LNIDs must not reach each other
    svc.reg(1, A, H1)
    svc.reg(2, B, H1)
    svc.reg(1, C, H2, "vnet3")  # a mistyped port: the agent reports it unbound
    svc.reg(1, D, H2)
    t = svc.trace(D, B)
    assert t["allow"] is False and "not reported bound yet" in t["reason"]  # D's own agent said nothing
    svc.record_status(H1, wire.Status(svc.revision, bindings={A: bound("vnet0"), B: bound("vnet1")}))
    t = svc.trace(D, B)
    assert t["allow"] is False and f"source {D} is not bound on host {H2}" in t["reason"]
    unbound = wire.Binding(None, "unbound", "no such port vnet3")
    svc.record_status(H2, wire.Status(svc.revision, bindings={C: unbound, D: bound("vnet4")}))
    t = svc.trace(A, B)
    assert t["allow"] is False and "no shared LNID" in t["reason"] and t["port"] == "vnet1"
    assert svc.trace(B, A)["allow"] is False
    t = svc.trace(D, A)
    assert t["allow"] is True and t["port"] == "vnet0"
    t = svc.trace(A, C)
    assert t["allow"] is False and "no such port vnet3" in t["reason"] and t["state"] == "unbound"
    t = svc.trace(C, A)  # the unbound vNIC's own frames are dropped at its port
    assert t["allow"] is False and "no such port vnet3" in t["reason"] and "send check" in t["reason"]
    t = svc.trace(D, "EHS1:vnet0")
    assert t["allow"] is True and t["dst_mac"] == A
    t = svc.trace(D, "EHS2:vnet3")
    assert t["allow"] is False and "no vNIC is bound to port EHS2:vnet3" in t["reason"]
    assert f"{C} is registered on this port (unbound: no such port vnet3)" in t["reason"]
    with pytest.raises(ModelError):
        svc.trace(A, "NOSUCH:vnet0")
    with pytest.raises(InputError) as exc:
        svc.trace("x", A)
    assert exc.value.field == "src"


HOSTS = (H1, H2)


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[HostId, dict[Mac, wire.Binding]]]:
    """Registrations (some port-less, some on ports the agent did not bind) and reported bindings."""
    ops: list[dict[str, Any]] = []
    place: dict[Mac, tuple[HostId | None, PortName | None]] = {}
    for mac in draw(st.lists(st.sampled_from(MAC_POOL), unique=True, min_size=1)):
        where = draw(st.sampled_from((*HOSTS, None)))
        port = draw(st.none() | st.sampled_from(PORT_POOL)) if where else None
        place[mac] = (where, port)
        for lnid in draw(st.frozensets(st.sampled_from(LNID_POOL), min_size=1, max_size=3)):
            ln: Any = "global" if lnid == GLOBAL else int(lnid)
            ops.append({"op": "reg", "lnid": ln, "mac": mac, "host": where, "port": port, "external": where is None})
    reported: dict[HostId, dict[Mac, wire.Binding]] = {}
    for h in HOSTS:
        local = sorted(m for m, (w, _) in place.items() if w == h)
        free = list(draw(st.permutations(PORT_POOL)))  # an agent binds a port to one vNIC at most
        out: dict[Mac, wire.Binding] = {}
        for mac in local:
            kind = draw(st.sampled_from(("bound", "bound", "unbound", "unreported")))
            if kind == "bound" and free:
                out[mac] = bound(free.pop())
            elif kind == "unbound":
                out[mac] = wire.Binding(None, "unbound", "no such port")
        reported[h] = out
    return ops, reported


@PROPERTY
@given(worlds())
def test_trace_is_the_verdict_of_the_reported_filter_state(
    world: tuple[list[dict[str, Any]], dict[HostId, dict[Mac, wire.Binding]]],
) -> None:
    ops, reported = world
    with tempfile.TemporaryDirectory() as d:
        svc = Service(Store(Path(d) / "m.db"))
        try:
            svc.add_hosts(list(HOSTS))
            svc.batch(ops)
            for h, bindings in reported.items():
                svc.record_status(h, wire.Status(svc.revision, bindings=bindings))
            # the oracle: the model's host view, with exactly the ports the agent reported bound
            table = LnidTable()
            locations: dict[Mac, Location] = {}
            for op in ops:
                table.add(op["mac"], GLOBAL if op["lnid"] == "global" else Lnid(op["lnid"]))
                locations[op["mac"]] = Location(op["host"], op["port"])

            def sends(src: Mac) -> bool:  # the source's own port's send check
                loc = locations.get(src)
                if loc is None or loc.host is None:
                    return True
                b = reported[loc.host].get(src)
                return b is not None and b.bound and b.port is not None

            for h in HOSTS:
                view = host_view(table, locations, h)
                state = FilterState(
                    entries=view.entries,
                    bindings={b.port: PortBinding(b.port, m) for m, b in reported[h].items() if b.port and b.bound},
                )
                for src in (*MAC_POOL, *UNKNOWN_MACS):
                    for dst in view.local:
                        b = reported[h].get(dst)
                        want = (
                            sends(src)
                            and b is not None
                            and b.bound
                            and b.port is not None
                            and receive(state, src, b.port).allow
                        )
                        assert svc.trace(src, dst)["allow"] is want, (src, dst, b)
                    for port in PORT_POOL:
                        want = sends(src) and port in state.bindings and receive(state, src, port).allow
                        assert svc.trace(src, f"{h}:{port}")["allow"] is want, (src, h, port)
        finally:
            svc.store.close()


# ----- audit, schema ---------------------------------------------------------------------------
def test_audit_records_every_accepted_and_refused_change(svc: Service, tmp_path: Path) -> None:
    svc.reg(1, A, H1)
    with pytest.raises(InputError):
        svc.reg(0, B, H1)
    svc.record_status(H1, {"revision": svc.revision, "in_sync": False, "error": "boom"})
    svc.record_status(H1, {"revision": svc.revision, "in_sync": False, "error": "boom"})  # nothing new: no record
    with pytest.raises(InputError):
        svc.record_status(H1, {"revision": "x"})
    recs = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["who"], r["command"], r["result"]) for r in recs] == [
        ("admin", "host add", "ok"),
        ("admin", "host add", "ok"),
        ("admin", "host add", "ok"),
        ("admin", "reg", "ok"),
        ("admin", "reg", "refused"),
        ("host:EHS1", "status", "ok"),
        ("host:EHS1", "status", "refused"),
    ]
    assert recs[3]["args"] == {"lnid": 1, "mac": A, "host": H1, "port": None, "external": False}
    assert recs[3]["revision"] == recs[2]["revision"] + 1 and recs[3]["error"] is None
    assert recs[4]["error"].startswith("lnid: ") and recs[4]["revision"] == recs[3]["revision"]
    assert "token" not in (tmp_path / "audit.jsonl").read_text()


def test_schema_version(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    Store(db).close()
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    # an old database (before the version was recorded) is upgraded in place
    con.execute("DELETE FROM meta WHERE key='schema_version'")
    con.commit()
    s = Store(db)
    assert s.meta("schema_version") == str(SCHEMA_VERSION)
    s.close()
    # a newer one is refused, untouched
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(db)
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("99",)
    con.close()


def test_backup_is_a_consistent_copy(svc: Service, tmp_path: Path) -> None:
    svc.reg(1, A, H1)
    svc.reg(2, B, H2, "vnet1")
    out = tmp_path / "backup.db"
    svc.store.backup(out)
    copy = Service(Store(out))
    assert copy.revision == svc.revision and copy.show() == reopen(svc).show()
    assert copy.store.meta("schema_version") == str(SCHEMA_VERSION)
