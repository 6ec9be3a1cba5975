"""A small typed client of the manager's HTTP API (docs/control-plane.md).

The admin side of the API: used by the CLI and the testbed. It knows the calls, their
JSON shapes and the error format, nothing of the model: the manager validates every
value and names the field that is wrong. Every failure surfaces as one exception class,
`ManagerError`: an error answer keeps the manager's status, field and detail; a manager
that cannot be reached (refused, DNS, TLS, timeout) raises its subclass
`ManagerUnreachable`.

The agents' two calls (the feed, a long-lived stream, and the status report) are not
here: the agent speaks them itself over an asynchronous HTTP client
(`hostvlan.agent.daemon`), with the lines and bodies of `hostvlan.wire`.

May import: httpx and the standard library only (no `hostvlan.model`, no manager code).
"""

from __future__ import annotations

import random
import ssl
import time
from pathlib import Path
from types import TracebackType
from typing import Any, NotRequired, TypedDict
from urllib.parse import quote

import httpx

LnidArg = int | str
"""An LNID as the API takes it: an integer 1..2^63-1, or "global" (strings are parsed by the manager)."""

DEFAULT_TIMEOUT = 10.0
FAILOVER_S = 20.0
"""With several manager URLs, how long a call keeps trying them (jittered backoff between rounds)."""


