"""The agent's side of the manager connection: its token, its HTTP clients, its status reports.

- `Connection`: the manager's URL, TLS and this host's token; the token file is read again
  before every retry (`reread_token`), so a rotated token needs no restart.
- `StatusReporter`: `POST /v1/hosts/{H}/status` until the manager has taken the latest
  report, retried with backoff; `bindings` go with the first report after each snapshot and
  whenever they change (absent: unchanged), `in_sync`/`error` only while out of sync
  (absent: in sync), so the common report stays `{"revision": R}`.
May import the standard library, httpx and `hostvlan.model`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hostvlan import wire
from hostvlan.model.hostview import VnicBinding
from hostvlan.model.ids import HostId, Mac

log = logging.getLogger("hostvlan.agent")


class Backoff:
    """Jittered exponential backoff: first, 2·first, 4·first … capped, each ×[0.5, 1.5)."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next * (0.5 + random.random())
        self._next = min(self.cap, self._next * 2)
        return min(self.cap, delay)

    def reset(self) -> None:
        self._next = self.first


@dataclass(frozen=True)
class Report:
    """What the agent has to say: the revision its data path enforces, whether its last kernel
    work succeeded, and its vNICs' bindings (None: not known since the last snapshot)."""

    revision: int
    in_sync: bool = True
    error: str | None = None
    bindings: Mapping[Mac, VnicBinding] | None = None


def status_body(report: Report, bindings: Mapping[Mac, wire.Binding] | None) -> dict[str, Any]:
    """The status report's JSON body (`wire.encode_status`; see the module doc for what is left out when)."""
    return wire.encode_status(wire.Status(report.revision, report.in_sync, report.error, bindings))


def wire_bindings(bindings: Mapping[Mac, VnicBinding]) -> dict[Mac, wire.Binding]:
    return {m: wire.Binding(b.port, "bound" if b.bound else "unbound", b.reason) for m, b in sorted(bindings.items())}


class Connection:
    """The manager's URL, TLS settings and this host's (re-readable) token.

    `manager` may list several replicas (`URL1,URL2,...`): `manager` is the one in use,
    `fail_over()` moves to the next (the feed and the status reports follow it).
    """

    def __init__(
        self,
        manager: str,
        host: HostId,
        token: str,
        *,
        token_file: Path | None = None,
        cacert: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.managers = [u.strip() for u in manager.split(",") if u.strip()] or [manager]
        self._at = 0
        self.host = host
        self._token = token
        self._token_file = token_file
        self._cacert = cacert
        self._transport = transport
        self._ssl: ssl.SSLContext | None = None  # built once: loading a CA store costs ~25 ms of CPU

    @property
    def manager(self) -> str:
        return self.managers[self._at]

    def fail_over(self) -> None:
        """Use the next replica (no-op with one URL)."""
        self._at = (self._at + 1) % len(self.managers)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def reread_token(self) -> None:
        """Read `--token-file` again (a rotated token works without a restart); keep the last on error."""
        path = self._token_file
        if path is None:
            return
        try:
            text = path.read_text().strip()
        except OSError as exc:
            log.warning("cannot read the token file %s (%s); keeping the last token", path, exc)
            return
        if text:
            self._token = text
        else:
            log.warning("the token file %s is empty; keeping the last token", path)

    def client(self, timeout: httpx.Timeout | None = None) -> httpx.AsyncClient:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self._cacert) if self._cacert else httpx.create_ssl_context()
        return httpx.AsyncClient(
            base_url=self.manager,
            verify=self._ssl,
            timeout=timeout or httpx.Timeout(10.0),
            transport=self._transport,
        )


class StatusReporter:
    """Sends the agent's reports (`report()` after every change; `read` gives the current one)."""

    def __init__(self, conn: Connection, read: Callable[[], Report], backoff_max: float) -> None:
        self._conn = conn
        self._read = read
        self._backoff_max = backoff_max
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None  # one, kept alive: reports are frequent
        self._client_url = ""  # the replica `_client` speaks to
        self._due = False
        self._kick = asyncio.Event()
        self._sent: dict[str, Any] | None = None  # the last report the manager took (without bindings)
        self._bindings_sent: dict[Mac, wire.Binding] | None = None

    def new_snapshot(self) -> None:
        """The next report carries the bindings, changed or not."""
        self._bindings_sent = None

    def reconnected(self) -> None:
        """A new feed (maybe on another replica) has no report yet: the next one is whole."""
        self._sent = None
        self._bindings_sent = None

    def report(self) -> None:
        self._due = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._send())
        else:
            self._kick.set()  # a report waiting for its retry goes now, with the news

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    async def _send(self) -> None:
        """Send reports until the manager has taken the current one; retry with backoff on failure."""
        backoff = Backoff(0.2, self._backoff_max)
        failures = 0
        while True:
            now = self._read()
            core = status_body(now, None)
            bindings = wire_bindings(now.bindings) if now.bindings is not None else None
            with_bindings = bindings is not None and bindings != self._bindings_sent
            if not self._due and core == self._sent and not with_bindings:
                return
            self._due = False
            problem = await self._post(status_body(now, bindings if with_bindings else None))
            if problem is None:
                self._sent = core
                if with_bindings:
                    self._bindings_sent = bindings
                failures = 0
                backoff.reset()
                continue
            failures += 1
            self._due = True
            log.log(logging.WARNING if failures == 1 else logging.DEBUG, "status report failed: %s", problem)
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), backoff.next())
            self._conn.reread_token()

    async def _post(self, body: dict[str, Any]) -> str | None:
        """POST one report; None when taken, else what went wrong."""
        host = self._conn.host
        try:
            if self._client is not None and self._client_url != self._conn.manager:
                await self._client.aclose()  # the feed moved to another replica: so do the reports
                self._client = None
            if self._client is None:
                self._client = self._conn.client()
                self._client_url = self._conn.manager
            resp = await self._client.post(f"/v1/hosts/{host}/status", json=body, headers=self._conn.auth())
        except httpx.HTTPError as exc:
            return f"manager unreachable ({exc})"
        if resp.status_code in (401, 403):
            log.error("manager rejected the token of host %s (%d); re-reading the token", host, resp.status_code)
            return f"manager rejected the token of host {host}"
        if resp.status_code >= 400:
            return f"manager refused the report ({resp.status_code}): {resp.text}"
        return None


__all__ = ["Backoff", "Connection", "Report", "StatusReporter", "status_body", "wire_bindings"]
