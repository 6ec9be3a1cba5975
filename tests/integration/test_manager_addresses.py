"""Addresses over the manager's HTTP API and the CLI, on a real manager process (issue 13).

`reg --ip/--router/--dhcp-server`, `hostvlan addr add|del [--shared]`, `show` (ADDRESSES,
`unguarded`), `trace` and `--json`; every refusal names its field and leaves the table and
the revision as they were; `hostvlan manager --require-addresses`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from hostvlan.cli import main
from managerproc import Manager, env_without_manager_settings, running_manager

VM1, VM2, VM3, GW = "52:54:00:50:00:01", "52:54:00:50:00:02", "52:54:00:50:00:03", "52:54:00:50:ff:01"


@pytest.fixture(scope="module")
def mgr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    with running_manager(tmp_path_factory.mktemp("manager")) as m:
        yield m


def cli(mgr: Manager, *args: str) -> Result:
    env = env_without_manager_settings() | {"HOSTVLAN_MANAGER": mgr.url, "HOSTVLAN_TOKEN": mgr.token}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def ok(res: Result) -> str:
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res.stdout


def refused(res: Result, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stdout == ""
    return res.stderr.strip()


def everything(c: httpx.Client) -> Any:
    return c.get("/v1/revision").json(), c.get("/v1/macs").json()


def test_addresses_through_the_cli(mgr: Manager) -> None:
    ok(cli(mgr, "host", "add", "EHS1"))
    ok(cli(mgr, "host", "add", "EHS2"))
    out = ok(cli(mgr, "reg", "1", VM1, "EHS1", "--ip", "10.0.0.1", "--ip", "fd00::1"))
    assert out.startswith(f"registered {VM1} in LNID 1 on host EHS1")
    ok(cli(mgr, "reg", "1", VM2, "EHS2"))
    ok(cli(mgr, "reg", "global", GW, "--external", "--ip", "10.0.0.254", "--router", "--dhcp-server"))
    assert f"{VM2} holds shared address 10.0.0.100" in ok(cli(mgr, "addr", "add", VM2, "10.0.0.100", "--shared"))
    assert "nothing changed" in ok(cli(mgr, "addr", "add", VM2, "10.0.0.100", "--shared"))
    ok(cli(mgr, "addr", "add", VM1, "10.0.0.100", "--shared"))
    lines = ok(cli(mgr, "show")).strip().splitlines()
    assert lines[0].split()[-1] == "ADDRESSES"
    cells = {line.split()[0]: line.split()[-1] for line in lines[1:]}
    assert cells == {
        VM1: "10.0.0.1,10.0.0.100(shared),fd00::1",
        VM2: "10.0.0.100(shared)",
        GW: "10.0.0.254,router,dhcp_server",
    }
    rows = {r["mac"]: r for r in json.loads(ok(cli(mgr, "show", "--json")))}
    assert rows[VM1]["addresses"] == ["10.0.0.1", "10.0.0.100", "fd00::1"] and rows[VM1]["guarded"] is True
    assert rows[GW]["router"] is True and rows[GW]["dhcp_server"] is True
    assert "addresses 10.0.0.1, 10.0.0.100, fd00::1" in ok(cli(mgr, "trace", VM1, VM2))
    assert json.loads(ok(cli(mgr, "trace", VM1, VM2, "--json")))["src_guarded"] is True
    assert f"{VM2} no longer holds 10.0.0.100" in ok(cli(mgr, "addr", "del", VM2, "10.0.0.100"))
    assert "unguarded" in ok(cli(mgr, "show", "--mac", VM2))
    assert "unguarded: MAC-only" in ok(cli(mgr, "trace", VM2, VM1))
    assert json.loads(ok(cli(mgr, "hosts", "--json")))[0]["guarded"] == 1
    assert "--ip ADDR" in ok(cli(mgr, "reg", "--help")) and "--shared" in ok(cli(mgr, "addr", "add", "--help"))


@pytest.mark.parametrize(
    ("args", "code", "start"),
    [
        (("reg", "1", VM3, "EHS1", "--ip", "10.0.0.1"), 4, "error: conflict: address 10.0.0.1 is held by MAC"),
        (("reg", "1", VM3, "EHS1", "--ip", "224.0.0.1"), 4, "error: ips[0]: '224.0.0.1' is a multicast address"),
        (("reg", "1", VM3, "EHS1", "--ip", "10.0.0.3", "--ip", "x"), 1, "error: ips[1]: "),
        (("reg", "1", VM3, "EHS1", "--ip", "127.0.0.1"), 4, "error: ips[0]: '127.0.0.1' is a loopback"),
        (("addr", "add", VM1, "10.0.0.0/24"), 4, "error: conflict: address 10.0.0.0/24 overlaps"),
        (("addr", "add", VM1, "10.0.0.1/24"), 4, "error: address: '10.0.0.1/24' is not an IPv4/IPv6"),
        (("addr", "add", VM1, "255.255.255.255"), 4, "error: address: '255.255.255.255' is the broadcast"),
        (("addr", "add", VM3, "10.0.0.3"), 3, f"error: not_found: MAC {VM3} is not registered"),
        (("addr", "add", GW, "10.0.0.100", "--shared"), 4, "error: conflict: "),
        (("addr", "del", VM1, "not-an-address"), 1, "error: address: "),
    ],
)
def test_refusals_name_the_field_and_change_nothing(mgr: Manager, args: tuple[str, ...], code: int, start: str) -> None:
    with mgr.client() as c:
        before = everything(c)
        assert refused(cli(mgr, *args), code).startswith(start)
        assert everything(c) == before


def test_api_bodies(mgr: Manager) -> None:
    with mgr.client() as c:
        before = everything(c)
        for body, field in (
            ({"lnid": 1, "mac": VM3, "host": "EHS1", "ips": "10.0.0.3"}, "ips"),
            ({"lnid": 1, "mac": VM3, "host": "EHS1", "ips": ["10.0.0.3 "]}, "ips[0]"),
            ({"lnid": 1, "mac": VM3, "host": "EHS1", "ips": [], "router": 1}, "router"),
        ):
            r = c.post("/v1/reg", json=body)
            assert r.status_code == 400 and r.json()["error"] == field, r.text
        r = c.post("/v1/addr/add", json={"mac": VM1, "address": "ff02::1"})
        assert r.status_code == 409 and r.json()["error"] == "address", r.text
        r = c.post("/v1/batch", json={"ops": [{"op": "addr_add", "mac": VM1, "address": "::1"}]})
        assert r.status_code == 409 and r.json()["error"] == "ops[0].address", r.text
        assert everything(c) == before
        r = c.post("/v1/batch", json={"ops": [{"op": "addr_add", "mac": VM1, "address": "fd00::9"}]})
        assert r.status_code == 200 and r.json()["changed"] is True
        r = c.post("/v1/addr/del", json={"mac": VM1, "address": "fd00::9"})
        assert r.json()["changed"] is True
        doc = c.get("/openapi.json").json()
        assert {"/v1/addr/add", "/v1/addr/del"} <= set(doc["paths"])


def test_require_addresses(tmp_path: Path) -> None:
    with running_manager(tmp_path, ("--require-addresses",)) as m, m.client() as c:
        assert c.post("/v1/hosts", json={"name": "EHS1"}).status_code == 201
        r = c.post("/v1/reg", json={"lnid": 1, "mac": VM1, "host": "EHS1"})
        assert r.status_code == 409 and r.json()["error"] == "ips", r.text
        assert c.get("/v1/macs").json() == []
        r = c.post("/v1/reg", json={"lnid": 1, "mac": VM1, "host": "EHS1", "ips": ["10.0.0.1"]})
        assert r.status_code == 200 and r.json()["changed"] is True
        r = c.post("/v1/addr/del", json={"mac": VM1, "address": "10.0.0.1"})
        assert r.status_code == 409 and r.json()["error"] == "address"
        audit = (tmp_path / "m.db.audit.jsonl").read_text().splitlines()
        assert any(json.loads(x)["command"] == "addr_del" and json.loads(x)["result"] == "refused" for x in audit)