class ManagerError(Exception):
    """The manager refused a call (`status` 4xx/5xx), or could not be reached (`status` 0).

    `field` names what is wrong (e.g. "mac", "lnid", "host", "body", "auth") or the kind of
    refusal ("conflict", "not_found"); `detail` says how, for a human.
    """

    def __init__(self, status: int, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.status = status
        self.field = field
        self.detail = detail


class ManagerUnreachable(ManagerError):
    """No answer at all: connection refused, name not resolved, TLS failure, timeout."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(0, "manager", f"cannot reach the manager at {url}: {reason}")
        self.url = url


# ----- answers -----------------------------------------------------------------------------------
class Change(TypedDict):
    """Answer of every state-changing command; `changed` is false for a no-op."""

    revision: int
    changed: bool


class HostToken(TypedDict):
    name: str
    token: str
    revision: int


class HostInfo(TypedDict):
    name: str
    connected: bool
    vnics: int
    revision_due: int
    revision_applied: int
    in_sync: bool  # connected, applied >= due, and the agent says it is in sync
    lag: int
    agent_in_sync: bool  # the agent's last report (true if it never reported)
    error: str | None  # why the agent is not in sync
    unbound: int  # local vNICs its agent reported unbound


class MacRow(TypedDict):
    mac: str
    lnids: list[int | str]
    host: str | None
    port: str | None  # as registered
    external: bool
    state: str  # "bound", "unbound: <reason>", "host down", "pending" or "external"
    bound_port: str | None  # the kernel port the host's agent reported binding it to
    addresses: NotRequired[list[str]]  # the addresses and prefixes it holds (issue 13)
    shared: NotRequired[list[str]]  # of those, the ones registered shared (VIPs)
    router: NotRequired[bool]
    dhcp_server: NotRequired[bool]
    guarded: NotRequired[bool]  # has addresses (else unguarded: MAC-only)


class Trace(TypedDict):
    src: str
    dst: str
    allow: bool
    reason: str
    src_lnids: list[int | str]
    host: NotRequired[str]
    port: NotRequired[str]  # the port the destination's agent bound it to
    dst_mac: NotRequired[str]
    state: NotRequired[str]  # the destination's binding: "bound", "unbound" or "pending"
    dst_lnids: NotRequired[list[int | str]]
    src_addresses: NotRequired[list[str]]
    src_guarded: NotRequired[bool]


def _reason(exc: httpx.TransportError) -> str:
    """The innermost cause of a transport error, in a few words."""
    if isinstance(exc, httpx.TimeoutException):
        return f"no answer in time ({type(exc).__name__})"
    cause: BaseException = exc
    while (inner := cause.__cause__ or cause.__context__) is not None:
        cause = inner
    text = str(cause) or str(exc) or type(exc).__name__
    if isinstance(cause, ssl.SSLCertVerificationError):
        text += " (pass the manager's CA with --cacert / HOSTVLAN_CACERT)"
    return text


class Client:
    """The manager's admin API. `token` is the admin token.

    `base_url` may name several replicas of one manager (`URL1,URL2,...`, on one etcd
    cluster): a call goes to the one that last answered; one unreachable or answering 503
    (it lost its store, or etcd is electing a leader) makes the call go to the next, round
    after round with a jittered backoff, for up to FAILOVER_S. Reads then ask for the
    highest revision this client has seen (`min_revision`): read-your-writes across them.

    `cacert` is a CA bundle (PEM) to verify an HTTPS manager with; `verify=False`
    disables verification (tests only). Use as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        cacert: str | Path | None = None,
        verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        urls = [u.strip().rstrip("/") for u in base_url.split(",") if u.strip()] or [base_url]
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"manager URL must start with http:// or https://, got {url!r}")
        self.urls = urls
        self.revision = 0  # the highest revision an answer carried
        self._at = 0
        tls: ssl.SSLContext | bool
        if cacert is not None:
            try:
                tls = ssl.create_default_context(cafile=str(cacert))
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"cannot load the CA bundle {cacert}: {exc}") from None
        else:
            tls = verify
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._clients = [
            httpx.Client(base_url=u, headers=headers, verify=tls, timeout=timeout, transport=transport, trust_env=False)
            for u in urls
        ]

    @property
    def base_url(self) -> str:
        """The URL in use (the replica that last answered)."""
        return self.urls[self._at]

    @property
    def http(self) -> httpx.Client:
        return self._clients[self._at]

    def close(self) -> None:
        for c in self._clients:
            c.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----- transport -----------------------------------------------------------------------------
    def call(self, method: str, path: str, *, body: Any = None, params: dict[str, str] | None = None) -> Any:
        """One API call; the decoded JSON answer, or `ManagerError`."""
        resp = self._send(method, path, body, params)
        if resp.is_success:
            try:
                out = resp.json()
            except ValueError:
                raise ManagerError(resp.status_code, "answer", f"not JSON: {resp.text[:200]!r}") from None
            if isinstance(out, dict) and isinstance(out.get("revision"), int):
                self.revision = max(self.revision, out["revision"])
            return out
        try:
            err = resp.json()
        except ValueError:
            err = None
        if isinstance(err, dict) and isinstance(err.get("error"), str):
            raise ManagerError(resp.status_code, err["error"], str(err.get("detail", "")))
        raise ManagerError(resp.status_code, "http", f"{resp.status_code} {resp.reason_phrase}: {resp.text[:200]}")

    def _send(self, method: str, path: str, body: Any, params: dict[str, str] | None) -> httpx.Response:
        """The answer of the first replica that gives one other than 503 (see the class doc)."""
        n = len(self.urls)
        if n > 1 and method == "GET" and self.revision:
            params = {**(params or {}), "min_revision": str(self.revision)}
        deadline = time.monotonic() + (FAILOVER_S if n > 1 else 0.0)
        delay = 0.05
        while True:
            last: ManagerError | None = None
            resp = None
            for i in range(n):
                at = (self._at + i) % n
                try:
                    resp = self._clients[at].request(method, path, json=body, params=params)
                except httpx.TransportError as exc:
                    last = ManagerUnreachable(self.urls[at], _reason(exc))
                    last.__cause__ = exc
                    continue
                if resp.status_code == 503 and n > 1:
                    continue
                self._at = at
                return resp
            if time.monotonic() >= deadline:
                if resp is not None:
                    return resp
                assert last is not None
                raise last
            time.sleep(delay * (0.5 + random.random()))
            delay = min(1.0, delay * 2)

    # ----- hosts ---------------------------------------------------------------------------------
    def hosts(self) -> list[HostInfo]:
        """Every end host: feed connected, vNICs, revision due / applied, lag, in sync."""
        out: list[HostInfo] = self.call("GET", "/v1/hosts")
        return out

    def add_host(self, name: str) -> HostToken:
        """Register an end host; the answer carries its token (shown only once)."""
        out: HostToken = self.call("POST", "/v1/hosts", body={"name": name})
        return out

    def rotate_host_token(self, name: str) -> HostToken:
        """A new token for `name`; the old one stops working and its open feeds end."""
        out: HostToken = self.call("POST", f"/v1/hosts/{_seg(name)}/token")
        return out

    def remove_host(self, name: str) -> int:
        """Remove a host without vNICs; returns the revision."""
        out = self.call("DELETE", f"/v1/hosts/{_seg(name)}")
        return int(out["revision"])

    # ----- the paper's commands ------------------------------------------------------------------
    def reg(
        self,
        lnid: LnidArg,
        mac: str,
        host: str | None = None,
        port: str | None = None,
        *,
        external: bool = False,
        ips: list[str] | None = None,
        router: bool = False,
        dhcp_server: bool = False,
    ) -> Change:
        """Register `mac` in `lnid` on `host` (or as an external MAC); re-registering is a no-op.
        `ips` given: the MAC's addresses become exactly these (None: unchanged)."""
        body: dict[str, Any] = {"lnid": lnid, "mac": mac, "host": host, "port": port, "external": external}
        if ips is not None:
            body["ips"] = ips
        if router:
            body["router"] = True
        if dhcp_server:
            body["dhcp_server"] = True
        out: Change = self.call("POST", "/v1/reg", body=body)
        return out

    def addr_add(self, mac: str, address: str, *, shared: bool = False) -> Change:
        """Let registered `mac` hold `address` too (`shared`: a VIP of MACs sharing an LNID)."""
        out: Change = self.call("POST", "/v1/addr/add", body={"mac": mac, "address": address, "shared": shared})
        return out

    def addr_del(self, mac: str, address: str) -> Change:
        out: Change = self.call("POST", "/v1/addr/del", body={"mac": mac, "address": address})
        return out

    def unreg(self, lnid: LnidArg, mac: str) -> Change:
        out: Change = self.call("POST", "/v1/unreg", body={"lnid": lnid, "mac": mac})
        return out

    def rm(self, mac: str) -> Change:
        out: Change = self.call("POST", "/v1/rm", body={"mac": mac})
        return out

    def move(self, mac: str, host: str | None, port: str | None = None, *, external: bool = False) -> Change:
        out: Change = self.call("POST", "/v1/move", body={"mac": mac, "host": host, "port": port, "external": external})
        return out

    def batch(self, ops: list[dict[str, Any]]) -> Change:
        """Many commands ({"op": "reg"|"unreg"|"rm"|"move", …}) in one durable transaction."""
        out: Change = self.call("POST", "/v1/batch", body={"ops": ops})
        return out

    # ----- reading -------------------------------------------------------------------------------
    def macs(self, host: str | None = None, lnid: LnidArg | None = None, mac: str | None = None) -> list[MacRow]:
        """The LNID table, filtered by host, LNID and/or MAC."""
        params = {k: str(v) for k, v in (("host", host), ("lnid", lnid), ("mac", mac)) if v is not None}
        out: list[MacRow] = self.call("GET", "/v1/macs", params=params)
        return out

    def trace(self, src: str, dst: str) -> Trace:
        """The model's verdict for a frame from MAC `src` to `dst` (a MAC or HOST:PORT)."""
        out: Trace = self.call("GET", "/v1/trace", params={"src": src, "dst": dst})
        return out


def _seg(name: str) -> str:
    """A host name as one path segment (the manager validates it)."""
    return quote(name, safe="")


__all__ = [
    "Change",
    "Client",
    "HostInfo",
    "HostToken",
    "LnidArg",
    "MacRow",
    "ManagerError",
    "ManagerUnreachable",
    "Trace",
]
