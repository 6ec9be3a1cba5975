"""The manager's HTTP API on a real process: authentication and bad input (SPEC §7).

Every refused call must name the field (or kind) that is wrong and leave the state as
it was: the revision and the whole table are compared before and after.
"""

from __future__ import annotations

import json
import re
import resource
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from managerproc import HOSTVLAN, Manager, running_manager

VM1, VM2, VM3 = "52:54:00:10:00:01", "52:54:00:10:00:02", "52:54:00:10:00:03"


@pytest.fixture(scope="module")
def mgr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    with running_manager(tmp_path_factory.mktemp("manager")) as m:
        yield m


@pytest.fixture(scope="module")
def admin(mgr: Manager) -> Iterator[httpx.Client]:
    with mgr.client() as c:
        yield c


@pytest.fixture(scope="module")
def tokens(admin: httpx.Client) -> dict[str, str]:
    """Hosts A and B with one vNIC each: VM1 on A (LNID 1), VM2 on B (LNID 2)."""
    out = {}
    for h in ("A", "B"):
        r = admin.post("/v1/hosts", json={"name": h})
        assert r.status_code == 201, r.text
        out[h] = r.json()["token"]
    for lnid, mac, host in ((1, VM1, "A"), (2, VM2, "B")):
        assert admin.post("/v1/reg", json={"lnid": lnid, "mac": mac, "host": host}).json()["changed"] is True
    return out


def state(admin: httpx.Client) -> tuple[int, Any, Any]:
    return (
        admin.get("/v1/revision").json()["revision"],
        admin.get("/v1/macs").json(),
        admin.get("/v1/hosts").json(),
    )


# ----- authentication ---------------------------------------------------------------------------
def test_no_token_and_wrong_token_are_401(mgr: Manager, tokens: dict[str, str]) -> None:
    for token in ("", "not-the-token"):
        with mgr.client(token) as c:
            for method, path in (("GET", "/v1/macs"), ("POST", "/v1/reg"), ("GET", "/v1/hosts/A/feed")):
                r = c.request(method, path, json={"lnid": 1, "mac": VM3, "host": "A"})
                assert r.status_code == 401, (token, path, r.text)
                assert r.json()["error"] == "auth"
    with httpx.Client(base_url=mgr.url, headers={"Authorization": "Basic abc"}, trust_env=False) as c:
        assert c.get("/v1/macs").status_code == 401


def test_host_token_cannot_manage(mgr: Manager, admin: httpx.Client, tokens: dict[str, str]) -> None:
    before = state(admin)
    with mgr.client(tokens["A"]) as c:
        for method, path, body in (
            ("GET", "/v1/macs", None),
            ("GET", "/v1/hosts", None),
            ("POST", "/v1/reg", {"lnid": 1, "mac": VM3, "host": "A"}),
            ("POST", "/v1/hosts", {"name": "C"}),
            ("POST", "/v1/hosts/A/token", None),
        ):
            r = c.request(method, path, json=body)
            assert r.status_code == 403, (path, r.text)
            assert r.json()["error"] == "auth"
    assert state(admin) == before


def test_host_token_reads_only_its_own_feed(mgr: Manager, tokens: dict[str, str]) -> None:
    with mgr.client(tokens["A"]) as c:
        r = c.get("/v1/hosts/B/feed")
        assert r.status_code == 403 and "A" in r.json()["detail"]
        assert c.post("/v1/hosts/B/status", json={"revision": 1}).status_code == 403
    snap = mgr.snapshot("A", tokens["A"])
    assert snap["entries"] == {VM1: [1]} and snap["local"] == {VM1: None}
    # the admin token streams through the FastAPI route (same function, same lines)
    assert mgr.snapshot("A") == snap


# ----- bad input never changes anything ----------------------------------------------------------
def reg(lnid: Any = 1, mac: Any = VM3, host: Any = "A", **kw: Any) -> dict[str, Any]:
    return {"lnid": lnid, "mac": mac, "host": host, **kw}


