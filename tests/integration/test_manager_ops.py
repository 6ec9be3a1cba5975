"""Running the manager as an operator does: flags, logs, audit log, schema version, backup.

A real `hostvlan manager` subprocess per test (no root needed).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
from pathlib import Path

from managerproc import HOSTVLAN, running_manager

MAC1, MAC2 = "52:54:00:40:00:01", "52:54:00:40:00:02"


def hostvlan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HOSTVLAN), *args], capture_output=True, text=True, timeout=30, check=False)


def test_a_bad_flag_exits_2_before_the_database_is_created(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "m.db"
    for bad in (["--log-level", "loud"], ["--log-format", "yaml"]):
        res = hostvlan("manager", "--db", str(db), *bad)
        assert res.returncode == 2, res.stderr
        assert "Invalid value" in res.stderr
    assert not (tmp_path / "sub").exists()


def test_address_in_use_names_the_address(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        res = hostvlan("manager", "--db", str(tmp_path / "m.db"), "--listen", f"127.0.0.1:{port}")
    assert res.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr and "in use" in res.stderr.lower()


def test_json_logs_and_the_audit_log(tmp_path: Path) -> None:
    with running_manager(tmp_path, ("--log-format", "json", "--log-level", "info")) as mgr:
        with mgr.client() as c:
            token = c.post("/v1/hosts", json={"name": "EHS1"}).json()["token"]
            assert c.post("/v1/reg", json={"lnid": 1, "mac": MAC1, "host": "EHS1"}).status_code == 200
            assert c.post("/v1/reg", json={"lnid": 1, "mac": MAC1, "host": "NOPE"}).status_code == 404
            assert c.post("/v1/reg", json={"lnid": 0, "mac": MAC2, "host": "EHS1"}).status_code == 400
        with mgr.client(token) as c:
            assert c.post("/v1/rm", json={"mac": MAC1}).status_code == 403  # a host cannot manage
            body = {"revision": 2, "in_sync": False, "error": "apply failed"}
            assert c.post("/v1/hosts/EHS1/status", json=body).status_code == 200
            assert c.post("/v1/hosts/EHS1/status", json={"revision": "x"}).status_code == 400
            assert c.post("/v1/hosts/EHS1/status", content=b"{").status_code == 400
    lines = [x for x in mgr.log.read_text().splitlines() if x.strip()]
    recs = [json.loads(x) for x in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in recs)
    assert any("listening on http://127.0.0.1:" in r["message"] for r in recs)
    audit = [json.loads(x) for x in (tmp_path / "m.db.audit.jsonl").read_text().splitlines()]
    got = [(r["who"], r["command"], r["result"]) for r in audit]
    assert got == [
        ("admin", "admin token", "ok"),
        ("admin", "host add", "ok"),
        ("admin", "reg", "ok"),
        ("admin", "reg", "refused"),
        ("admin", "reg", "refused"),
        ("host:EHS1", "POST /v1/rm", "refused"),
        ("host:EHS1", "status", "ok"),
        ("host:EHS1", "status", "refused"),
    ], got
    assert audit[2]["revision"] == 2 and audit[3]["error"].startswith("not_found: ")
    assert audit[4]["error"].startswith("lnid: ")
    assert audit[5]["error"].startswith("auth: ") and audit[5]["args"] is None
    assert audit[6]["args"]["error"] == "apply failed"


def test_newer_schema_is_refused_and_an_old_one_upgraded(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with running_manager(tmp_path):
        pass
    con = sqlite3.connect(db)
    con.execute("DELETE FROM meta WHERE key='schema_version'")  # as written before versions
    con.commit()
    with running_manager(tmp_path):
        pass
    assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)
    con.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    con.commit()
    con.close()
    res = hostvlan("manager", "--db", str(db), "--listen", "127.0.0.1:0")
    assert res.returncode == 1
    assert "schema version 3, newer than this manager's (2)" in res.stderr


def test_backup_of_a_live_manager_restores(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    copy = tmp_path / "backup.db"
    with running_manager(live) as mgr:
        with mgr.client() as c:
            c.post("/v1/hosts", json={"name": "EHS1"})
            c.post("/v1/reg", json={"lnid": 1, "mac": MAC1, "host": "EHS1", "port": "vnet0"})
            res = hostvlan("manager", "--db", str(mgr.db), "--backup", str(copy))
            assert res.returncode == 0, res.stderr
            c.post("/v1/reg", json={"lnid": 2, "mac": MAC2, "host": "EHS1"})  # after the backup
            assert hostvlan("manager", "--db", str(mgr.db), "--backup", str(copy)).returncode == 1  # no overwrite
    # restore: the manager stopped, the copy put in place of the database (and its WAL)
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "m.db").write_bytes(copy.read_bytes())
    # the admin token file is not in the database (only its hash): it goes along
    (restored / "m.db.admin-token").write_bytes((live / "m.db.admin-token").read_bytes())
    with running_manager(restored) as mgr2:
        with mgr2.client(mgr.token) as c:  # the admin token is in the database
            rows = c.get("/v1/macs").json()
            assert [(r["mac"], r["lnids"], r["port"]) for r in rows] == [(MAC1, [1], "vnet0")]
            assert c.get("/v1/revision").json()["revision"] == 2
