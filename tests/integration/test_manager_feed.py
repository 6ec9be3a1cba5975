"""The per-host feeds of a real manager process (SPEC §5, docs/control-plane.md).

Every command goes through the HTTP API; a `Mirror` applies the same command to an
in-process `DataCenter`, whose per-host deltas and views are the oracle. Each host's
feed must carry exactly the model's delta at the command's revision and nothing in
between (a later delta with the exact next expected revision proves the silence), and a
fresh connection's snapshot must equal `DataCenter.view` after every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostvlan.model.datacenter import DataCenter, HostDelta
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName, parse_lnid
from managerproc import FeedReader, Manager, running_manager

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
MAC4, GW = "52:54:00:00:00:04", "52:54:00:ff:00:01"


def lnids_json(lnids: frozenset[Lnid]) -> list[int | str]:
    return ["global" if x == GLOBAL else int(x) for x in sorted(lnids)]


def delta_json(d: HostDelta) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if d.entries:
        out["entries"] = {m: lnids_json(ls) for m, ls in d.entries.items()}
    if d.removed:
        out["removed"] = sorted(d.removed)
    if d.local:
        out["local"] = dict(d.local)
    if d.unlocal:
        out["unlocal"] = sorted(d.unlocal)
    return out


class Mirror:
    """The manager under test and the model fed the same commands."""

    def __init__(self, mgr: Manager, hosts: list[str]) -> None:
        self.mgr = mgr
        self.http = mgr.client()
        self.dc = DataCenter()
        self.tokens: dict[str, str] = {}
        for h in hosts:
            r = self.http.post("/v1/hosts", json={"name": h})
            assert r.status_code == 201, r.text
            self.tokens[h] = r.json()["token"]
            self.dc.add_host(HostId(h))
        self.feeds: dict[str, FeedReader] = {}

    def close(self) -> None:
        self.http.close()

    def revision(self) -> int:
        return int(self.http.get("/v1/revision").json()["revision"])

    def open_feeds(self) -> dict[str, dict[str, Any]]:
        """Connect every host's feed; returns their snapshots."""
        snaps = {}
        for h, tok in self.tokens.items():
            self.feeds[h] = FeedReader(self.mgr.url, h, tok)
            snaps[h] = self.feeds[h].next()
            assert snaps[h]["type"] == "snapshot"
        return snaps

    def command(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, dict[str, Any]]]:
        """POST a command, apply it to the model; (revision, expected delta per host)."""
        r = self.http.post(path, json=body)
        assert r.status_code == 200, r.text
        ans = r.json()
        mac = Mac(body["mac"])
        port = PortName(body["port"]) if body.get("port") else None
        host = HostId(body["host"]) if body.get("host") else None
        if path == "/v1/reg":
            deltas = self.dc.reg(mac, parse_lnid(body["lnid"]), host, port)
        elif path == "/v1/unreg":
            deltas = self.dc.unreg(mac, parse_lnid(body["lnid"]))
        elif path == "/v1/rm":
            deltas = self.dc.rm(mac)
        else:
            deltas = self.dc.move(mac, host, port)
        if deltas:
            assert ans["changed"] is True
        return ans["revision"], {h: delta_json(d) for h, d in deltas.items() if d}

    def expect(self, revision: int, deltas: dict[str, dict[str, Any]]) -> None:
        """Each host named in `deltas` gets exactly that delta next, at `revision`."""
        for h, want in deltas.items():
            assert self.feeds[h].next() == {"type": "delta", "revision": revision, **want}, h

    def assert_views(self) -> None:
        """A fresh connection's snapshot of every host is the model's view at the current revision."""
        rev = self.revision()
        for h, tok in self.tokens.items():
            snap = self.mgr.snapshot(h, tok)
            view = self.dc.view(HostId(h))
            assert snap["revision"] == rev
            assert snap["entries"] == {m: lnids_json(ls) for m, ls in view.entries.items()}, h
            assert snap["local"] == dict(view.local), h

    def report_bound(self, host: str, ports: dict[str, str]) -> None:
        """`host`'s agent reports these vNICs bound (MAC -> port), as the real agent does."""
        bindings = {m: {"port": p, "state": "bound", "reason": None} for m, p in ports.items()}
        with self.mgr.client(self.tokens[host]) as c:
            r = c.post(f"/v1/hosts/{host}/status", json={"revision": self.revision(), "bindings": bindings})
            assert r.status_code == 200, r.text

    def barrier(self) -> None:
        """A global external MAC concerns every host: each feed's NEXT delta must be this one.

        With `expect`'s exact revisions, this proves no host got anything in between.
        """
        rev, deltas = self.command("/v1/reg", {"lnid": "global", "mac": GW, "external": True})
        assert set(deltas) == set(self.tokens)
        self.expect(rev, deltas)
        for f in self.feeds.values():
            assert f.pending() == []