BAD: list[tuple[str, str, Any, int, str]] = [
    # id, path, JSON body, status, field
    ("mac-malformed", "/v1/reg", reg(mac="52:54:00:10:00"), 400, "mac"),
    ("mac-not-hex", "/v1/reg", reg(mac="52:54:00:10:00:zz"), 400, "mac"),
    ("mac-number", "/v1/reg", reg(mac=5), 400, "mac"),
    ("mac-multicast", "/v1/reg", reg(mac="01:00:5e:00:00:01"), 400, "mac"),
    ("mac-broadcast", "/v1/reg", reg(mac="ff:ff:ff:ff:ff:ff"), 400, "mac"),
    ("mac-zero", "/v1/reg", reg(mac="00:00:00:00:00:00"), 400, "mac"),
    ("mac-missing", "/v1/reg", {"lnid": 1, "host": "A"}, 400, "mac"),
    ("lnid-0", "/v1/reg", reg(lnid=0), 400, "lnid"),
    ("lnid-neg", "/v1/reg", reg(lnid=-1), 400, "lnid"),
    ("lnid-2^63", "/v1/reg", reg(lnid=2**63), 400, "lnid"),
    ("lnid-2^63-str", "/v1/reg", reg(lnid=str(2**63)), 400, "lnid"),
    ("lnid-abc", "/v1/reg", reg(lnid="abc"), 400, "lnid"),
    ("lnid-true", "/v1/reg", reg(lnid=True), 400, "lnid"),
    ("lnid-float", "/v1/reg", reg(lnid=1.5), 400, "lnid"),
    ("lnid-null", "/v1/reg", reg(lnid=None), 400, "lnid"),
    ("lnid-list", "/v1/reg", reg(lnid=[1]), 400, "lnid"),
    ("lnid-missing", "/v1/reg", {"mac": VM3, "host": "A"}, 400, "lnid"),
    ("host-unknown", "/v1/reg", reg(host="NOPE"), 404, "not_found"),
    ("host-malformed", "/v1/reg", reg(host="a b"), 400, "host"),
    ("host-missing", "/v1/reg", reg(host=None), 400, "host"),
    ("host-and-external", "/v1/reg", reg(external=True), 400, "host"),
    ("port-too-long", "/v1/reg", reg(port="p" * 16), 400, "port"),
    ("port-slash", "/v1/reg", reg(port="a/b"), 400, "port"),
    ("mac-on-other-host", "/v1/reg", reg(mac=VM2, host="A"), 409, "conflict"),
    ("mac-other-host-as-external", "/v1/reg", reg(mac=VM1, host=None, external=True), 409, "conflict"),
    ("body-list", "/v1/reg", [1, 2], 400, "body"),
    ("unreg-lnid", "/v1/unreg", {"lnid": "abc", "mac": VM1}, 400, "lnid"),
    ("unreg-mac", "/v1/unreg", {"lnid": 1, "mac": "nope"}, 400, "mac"),
    ("rm-mac", "/v1/rm", {"mac": "52:54:00"}, 400, "mac"),
    ("move-unknown-mac", "/v1/move", {"mac": VM3, "host": "B"}, 404, "not_found"),
    ("move-unknown-host", "/v1/move", {"mac": VM1, "host": "NOPE"}, 404, "not_found"),
    ("batch-one-bad", "/v1/batch", {"ops": [{"op": "reg", **reg()}, {"op": "reg", **reg(mac="x")}]}, 400, "ops[1].mac"),
    ("batch-conflict", "/v1/batch", {"ops": [{"op": "reg", **reg()}, {"op": "reg", **reg(mac=VM2)}]}, 409, "conflict"),
    ("batch-unknown-op", "/v1/batch", {"ops": [{"op": "drop", "mac": VM1}]}, 400, "ops[0].op"),
    ("host-add-name", "/v1/hosts", {"name": "bad name!"}, 400, "name"),
    ("host-add-exists", "/v1/hosts", {"name": "A"}, 409, "conflict"),
]


