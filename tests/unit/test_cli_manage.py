"""The management commands (`hostvlan reg/unreg/rm/move/show/hosts/trace/host …`).

Run in-process with click's CliRunner against a real manager subprocess: what the
operator sees (tables, messages, revisions), what scripts see (--json), and every way a
command can fail (usage errors exit 2, not found 3, conflict 4, other refusals and an unreachable manager 1).
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
from hostvlan.client import Client, ManagerError, ManagerUnreachable
from managerproc import Manager, env_without_manager_settings, free_port, running_manager

A1, A2, B1, GW = "52:54:00:20:00:01", "52:54:00:20:00:02", "52:54:00:20:00:03", "52:54:00:20:ff:01"
R_A, R_B = "52:54:00:21:00:01", "52:54:00:21:00:02"


@pytest.fixture(scope="module")
def mgr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    with running_manager(tmp_path_factory.mktemp("manager")) as m:
        yield m


@pytest.fixture
def hv(mgr: Manager) -> Any:
    """`hv(*args, env=…)`: run `hostvlan ARGS` connected to the test manager by environment."""

    def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
        full = env_without_manager_settings() | {"HOSTVLAN_MANAGER": mgr.url, "HOSTVLAN_TOKEN": mgr.token}
        return CliRunner().invoke(main, list(args), env=full | (env or {}), catch_exceptions=False)

    return run


def ok(res: Result) -> str:
    assert res.exit_code == 0, (res.exit_code, res.stdout, res.stderr)
    return res.stdout


def refused(res: Result, code: int = 1) -> str:
    """A refusal: exit `code`, nothing on stdout, one `error: FIELD: DETAIL` line on stderr."""
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def table(text: str) -> list[dict[str, str]]:
    """Parse a whitespace-aligned table (header line, then rows)."""
    head, *rows = text.strip().splitlines()
    cols = head.split()
    starts = [head.index(c) for c in cols]  # a cell may hold spaces ("no (lag 3)"): cut at the header's columns
    ends = [*starts[1:], None]
    return [{c: r[a:b].strip() for c, a, b in zip(cols, starts, ends, strict=True)} for r in rows]


# ----- connection and usage errors ------------------------------------------------------------
def test_missing_token_is_a_usage_error(hv: Any) -> None:
    res = hv("show", env={"HOSTVLAN_TOKEN": None})
    assert res.exit_code == 2
    assert "no admin token" in res.stderr and "HOSTVLAN_TOKEN" in res.stderr


def test_token_from_file_and_precedence(hv: Any, mgr: Manager, tmp_path: Path) -> None:
    f = tmp_path / "tok"
    f.write_text(mgr.token + "\n")
    assert ok(hv("show", "--json", "--token-file", str(f), env={"HOSTVLAN_TOKEN": None})).startswith("[")
    # an explicit --token-file beats a stale HOSTVLAN_TOKEN; HOSTVLAN_TOKEN_FILE works too
    assert isinstance(json.loads(ok(hv("show", "--json", "--token-file", str(f), env={"HOSTVLAN_TOKEN": "x"}))), list)
    assert ok(hv("hosts", "--json", env={"HOSTVLAN_TOKEN": None, "HOSTVLAN_TOKEN_FILE": str(f)}))
    assert hv("show", "--token", "x", "--token-file", str(f)).exit_code == 2
    empty = tmp_path / "empty"
    empty.write_text("\n")
    res = hv("show", "--token-file", str(empty), env={"HOSTVLAN_TOKEN": None})
    assert res.exit_code == 2 and "empty" in res.stderr
    assert hv("show", "--token-file", str(tmp_path / "missing")).exit_code == 2


def test_wrong_token_is_refused(hv: Any) -> None:
    assert refused(hv("show", "--token", "wrong")) == "error: auth: invalid token"


def test_unreachable_manager(hv: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = refused(hv("hosts", "--manager", url))
    assert line.startswith(f"error: manager: cannot reach the manager at {url}: ")
    assert "refused" in line.lower()


def test_bad_manager_url_and_cacert(hv: Any, tmp_path: Path) -> None:
    res = hv("show", "--manager", "127.0.0.1:7080")
    assert res.exit_code == 2 and "http://" in res.stderr
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    res = hv("show", "--cacert", str(bad))
    assert res.exit_code == 2 and "CA bundle" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("reg",),
        ("reg", "1"),
        ("reg", "1", A1),  # neither HOST nor --external
        ("reg", "1", A1, "EHS1", "--external"),
        ("reg", "1", A1, "--external", "--port", "p"),
        ("reg", "1", A1, "EHS1", "--bogus"),
        ("unreg", "1"),
        ("rm",),
        ("move", A1),
        ("move", A1, "EHS1", "--external"),
        ("trace", A1),
        ("host", "add"),
        ("host", "frob", "x"),
        ("show", "--host"),
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_errors_exit_2(hv: Any, args: tuple[str, ...]) -> None:
    res = hv(*args)
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert res.stdout == ""
    assert "Error: " in res.stderr


@pytest.mark.parametrize(
    "cmd",
    ["reg", "unreg", "rm", "move", "show", "hosts", "trace", "host", "host add", "host token", "host rm"],
)
def test_every_command_has_help(hv: Any, cmd: str) -> None:
    out = ok(hv(*cmd.split(), "--help"))
    assert out.startswith("Usage: ")
    if cmd != "host":
        assert "--manager URL" in out and "HOSTVLAN_TOKEN" in out
        assert "--json" in out


# ----- refusals from the manager ---------------------------------------------------------------
def test_bad_input_is_refused_with_the_field(hv: Any) -> None:
    ok(hv("host", "add", "R1"))
    ok(hv("host", "add", "R2"))
    ok(hv("reg", "1", R_A, "R1"))
    before = json.loads(ok(hv("show", "--json")))
    assert refused(hv("reg", "0", R_B, "R1")).startswith("error: lnid: LNID 0 out of range")
    assert refused(hv("reg", "abc", R_B, "R1")).startswith("error: lnid: ")
    assert refused(hv("reg", str(2**63), R_B, "R1")).startswith("error: lnid: ")
    assert refused(hv("reg", "1", "52:54:00", "R1")).startswith("error: mac: malformed MAC")
    assert refused(hv("reg", "1", "01:00:5e:00:00:01", "R1")).startswith("error: mac: ")
    assert refused(hv("reg", "1", "00:00:00:00:00:00", "R1")).startswith("error: mac: ")
    assert refused(hv("reg", "1", R_B, "NOPE"), 3).startswith("error: not_found: unknown host 'NOPE'")
    assert refused(hv("reg", "1", R_B, "R1", "--port", "x" * 16)).startswith("error: port: ")
    line = refused(hv("reg", "1", R_A, "R2"), 4)
    assert line.startswith(f"error: conflict: MAC {R_A} is already registered on host R1") and "move" in line
    assert refused(hv("move", R_B, "R2"), 3).startswith(f"error: not_found: MAC {R_B} is not registered")
    assert refused(hv("host", "add", "R1"), 4).startswith("error: conflict: host R1 already exists")
    assert refused(hv("host", "rm", "R1"), 4).startswith("error: conflict: host R1 still has 1 registered vNIC")
    assert refused(hv("host", "token", "NOPE"), 3).startswith("error: not_found: ")
    assert refused(hv("host", "token", "NOPE", "--rotate"), 3).startswith("error: not_found: ")
    assert refused(hv("show", "--host", "NOPE"), 3) == "error: not_found: unknown host 'NOPE'"
    assert refused(hv("show", "--host", "NOPE", "--json"), 3) == "error: not_found: unknown host 'NOPE'"
    assert refused(hv("show", "--lnid", "x")).startswith("error: lnid: ")
    assert refused(hv("trace", "zz", R_A)).startswith("error: src: ")
    assert json.loads(ok(hv("show", "--json"))) == before  # nothing changed


# ----- the commands --------------------------------------------------------------------------------
def test_register_show_trace_move_remove(hv: Any, mgr: Manager) -> None:
    out = ok(hv("host", "add", "EHS1"))
    assert out.startswith("host EHS1 added (revision ")
    token = out.strip().splitlines()[-1]
    assert mgr.snapshot("EHS1", token)["entries"] == {}  # the printed token is the host's
    added = json.loads(ok(hv("host", "add", "EHS2", "--json")))
    assert set(added) == {"name", "token", "revision"} and added["name"] == "EHS2"

    out = ok(hv("reg", "1", A1, "EHS1", "--port", "vnet0"))
    assert out.startswith(f"registered {A1} in LNID 1 on host EHS1 port vnet0 (revision ")
    rev = int(out.rsplit("revision ", 1)[1].rstrip(")\n"))
    again = ok(hv("reg", "1", A1, "EHS1", "--port", "vnet0"))
    assert "nothing changed" in again and f"(revision {rev})" in again
    ok(hv("reg", "3", A1, "EHS1"))
    ok(hv("reg", "2", A2, "EHS1"))
    ok(hv("reg", "3", B1, "EHS2"))
    assert "as external" in ok(hv("reg", "global", GW, "--external"))
    js = json.loads(ok(hv("reg", "4", B1, "EHS2", "--json")))
    assert js["changed"] is True and js["revision"] > rev

    rows = {r["MAC"]: r for r in table(ok(hv("show")))}
    # STATE: what the manager says of the binding (`-` from a manager that does not say yet)
    assert {k: v for k, v in rows[A1].items() if k != "STATE"} == {
        "MAC": A1,
        "LNIDS": "1,3",
        "HOST": "EHS1",
        "PORT": "vnet0",
        "ADDRESSES": "unguarded",
    }
    assert {k: v for k, v in rows[A2].items() if k != "STATE"} == {
        "MAC": A2,
        "LNIDS": "2",
        "HOST": "EHS1",
        "PORT": "-",
        "ADDRESSES": "unguarded",
    }
    assert rows[GW]["HOST"] == "external" and rows[GW]["PORT"] == "-"
    assert rows[A1]["STATE"] in ("-", "host down") and rows[GW]["STATE"] in ("-", "external")
    assert set(rows) >= {A1, A2, B1, GW}
    shown = json.loads(ok(hv("show", "--json", "--lnid", "3")))
    assert {r["mac"] for r in shown} == {A1, B1}
    assert {r["mac"] for r in json.loads(ok(hv("show", "--json", "--host", "EHS1")))} == {A1, A2}
    assert json.loads(ok(hv("show", "--json", "--mac", GW))) == [
        {
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
    ]
    assert ok(hv("show", "--mac", "52:54:00:20:aa:aa")).strip() == "no MAC matches"

    # trace evaluates what the agents reported binding (none yet: fail closed)
    assert ok(hv("trace", B1, "EHS1:vnet0")).startswith(f"DROP: source {B1} is not bound on host EHS2")
    assert ok(hv("trace", "52:54:00:99:99:99", "EHS1:vnet0")).startswith("DROP: no vNIC is bound to port EHS1:vnet0")
    bound = {"port": "vnet0", "state": "bound", "reason": None}
    with mgr.client() as c:
        now = c.get("/v1/revision").json()["revision"]  # the agents' reports are of the current view
    with mgr.client(token) as c:
        body = {"revision": now, "bindings": {A1: bound, A2: {**bound, "port": "vnet1"}}}
        assert c.post("/v1/hosts/EHS1/status", json=body).status_code == 200
    with mgr.client(added["token"]) as c:
        body = {"revision": now, "bindings": {B1: {**bound, "port": "vnet5"}}}
        assert c.post("/v1/hosts/EHS2/status", json=body).status_code == 200
    out = ok(hv("trace", A2, B1))
    assert out.startswith("DROP: ") and "no shared LNID" in out
    assert f"to   {B1} on EHS2:vnet5 (LNIDs 3,4)" in out
    out = ok(hv("trace", B1, "EHS1:vnet0"))
    assert out.startswith("ALLOW: shared LNID 3")
    t = json.loads(ok(hv("trace", GW, A2, "--json")))
    assert t["allow"] is True and t["src_lnids"] == ["global"] and t["dst_mac"] == A2
    assert ok(hv("trace", A2, "EHS1:nope")).startswith("DROP: no vNIC is bound to port EHS1:nope")

    assert "moved" in ok(hv("move", A2, "EHS2", "--port", "vnet7"))
    assert "nothing changed" in ok(hv("move", A2, "EHS2", "--port", "vnet7"))
    assert table(ok(hv("show", "--mac", A2)))[0]["HOST"] == "EHS2"
    assert ok(hv("unreg", "3", A1)).startswith(f"removed {A1} from LNID 3 (revision ")
    assert "nothing changed" in ok(hv("unreg", "3", A1))
    assert ok(hv("rm", A2)).startswith(f"removed {A2} from every LNID (revision ")
    assert "is not registered: nothing changed" in ok(hv("rm", A2))
    assert json.loads(ok(hv("show", "--json", "--host", "EHS2"))) == [
        {
            "mac": B1,
            "lnids": [3, 4],
            "host": "EHS2",
            "port": None,
            "external": False,
            "state": "host down",
            "bound_port": "vnet5",
            "addresses": [],
            "shared": [],
            "router": False,
            "dhcp_server": False,
            "guarded": False,
        }
    ]
    assert ok(hv("show", "--host", "EHS2", "--lnid", "9")).strip() == "no MAC matches"  # a known host: exit 0

    res = hv("host", "token", "EHS1")
    rotated = ok(res).strip().splitlines()[-1]
    assert rotated != token and "was rotated" in res.stderr
    res = hv("host", "token", "EHS1", "--rotate")
    again = ok(res).strip().splitlines()[-1]
    assert again != rotated and res.stderr == ""
    with mgr.client(rotated) as c:
        assert c.get("/v1/hosts/EHS1/feed").status_code == 401
    with mgr.client(token) as c:
        assert c.get("/v1/hosts/EHS1/feed").status_code == 401
    ok(hv("rm", A1))
    assert ok(hv("host", "rm", "EHS1")).startswith("host EHS1 removed (revision ")
    assert "EHS1" not in {h["name"] for h in json.loads(ok(hv("hosts", "--json")))}


def test_hosts_table_and_json(hv: Any, mgr: Manager) -> None:
    token = json.loads(ok(hv("host", "add", "LAG1", "--json")))["token"]
    ok(hv("reg", "77", "52:54:00:20:77:01", "LAG1"))
    with mgr.client(token) as c:
        assert c.post("/v1/hosts/LAG1/status", json={"revision": 1}).status_code == 200
    rows = {h["name"]: h for h in json.loads(ok(hv("hosts", "--json")))}
    js = rows["LAG1"]
    assert js["connected"] is False and js["vnics"] == 1 and js["in_sync"] is False
    assert js["revision_applied"] == 1 and js["lag"] == js["revision_due"] - 1 > 0
    row = {r["NAME"]: r for r in table(ok(hv("hosts")))}["LAG1"]
    assert row == {
        "NAME": "LAG1",
        "CONNECTED": "no",
        "VNICS": "1",
        "APPLIED": "1",
        "DUE": str(js["revision_due"]),
        "LAG": str(js["lag"]),
        "IN-SYNC": f"no (lag {js['lag']})",
    }


# ----- the client's error mapping (no manager needed) ---------------------------------------------
def test_client_maps_every_failure_to_manager_error() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/macs":
            return httpx.Response(502, text="<html>bad gateway</html>")
        if request.url.path == "/v1/hosts":
            raise httpx.ReadTimeout("timed out", request=request)
        assert request.headers["authorization"] == "Bearer T"
        return httpx.Response(409, json={"error": "conflict", "detail": "MAC is elsewhere"})

    with Client("http://m.example:7080/", "T", transport=httpx.MockTransport(answer)) as c:
        with pytest.raises(ManagerError) as exc:
            c.reg(1, A1, "H")
        assert (exc.value.status, exc.value.field, exc.value.detail) == (409, "conflict", "MAC is elsewhere")
        with pytest.raises(ManagerError) as exc:
            c.macs()
        assert exc.value.status == 502 and exc.value.field == "http" and "bad gateway" in exc.value.detail
        with pytest.raises(ManagerUnreachable) as unreachable:
            c.hosts()
        assert unreachable.value.status == 0
        assert str(unreachable.value).startswith("manager: cannot reach the manager at http://m.example:7080: ")
    with pytest.raises(ValueError, match="http://"):
        Client("m.example:7080", "T")


def test_client_fails_over_between_replicas_and_reads_its_writes() -> None:
    """`URL1,URL2`: a replica answering 503 or unreachable makes the call go to the next;
    reads then carry the highest revision seen (`min_revision`)."""
    import httpx

    from hostvlan.client import Client

    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, str(request.url)))
        if request.url.host == "down":
            raise httpx.ConnectError("refused")
        if request.url.host == "lost":
            return httpx.Response(503, json={"error": "store", "detail": "lost its store"})
        if request.method == "POST":
            return httpx.Response(200, json={"revision": 42, "changed": True})
        return httpx.Response(200, json=[])

    c = Client("http://down:1,http://lost:2,http://up:3", "t", transport=httpx.MockTransport(handler))
    assert c.reg(1, "52:54:00:00:00:01", "h")["revision"] == 42
    assert [h for h, _ in seen] == ["down", "lost", "up"]
    assert c.base_url == "http://up:3"
    seen.clear()
    c.macs()
    assert seen == [("up", "http://up:3/v1/macs?min_revision=42")]
    c.close()