@pytest.fixture
def mgr(tmp_path: Path) -> Iterator[Manager]:
    with running_manager(tmp_path) as m:
        yield m


@pytest.fixture
def mirror(mgr: Manager) -> Iterator[Mirror]:
    m = Mirror(mgr, ["EHS1", "EHS2", "EHS3"])
    try:
        yield m
    finally:
        m.close()


def test_fig5_6_registration_flow(mirror: Mirror) -> None:
    snaps = mirror.open_feeds()
    assert all(s["entries"] == {} and s["local"] == {} for s in snaps.values())
    mirror.assert_views()

    # 1. reg 1 MAC1 EHS1: only host 1 hears of it, with MAC1 in its table and bound locally
    rev1, deltas = mirror.command("/v1/reg", {"lnid": 1, "mac": MAC1, "host": "EHS1", "port": "vp1-1"})
    assert deltas == {"EHS1": {"entries": {MAC1: [1]}, "local": {MAC1: "vp1-1"}}}
    mirror.expect(rev1, deltas)
    mirror.assert_views()

    # 2. reg 1 MAC2 EHS2: host 2 gets both entries and binds MAC2; host 1 gets only MAC2
    rev2, deltas = mirror.command("/v1/reg", {"lnid": 1, "mac": MAC2, "host": "EHS2", "port": "vp2-1"})
    assert rev2 > rev1
    assert deltas == {
        "EHS2": {"entries": {MAC1: [1], MAC2: [1]}, "local": {MAC2: "vp2-1"}},
        "EHS1": {"entries": {MAC2: [1]}},
    }
    mirror.expect(rev2, deltas)
    mirror.assert_views()
    table = {r["mac"]: r["lnids"] for r in mirror.http.get("/v1/macs").json()}
    assert table == {MAC1: [1], MAC2: [1]}
    for h in ("EHS1", "EHS2"):  # all three tables agree
        assert mirror.mgr.snapshot(h, mirror.tokens[h])["entries"] == table

    # 3. a host whose VMs are in LNID 2 got nothing of LNID 1; its first delta is its own VM
    rev3, deltas = mirror.command("/v1/reg", {"lnid": 2, "mac": MAC3, "host": "EHS3"})
    assert deltas == {"EHS3": {"entries": {MAC3: [2]}, "local": {MAC3: None}}}
    mirror.expect(rev3, deltas)
    mirror.assert_views()
    mirror.barrier()
    mirror.assert_views()


