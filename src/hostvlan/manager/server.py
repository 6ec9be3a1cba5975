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

from hostvlan.manager.api import create_asgi
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
) -> None:
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
        create_asgi(service),
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
