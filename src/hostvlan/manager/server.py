"""Run the manager: open the store, bind the listeners, serve the API with uvicorn.

A listener may be bound inside another network namespace (`NETNS/HOST:PORT`): the
socket is created there and stays there, so one manager process can serve the CLI on
the root namespace's loopback and the agents on a management network made of
namespaces, without any route between the two.
"""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hostvlan.manager.api import MAX_BATCH_BODY, MAX_BODY, create_asgi
from hostvlan.manager.service import Service
from hostvlan.manager.store.sqlite import Store


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    netns: str | None = None

    @classmethod
    def parse(cls, text: str) -> Listen:
        netns = None
        if "/" in text:
            netns, text = text.split("/", 1)
        host, _, port = text.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"listen address must be HOST:PORT or NETNS/HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port), netns)


BACKLOG = 4096
MAX_HEAD_BYTES = 64 << 10  # request line and headers (about: the read that completes them is not counted)
HEAD_TIMEOUT_S = 10.0  # from the connection (or a request's first byte) to the end of its headers
KEEPALIVE_S = 5  # an idle connection between requests is closed after this


class ManagerProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with the limits it lacks: a client must complete its
    request line and headers within HEAD_TIMEOUT_S of connecting (or of its request's
    first byte) and in at most MAX_HEAD_BYTES, else it is answered 408 / 431 and
    disconnected. So idle or slow clients cannot hold the manager's connections or
    memory; an agent's feed is unaffected (its headers come at once, then it streams).
    Protocol-level refusals have the API's error shape too."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._head_bytes = 0
        self._in_head = True
        self._head_timer: asyncio.TimerHandle | None = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, "headers", f"request line and headers larger than {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        self._refuse(400, "http", msg)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "headers", f"no complete request headers in {HEAD_TIMEOUT_S:g} s")

    def _refuse(self, status: int, error: str, detail: str) -> None:
        self._stop_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # an answer is under way: no second one on this connection
            return
        body = json.dumps({"error": error, "detail": detail}).encode()
        reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def bind(listen: Listen) -> socket.socket:
    """A socket bound to the address (errors show at once); `run` listens once the table is loaded."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET

    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # inherited by accepted connections: without it every answer (headers, then body)
        # and every feed line waits on the peer's delayed ACK, ~40 ms per call
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.bind((listen.host, listen.port))
        s.set_inheritable(True)
        return s

    if listen.netns is None:
        return make()
    from pyroute2 import netns

    netns.pushns()
    try:
        netns.setns(listen.netns, flags=0)  # a missing namespace is an error, never created
        return make()
    except FileNotFoundError:
        raise ValueError(f"network namespace {listen.netns!r} does not exist") from None
    finally:
        netns.popns()


def run(
    db: Path,
    listens: list[Listen],
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    admin_token_file: Path | None = None,
    ready_file: Path | None = None,
    log_level: str = "warning",
    max_body: int = MAX_BODY,
    max_batch_body: int = MAX_BATCH_BODY,
) -> None:
    if max_body < 1:
        raise ValueError(f"the body limit must be at least 1 byte, got {max_body}")
    try:
        socks = [bind(x) for x in listens]
    except OSError as exc:
        raise ValueError(f"cannot listen: {exc.strerror or exc}") from None
    db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db)
    # The table is long-lived and acyclic: no collection while it loads (each full pass
    # would walk millions of objects), then keep it out of the collector's passes and
    # collect young objects less often.
    gc.disable()
    try:
        service = Service(store)
    finally:
        gc.enable()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    token_file = admin_token_file or db.with_name(db.name + ".admin-token")
    if service.ensure_admin_token(token_file):
        print(f"hostvlan manager: new admin token written to {token_file} (mode 0600)", file=sys.stderr)
    # Listen only now: while the table loads (seconds for a million MACs), reconnecting
    # agents are refused and retry with their backoff. A listening socket would instead
    # queue them past its backlog and drop the rest's SYNs, which TCP retries after 1, 3,
    # 7, 15 … s: a long tail of hosts without a view.
    for s in socks:
        s.listen(BACKLOG)
    scheme = "https" if tls_cert else "http"
    urls = []
    for s, x in zip(socks, listens, strict=True):
        host, port = s.getsockname()[:2]
        url = f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"
        urls.append({"url": url, "netns": x.netns})
        print(f"hostvlan manager: listening on {url}" + (f" in netns {x.netns}" if x.netns else ""), file=sys.stderr)
    config = uvicorn.Config(
        create_asgi(service, max_body=max_body, max_batch_body=max_batch_body),
        http=ManagerProtocol,
        timeout_keep_alive=KEEPALIVE_S,
        log_level=log_level,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    server = uvicorn.Server(config)
    if ready_file:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"listen": urls, "revision": service.revision, "token_file": str(token_file)}))
        tmp.replace(ready_file)
    try:
        _serve(server.serve(sockets=socks))
    finally:
        store.close()


def _serve(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop when installed (uvicorn[standard] brings it), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
        return
    uvloop.run(main)