def test_lnid_added_to_running_vnic_and_removed(mirror: Mirror) -> None:
    """Fig. 7's last step: VM1-1 joins LNID 3 without restarting, then leaves it."""
    mirror.command("/v1/reg", {"lnid": 1, "mac": MAC1, "host": "EHS1"})
    mirror.command("/v1/reg", {"lnid": 3, "mac": MAC2, "host": "EHS2"})
    mirror.command("/v1/reg", {"lnid": 2, "mac": MAC3, "host": "EHS3"})
    mirror.open_feeds()
    mirror.report_bound("EHS1", {MAC1: "vnet0"})  # the source's own port sends (trace checks both ends)
    mirror.report_bound("EHS2", {MAC2: "vnet0"})
    trace = mirror.http.get("/v1/trace", params={"src": MAC1, "dst": MAC2}).json()
    assert trace["allow"] is False

    rev, deltas = mirror.command("/v1/reg", {"lnid": 3, "mac": MAC1, "host": "EHS1"})
    assert deltas == {"EHS1": {"entries": {MAC1: [1, 3], MAC2: [3]}}, "EHS2": {"entries": {MAC1: [3]}}}
    mirror.expect(rev, deltas)
    mirror.assert_views()
    trace = mirror.http.get("/v1/trace", params={"src": MAC1, "dst": MAC2}).json()
    assert trace["allow"] is True and "3" in trace["reason"]

    rev, deltas = mirror.command("/v1/unreg", {"lnid": 3, "mac": MAC1})
    assert deltas == {"EHS1": {"entries": {MAC1: [1]}, "removed": [MAC2]}, "EHS2": {"removed": [MAC1]}}
    mirror.expect(rev, deltas)
    mirror.assert_views()
    mirror.barrier()


def test_move_changes_only_source_and_destination(mirror: Mirror) -> None:
    """§3.6.3: entries travel only if the destination lacks the LNIDs; the binding always moves."""
    mirror.command("/v1/reg", {"lnid": 1, "mac": MAC1, "host": "EHS1", "port": "vp1"})
    mirror.command("/v1/reg", {"lnid": 1, "mac": MAC2, "host": "EHS2"})
    mirror.command("/v1/reg", {"lnid": 1, "mac": MAC3, "host": "EHS3"})
    mirror.open_feeds()

    # EHS2 already holds LNID 1: it only gets the binding; EHS1 loses its LNID-1 view; EHS3 hears nothing
    rev, deltas = mirror.command("/v1/move", {"mac": MAC1, "host": "EHS2", "port": "vp9"})
    assert deltas == {
        "EHS1": {"removed": [MAC1, MAC2, MAC3], "unlocal": [MAC1]},
        "EHS2": {"local": {MAC1: "vp9"}},
    }
    mirror.expect(rev, deltas)
    mirror.assert_views()

    # back to EHS1, which lacks LNID 1: it gets every LNID-1 entry again
    rev, deltas = mirror.command("/v1/move", {"mac": MAC1, "host": "EHS1", "port": "vp1"})
    assert deltas == {
        "EHS1": {"entries": {MAC1: [1], MAC2: [1], MAC3: [1]}, "local": {MAC1: "vp1"}},
        "EHS2": {"unlocal": [MAC1]},
    }
    mirror.expect(rev, deltas)
    mirror.assert_views()
    mirror.barrier()  # EHS3's next delta is the barrier: it heard nothing of either move


def test_unreg_and_rm_deltas(mirror: Mirror) -> None:
    mirror.command("/v1/reg", {"lnid": 1, "mac": MAC1, "host": "EHS1"})
    mirror.command("/v1/reg", {"lnid": 2, "mac": MAC1, "host": "EHS1"})
    mirror.command("/v1/reg", {"lnid": 1, "mac": MAC2, "host": "EHS2"})
    mirror.command("/v1/reg", {"lnid": 2, "mac": MAC3, "host": "EHS3"})
    mirror.command("/v1/reg", {"lnid": 5, "mac": MAC4, "host": "EHS3"})
    mirror.open_feeds()

    # MAC1 leaves LNID 2: EHS3 (LNID 2) drops it, EHS1 drops MAC3; EHS2 sees MAC1 in {1} as before
    rev, deltas = mirror.command("/v1/unreg", {"lnid": 2, "mac": MAC1})
    assert deltas == {"EHS1": {"entries": {MAC1: [1]}, "removed": [MAC3]}, "EHS3": {"removed": [MAC1]}}
    mirror.expect(rev, deltas)
    mirror.assert_views()

    # unreg of a membership that does not exist: no revision, no delta
    r = mirror.http.post("/v1/unreg", json={"lnid": 7, "mac": MAC1})
    assert r.json() == {"revision": rev, "changed": False}

    # MAC2's last LNID: gone everywhere, its port unbound
    rev, deltas = mirror.command("/v1/unreg", {"lnid": 1, "mac": MAC2})
    assert deltas == {"EHS1": {"removed": [MAC2]}, "EHS2": {"removed": [MAC1, MAC2], "unlocal": [MAC2]}}
    mirror.expect(rev, deltas)
    mirror.assert_views()

    rev, deltas = mirror.command("/v1/rm", {"mac": MAC3})
    assert deltas == {"EHS3": {"removed": [MAC3], "unlocal": [MAC3]}}
    mirror.expect(rev, deltas)
    mirror.assert_views()
    mirror.barrier()


