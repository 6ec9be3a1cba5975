"""The CLI's exit-code convention and its rendering of the manager's newer fields (no manager,
no root): every command maps a 404 to 3 and a 409 to 4; usage errors exit 2 and touch nothing;
`hosts`/`show` print the binding fields when the manager sends them, and what it has when not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hostvlan.cli import main
from hostvlan.cli.common import exit_code
from hostvlan.cli.manage import _mac_row, addresses_cell, in_sync
from hostvlan.client import ManagerError, ManagerUnreachable

BASE: dict[str, Any] = {"name": "h", "connected": True, "vnics": 3, "revision_due": 7, "revision_applied": 7, "lag": 0}


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        ({"in_sync": True}, "yes"),  # a manager that sends none of the new fields
        ({"in_sync": True, "agent_in_sync": True, "error": None, "unbound": 0}, "yes"),
        ({"in_sync": True, "agent_in_sync": True, "error": None, "unbound": 2}, "yes, 2 unbound"),
        ({"in_sync": False, "agent_in_sync": False, "error": "nft: EPERM", "unbound": 0}, "no: nft: EPERM"),
        ({"in_sync": False, "lag": 3, "revision_applied": 4}, "no (lag 3)"),
        ({"in_sync": False, "connected": False}, "no"),
    ],
)
def test_in_sync_column(extra: dict[str, Any], shown: str) -> None:
    assert in_sync(BASE | extra) == shown  # type: ignore[arg-type]


def test_show_row_prefers_the_bound_port() -> None:
    row: dict[str, Any] = {"mac": "52:54:00:00:00:01", "lnids": [1, "global"], "host": "h", "port": None,
                           "external": False}  # fmt: skip
    assert _mac_row(row) == ("52:54:00:00:00:01", "1,global", "h", "-", "-", "-")  # type: ignore[arg-type]
    row |= {"port": "vnet7", "bound_port": None, "state": "unbound: no such port vnet7"}
    assert _mac_row(row)[3:] == ("vnet7", "unbound: no such port vnet7", "-")  # type: ignore[arg-type]
    row |= {"bound_port": "vnet1", "state": "bound"}
    assert _mac_row(row)[3:] == ("vnet1", "bound", "-")  # type: ignore[arg-type]
    ext = {"mac": "52:54:00:ff:00:01", "lnids": [], "host": None, "port": None, "external": True, "state": "external"}
    assert _mac_row(ext)[2:] == ("external", "-", "external", "-")  # type: ignore[arg-type]


def test_show_addresses_cell() -> None:
    row: dict[str, Any] = {"addresses": [], "shared": [], "router": False, "dhcp_server": False, "guarded": False}
    assert addresses_cell(row) == "unguarded"  # type: ignore[arg-type]
    row |= {"addresses": ["10.0.0.1", "10.0.0.9", "fd00::1"], "shared": ["10.0.0.9"], "router": True, "guarded": True}
    assert addresses_cell(row) == "10.0.0.1,10.0.0.9(shared),fd00::1,router"  # type: ignore[arg-type]


def test_exit_codes() -> None:
    assert exit_code(ManagerError(404, "not_found", "x")) == 3
    assert exit_code(ManagerError(409, "conflict", "x")) == 4
    assert exit_code(ManagerError(422, "mac", "x")) == 1
    assert exit_code(ManagerError(401, "auth", "x")) == 1
    assert exit_code(ManagerUnreachable("http://m", "refused")) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["manager", "--log-level", "loud"],
        ["manager", "--tls-cert", "/nonexistent"],
        ["agent", "--host", "h1"],  # no --manager
        ["testbed", "down", "--prefix", "a", "--all"],
        ["testbed", "down", "--prefix", "no-dash!"],
        ["testbed", "up", "--prefix", "bad-prefix", "x.yaml"],
        ["host", "token", "h1", "--bogus"],
        ["bench", "data-path", "--rounds", "many"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_exit_2_and_create_nothing(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "m.db"
    argv = [*args, "--db", str(db)] if args[0] == "manager" else args
    res = CliRunner().invoke(main, argv, env={"HOSTVLAN_MANAGER": None})
    assert res.exit_code == 2, (res.output, res.exception)
    assert "Error" in res.stderr
    assert list(tmp_path.iterdir()) == []  # no database, no results, nothing


def test_every_group_is_there() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    for cmd in ("reg", "unreg", "rm", "move", "show", "hosts", "trace", "host", "testbed", "demo", "bench",
                "manager", "agent"):  # fmt: skip
        assert f"  {cmd} " in res.stdout, cmd
    agent = CliRunner().invoke(main, ["agent", "--help"]).stdout
    for opt in ("--manager", "--host", "--token-file", "--backend", "--send-check", "--receive-filter", "--bpf-pins",
                "--bridge", "--ovs-db", "--ovs-rundir", "--uplink", "--audit-interval", "--ready-file"):  # fmt: skip
        assert opt in agent, opt