@pytest.mark.parametrize(("path", "body", "status", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_and_changes_nothing(
    admin: httpx.Client, tokens: dict[str, str], path: str, body: Any, status: int, field: str
) -> None:
    before = state(admin)
    r = admin.post(path, json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"error", "detail"}
    assert err["error"] == field
    assert err["detail"]
    assert state(admin) == before


def test_unknown_host_and_conflict_explain_themselves(admin: httpx.Client, tokens: dict[str, str]) -> None:
    assert "NOPE" in admin.post("/v1/reg", json=reg(host="NOPE")).json()["detail"]
    detail = admin.post("/v1/reg", json=reg(mac=VM2, host="A")).json()["detail"]
    assert VM2 in detail and "host B" in detail and "move" in detail


@pytest.mark.parametrize(
    ("content", "headers"),
    [
        (b'{"lnid": 1, "mac": ', {"content-type": "application/json"}),
        (b"\xff\xfe", {"content-type": "application/json"}),
        (b"lnid=1", {"content-type": "application/json"}),
    ],
    ids=["truncated", "not-utf8", "not-json"],
)
def test_malformed_json(admin: httpx.Client, tokens: dict[str, str], content: bytes, headers: dict[str, str]) -> None:
    before = state(admin)
    r = admin.post("/v1/reg", content=content, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "body"
    assert state(admin) == before


def test_oversized_body_is_413(admin: httpx.Client, tokens: dict[str, str]) -> None:
    before = state(admin)
    big = json.dumps(reg(port="x" * (1 << 20))).encode()
    r = admin.post("/v1/reg", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        step = 64 << 10
        for i in range(0, len(big), step):
            yield big[i : i + step]

    r = admin.post("/v1/reg", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"] == "body"
    assert state(admin) == before
    # a body just under the limit is read and judged on its content
    ok = json.dumps(reg(port="x" * ((1 << 20) - 200))).encode()
    assert len(ok) < 1 << 20
    assert admin.post("/v1/reg", content=ok, headers={"content-type": "application/json"}).json()["error"] == "port"


def test_bad_query_names_the_field(admin: httpx.Client, tokens: dict[str, str]) -> None:
    assert admin.get("/v1/macs", params={"lnid": "abc"}).json()["error"] == "lnid"
    assert admin.get("/v1/macs", params={"mac": "zz"}).json()["error"] == "mac"
    r = admin.get("/v1/trace", params={"src": VM1})
    assert r.status_code == 400 and r.json()["error"] == "dst"
    assert admin.get("/v1/trace", params={"src": "x", "dst": VM2}).json()["error"] == "src"
    r = admin.get("/v1/trace", params={"src": VM1, "dst": "NOPE:eth0"})
    assert r.status_code == 404 and "NOPE" in r.json()["detail"]


# ----- good input --------------------------------------------------------------------------------
def test_reregistering_is_a_noop(admin: httpx.Client, tokens: dict[str, str]) -> None:
    first = admin.post("/v1/reg", json=reg(lnid=9, mac="52:54:00:10:00:09", host="B", port="vp9")).json()
    assert first["changed"] is True
    again = admin.post("/v1/reg", json=reg(lnid=9, mac="52:54:00:10:00:09", host="B", port="vp9")).json()
    assert again == {"revision": first["revision"], "changed": False}
    assert admin.get("/v1/revision").json()["revision"] == first["revision"]
    # the extreme LNIDs are accepted, as integers or strings
    top = admin.post("/v1/reg", json=reg(lnid=str(2**63 - 1), mac="52:54:00:10:00:09", host="B")).json()
    assert top["changed"] is True and top["revision"] == first["revision"] + 1
    row = admin.get("/v1/macs", params={"mac": "52:54:00:10:00:09"}).json()
    assert row == [
        {
            "mac": "52:54:00:10:00:09",
            "lnids": [9, 2**63 - 1],
            "host": "B",
            "port": "vp9",
            "external": False,
            "state": "host down",  # B's agent is not connected
            "bound_port": None,
            "addresses": [],
            "shared": [],
            "router": False,
            "dhcp_server": False,
            "guarded": False,
        }
    ]


def test_host_calls_answer_the_revision(admin: httpx.Client, tokens: dict[str, str]) -> None:
    before = admin.get("/v1/revision").json()["revision"]
    added = admin.post("/v1/hosts", json={"name": "TMP"}).json()
    assert added["revision"] == before + 1 == admin.get("/v1/revision").json()["revision"]
    rotated = admin.post("/v1/hosts/TMP/token").json()
    assert rotated["token"] != added["token"] and rotated["revision"] == before + 2
    removed = admin.delete("/v1/hosts/TMP").json()
    assert removed == {"removed": "TMP", "revision": before + 3}
    assert admin.delete("/v1/hosts/TMP").status_code == 404
    r = admin.delete("/v1/hosts/A")
    assert r.status_code == 409 and r.json()["error"] == "conflict"


# ----- one error shape, the document, /docs ------------------------------------------------------
def test_unknown_route_and_method_have_the_error_shape(admin: httpx.Client, tokens: dict[str, str]) -> None:
    r = admin.get("/v1/nope")
    assert r.status_code == 404 and r.json() == {"error": "not_found", "detail": "no such call: /v1/nope"}
    r = admin.put("/v1/hosts", json={})
    assert r.status_code == 405 and r.json()["error"] == "method"
    assert r.headers["allow"] == "GET, POST"  # both routes of the path, as the document has them
    r = admin.delete("/v1/hosts/batch")  # a fixed path wins over /v1/hosts/{name}, as in the document
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = admin.request("PATCH", "/v1/hosts/A")
    assert r.status_code == 405 and r.headers["allow"] == "DELETE"


def test_auth_failures_have_the_error_shape(mgr: Manager, tokens: dict[str, str]) -> None:
    with mgr.client("") as c:
        r = c.get("/v1/macs")
    assert r.status_code == 401 and set(r.json()) == {"error", "detail"}
    assert r.headers["www-authenticate"] == "Bearer"
    with mgr.client(tokens["A"]) as c:
        r = c.get("/v1/macs")
    assert r.status_code == 403 and set(r.json()) == {"error", "detail"} and r.json()["error"] == "auth"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/reg", reg(external="yes"), "external"),
        ("/v1/reg", reg(lnid="1.5"), "lnid"),
        ("/v1/reg", reg(mac=" 52:54:00:10:00:03"), "mac"),  # the CLI may strip; the wire takes no spaces
        ("/v1/reg", reg(lnid=2**63), "lnid"),
        ("/v1/reg", reg(lnid=float(2**60)), "lnid"),  # a float that large is not an exact integer
        ("/v1/batch", {"ops": [5]}, "ops[0].op"),
        ("/v1/batch", {"ops": [{"mac": VM1}]}, "ops[0].op"),
        ("/v1/batch", {"ops": [{"op": "reg", **reg(host=None)}]}, "ops[0].host"),
        ("/v1/batch", {"ops": "x"}, "ops"),
        ("/v1/hosts/batch", {"names": ["ok", "not ok"]}, "names[1]"),
        ("/v1/hosts/batch", {"names": []}, "names"),
        ("/v1/hosts/A/status", {"revision": "1"}, "revision"),
    ],
)
def test_framework_validation_is_400_with_the_field(
    admin: httpx.Client, tokens: dict[str, str], path: str, body: Any, field: str
) -> None:
    before = state(admin)
    r = admin.post(path, json=body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error", "detail"} and r.json()["error"] == field and r.json()["detail"]
    assert state(admin) == before


def test_lnid_forms_the_document_states_are_accepted(admin: httpx.Client, tokens: dict[str, str]) -> None:
    mac = "52:54:00:10:00:0a"
    for lnid in ("GLOBAL", "+007", 8.0, 2**53 + 1, 2**63 - 1):
        r = admin.post("/v1/reg", json=reg(lnid=lnid, mac=mac, host="B"))
        assert r.status_code == 200, (lnid, r.text)
    row = admin.get("/v1/macs", params={"mac": mac.upper().replace(":", "-")}).json()
    assert row[0]["lnids"] == ["global", 7, 8, 2**53 + 1, 2**63 - 1]
    assert admin.post("/v1/rm", json={"mac": mac}).json()["changed"] is True


def test_the_document_states_the_constraints(mgr: Manager) -> None:
    with mgr.client("") as c:  # public, like /docs
        doc = c.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    reg_shapes = {
        s["$ref"].rsplit("/", 1)[1]
        for s in doc["paths"]["/v1/reg"]["post"]["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    }
    assert reg_shapes == {"RegOnHost", "RegExternal"}
    on_host = schemas["RegOnHost"]
    assert set(on_host["required"]) == {"host", "lnid", "mac"}
    assert on_host["properties"]["mac"]["pattern"].startswith("^")
    assert on_host["properties"]["host"]["pattern"] == "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
    lnid = on_host["properties"]["lnid"]["anyOf"]
    assert {"type": "integer", "minimum": 1, "format": "int64"} in lnid
    assert any("pattern" in x and "9223372036854775807" in x["pattern"] for x in lnid)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert "422" not in codes, (method, path)
            if path != "/healthz":
                assert {"401", "403"} <= codes, (method, path)
            for code, resp in op["responses"].items():
                if code >= "400":
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
            if "requestBody" in op:
                assert "413" in codes and op["x-max-body-bytes"] in (1 << 20, 256 << 20), (method, path)
    assert doc["paths"]["/v1/batch"]["post"]["x-max-body-bytes"] == 256 << 20


def test_docs_load_nothing_from_another_host(mgr: Manager) -> None:
    from hostvlan.manager.contract import hosts_referenced

    with mgr.client("") as c:
        page = c.get("/docs")
        assert page.status_code == 200 and "swagger-ui" in page.text
        assert hosts_referenced(page.text) == set()
        refs = re.findall(r"""(?:src|href)=["']([^"']+)""", page.text)
        assert refs and all(x.startswith("/docs/assets/") for x in refs), refs
        for ref in refs:
            r = c.get(ref)
            assert r.status_code == 200 and len(r.content) > 1000, ref
        assert c.get("/docs/assets/nope.js").status_code == 404


# ----- bounded requests ----------------------------------------------------------------------------
def test_max_body_is_settable_and_documented(tmp_path: Path) -> None:
    with running_manager(tmp_path, ("--max-body", "2000")) as m, m.client() as c:
        assert c.get("/openapi.json").json()["paths"]["/v1/rm"]["post"]["x-max-body-bytes"] == 2000
        r = c.post("/v1/rm", content=json.dumps({"mac": "x" * 3000}), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json() == {"error": "body", "detail": "request body larger than 2000 bytes"}
        assert c.post("/v1/rm", json={"mac": "x" * 1000}).json()["error"] == "mac"  # under it: judged


def test_oversized_and_slow_headers_are_refused(mgr: Manager, admin: httpx.Client) -> None:
    from hostvlan.manager.server import HEAD_TIMEOUT_S, MAX_HEAD_BYTES

    host, port = mgr.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT_S + 10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(2 * MAX_HEAD_BYTES // 4096):
                s.sendall(b"a" * 4096)
        except OSError:  # the manager answered and closed while we were still sending
            pass
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ") and b'"error": "headers"' in answer
    with socket.create_connection((host, int(port)), timeout=HEAD_TIMEOUT_S + 10) as s:
        t0 = time.monotonic()
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the end of the headers
        answer = s.recv(4096)
        waited = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408 ") and HEAD_TIMEOUT_S - 1 < waited < HEAD_TIMEOUT_S + 5
    assert admin.get("/healthz").json()["ok"] is True


def test_idle_connections_do_not_stop_the_manager(mgr: Manager, tokens: dict[str, str]) -> None:
    """1,000 connections held open without a request: the manager still serves an agent's
    feed and an admin's `show`, and closes the idle ones after its header timeout."""
    from hostvlan.manager.server import HEAD_TIMEOUT_S

    host, port = mgr.url.removeprefix("http://").rsplit(":", 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    idle = []
    try:
        t0 = time.monotonic()
        for _ in range(1000):
            idle.append(socket.create_connection((host, int(port)), timeout=5))
        snap = mgr.snapshot("A", tokens["A"])
        assert snap["entries"][VM1] == [1]
        show = subprocess.run(
            [str(HOSTVLAN), "show", "--manager", mgr.url, "--token", mgr.token, "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert show.returncode == 0, show.stderr
        assert any(row["mac"] == VM1 for row in json.loads(show.stdout))
        assert time.monotonic() - t0 < HEAD_TIMEOUT_S, "too slow to show that idle connections do not block"
        # and the idle ones are answered 408 and closed once their time is up
        for s in idle[::100]:
            s.settimeout(HEAD_TIMEOUT_S + 10)
            assert s.recv(4096).startswith(b"HTTP/1.1 408 ")
    finally:
        for s in idle:
            s.close()


def test_a_50_mb_body_is_413_and_the_manager_keeps_answering(admin: httpx.Client, tokens: dict[str, str]) -> None:
    big = b'{"mac": "' + b"a" * (50 << 20) + b'"}'
    r = admin.post("/v1/rm", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "body"

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 1 << 20):
            yield big[i : i + (1 << 20)]

    try:
        r = admin.post("/v1/rm", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
    except httpx.WriteError:  # answered and closed before the client finished sending: also a refusal
        pass
    assert admin.get("/healthz").json()["ok"] is True


# ----- the agents' status reports (fast path and FastAPI route) ----------------------------------
def test_status_reports_through_both_paths(mgr: Manager, admin: httpx.Client, tokens: dict[str, str]) -> None:
    """A well-formed report with the host's token takes the fast path; the admin token,
    and any odd body, the FastAPI route: same answers, same effect."""
    rev = admin.get("/v1/revision").json()["revision"]
    unbound = {VM1: {"port": None, "state": "unbound", "reason": "no such port vnet7"}}
    with mgr.client(tokens["A"]) as c:
        r = c.post("/v1/hosts/A/status", json={"revision": rev, "in_sync": True, "bindings": unbound})
        assert (r.status_code, r.json()) == (200, {"ok": True})
        hosts = {h["name"]: h for h in admin.get("/v1/hosts").json()}
        assert (hosts["A"]["unbound"], hosts["A"]["agent_in_sync"], hosts["A"]["error"]) == (1, True, None)
        row = admin.get("/v1/macs", params={"mac": VM1}).json()[0]
        assert (row["state"], row["bound_port"]) == ("host down", None)  # A's feed is not connected
        t = admin.get("/v1/trace", params={"src": "52:54:00:99:99:99", "dst": VM1}).json()  # any source
        assert t["allow"] is False and "no such port vnet7" in t["reason"]
        for body, field in (
            ({"revision": "x"}, "revision"),
            ({"revision": rev, "bindings": {VM1: {"state": "gone"}}}, f"bindings.{VM1}.state"),
            ({"revision": rev, "in_sync": 1}, "in_sync"),
        ):
            r = c.post("/v1/hosts/A/status", json=body)
            assert r.status_code == 400 and r.json()["error"] == field, r.text
        r = c.post("/v1/hosts/A/status", content=b"{", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"] == "body"
    # the route (admin token): in_sync false with its error
    r = admin.post("/v1/hosts/A/status", json={"revision": rev, "in_sync": False, "error": "apply failed"})
    assert r.status_code == 200
    hosts = {h["name"]: h for h in admin.get("/v1/hosts").json()}
    assert (hosts["A"]["agent_in_sync"], hosts["A"]["error"], hosts["A"]["in_sync"]) == (False, "apply failed", False)
    bound = {VM1: {"port": "vnet1", "state": "bound", "reason": None}}
    with mgr.client(tokens["A"]) as c:
        assert c.post("/v1/hosts/A/status", json={"revision": rev, "bindings": bound}).status_code == 200
    hosts = {h["name"]: h for h in admin.get("/v1/hosts").json()}
    assert (hosts["A"]["agent_in_sync"], hosts["A"]["error"], hosts["A"]["unbound"]) == (True, None, 0)
    assert admin.get("/v1/macs", params={"mac": VM1}).json()[0]["bound_port"] == "vnet1"
    t = admin.get("/v1/trace", params={"src": VM1, "dst": "A:vnet1"}).json()
    assert t["allow"] is True and t["dst_mac"] == VM1 and t["port"] == "vnet1"