def test_reconnect_gets_fresh_snapshot(mirror: Mirror) -> None:
    mirror.open_feeds()
    mirror.command("/v1/reg", {"lnid": 4, "mac": MAC1, "host": "EHS1", "port": "vp1"})
    mirror.command("/v1/reg", {"lnid": "global", "mac": MAC2, "host": "EHS2"})
    mirror.command("/v1/reg", {"lnid": 4, "mac": MAC3, "host": "EHS3"})
    rev = mirror.revision()
    # a second connection of EHS1 (the agent restarted): a snapshot at the current revision
    again = FeedReader(mirror.mgr.url, "EHS1", mirror.tokens["EHS1"])
    snap = again.next()
    view = mirror.dc.view(HostId("EHS1"))
    assert snap == {
        "type": "snapshot",
        "revision": rev,
        "entries": {m: lnids_json(ls) for m, ls in view.entries.items()},
        "local": {MAC1: "vp1"},
    }
    assert snap["entries"] == {MAC1: [4], MAC2: ["global"], MAC3: [4]}
    # both connections then follow the same deltas
    rev4, d4 = mirror.command("/v1/unreg", {"lnid": 4, "mac": MAC3})
    assert again.next() == {"type": "delta", "revision": rev4, **d4["EHS1"]}
    hosts = {h["name"]: h for h in mirror.http.get("/v1/hosts").json()}
    assert hosts["EHS1"]["connected"] is True and hosts["EHS1"]["revision_due"] == rev4


def test_rotated_token_ends_open_feed(mirror: Mirror) -> None:
    """A rotated (possibly leaked) token must not keep streaming the host's table."""
    mirror.open_feeds()
    old = mirror.tokens["EHS1"]
    r = mirror.http.post("/v1/hosts/EHS1/token")
    assert r.status_code == 200
    new = r.json()["token"]
    assert mirror.feeds["EHS1"].ended(5.0), "the feed opened with the old token is still open"
    assert not mirror.feeds["EHS2"].ended(0.2), "another host's feed was closed"
    with mirror.mgr.client(old) as c:
        assert c.get("/v1/hosts/EHS1/feed").status_code == 401
    mirror.tokens["EHS1"] = new
    mirror.assert_views()


def test_status_report_drives_lag(mirror: Mirror) -> None:
    mirror.open_feeds()
    rev, deltas = mirror.command("/v1/reg", {"lnid": 1, "mac": MAC1, "host": "EHS1"})
    mirror.expect(rev, deltas)
    hosts = {h["name"]: h for h in mirror.http.get("/v1/hosts").json()}
    assert hosts["EHS1"]["revision_due"] == rev and hosts["EHS1"]["in_sync"] is False
    with mirror.mgr.client(mirror.tokens["EHS1"]) as c:
        assert c.post("/v1/hosts/EHS1/status", json={"revision": rev}).status_code == 200
    hosts = {h["name"]: h for h in mirror.http.get("/v1/hosts").json()}
    assert hosts["EHS1"]["in_sync"] is True and hosts["EHS1"]["lag"] == 0
    assert hosts["EHS1"]["revision_applied"] == rev
