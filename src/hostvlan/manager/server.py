"""Run the manager: open the store, bind the listeners, serve the API with uvicorn.

A listener may be bound inside another network namespace (`NETNS/HOST:PORT`): the
socket is created there and stays there, so one manager process can serve the CLI on
the root namespace's loopback and the agents on a management network made of
namespaces, without any route between the two.

Logs go to stderr, as text or as JSON lines (`--log-format json`: one object per record
with `time`, `level`, `logger`, `message`, and `exc` for a traceback); the manager's own
start notices (listening on …, new admin token) are INFO records of `hostvlan.manager`,
shown unless `--log-level` is `error` or `critical`.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
import socket
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hostvlan import scrape
from hostvlan.manager.api import create_asgi
from hostvlan.manager.audit import Audit
from hostvlan.manager.edge import MAX_BATCH_BODY, MAX_BODY
from hostvlan.manager.service import Service
from hostvlan.manager.store.base import Store as StoreBase
from hostvlan.manager.store.base import StoreUnavailable
from hostvlan.manager.store.sqlite import Store, backup

log = logging.getLogger("hostvlan.manager")

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
"""`--log-level` choices (uvicorn's; `trace` is below debug)."""
LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        t = record.created
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str, fmt: str) -> None:
    """Every logger (ours and uvicorn's) to stderr, in `fmt`, at `level`."""
    numeric = 5 if level == "trace" else logging.getLevelNamesMapping()[level.upper()]
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(numeric)
    log.setLevel(min(numeric, logging.INFO) if numeric <= logging.WARNING else numeric)


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
    """A socket bound to the address (errors show at once); `run` listens once the table is loaded.

    Raises ValueError naming the address (e.g. "cannot listen on 127.0.0.1:7080: address
    already in use, another process holds it").
    """
    try:
        return _bind(listen)
    except OSError as exc:
        where = f"{listen.host}:{listen.port}" + (f" in netns {listen.netns}" if listen.netns else "")
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another process listens there: stop it or pick another --listen)"
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = " (no interface has this address here)"
        raise ValueError(f"cannot listen on {where}: {exc.strerror or exc}{hint}") from None


def _bind(listen: Listen) -> socket.socket:
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
    log_format: str = "text",
    audit_log: Path | None = None,
    max_body: int = MAX_BODY,
    max_batch_body: int = MAX_BATCH_BODY,
    metrics_listen: list[Listen] | None = None,
    require_addresses: bool = False,
    store: str = "sqlite",
    etcd_tls: tuple[str | None, str | None, str | None] = (None, None, None),
) -> None:
    """Serve until stopped. Raises ValueError (address, store) with a message for the operator.
    `metrics_listen`: the Prometheus scrape listener (manager/metrics.py)."""
    if max_body < 1:
        raise ValueError(f"the body limit must be at least 1 byte, got {max_body}")
    configure_logging(log_level, log_format)
    socks = [bind(x) for x in listens]
    msocks = [bind(x) for x in metrics_listen or []]
    db.parent.mkdir(parents=True, exist_ok=True)
    the_store = open_store(store, db, etcd_tls)
    # The table is long-lived and acyclic: no collection while it loads (each full pass
    # would walk millions of objects), then keep it out of the collector's passes and
    # collect young objects less often.
    audit_path = audit_log or db.with_name(db.name + ".audit.jsonl")
    gc.disable()
    try:
        service = Service(the_store, audit=Audit(audit_path), require_addresses=require_addresses)
    finally:
        gc.enable()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    token_file = admin_token_file or db.with_name(db.name + ".admin-token")
    if service.ensure_admin_token(token_file):
        log.info("new admin token written to %s (mode 0600)", token_file)
        service.audit.record("admin", "admin token", {"file": str(token_file)}, "ok", None, service.revision)
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
        log.info("listening on %s%s", url, f" in netns {x.netns}" if x.netns else "")
    metrics_urls = []
    for s, x in zip(msocks, metrics_listen or [], strict=True):
        s.listen(BACKLOG)
        host, port = s.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
        metrics_urls.append({"url": url, "netns": x.netns})
        log.info("metrics on %s%s", url, f" in netns {x.netns}" if x.netns else "")
    config = uvicorn.Config(
        create_asgi(service, max_body=max_body, max_batch_body=max_batch_body),
        http=ManagerProtocol,
        timeout_keep_alive=KEEPALIVE_S,
        log_level=log_level,
        ssl_certfile=str(tls_cert) if tls_cert else None,
        ssl_keyfile=str(tls_key) if tls_key else None,
        timeout_graceful_shutdown=1,
        access_log=False,
        log_config=None,  # configure_logging's handler and format for uvicorn's loggers too
    )
    server = uvicorn.Server(config)
    if ready_file:
        tmp = ready_file.with_suffix(".tmp")
        ready = {"listen": urls, "revision": service.revision, "token_file": str(token_file)}
        if metrics_urls:
            ready["metrics"] = metrics_urls
        tmp.write_text(json.dumps(ready))
        tmp.replace(ready_file)
    try:
        _serve(_with_metrics(_main(server.serve(sockets=socks), the_store), service, msocks))
    finally:
        the_store.close()
        service.audit.close()


def open_store(url: str, db: Path, tls: tuple[str | None, str | None, str | None]) -> StoreBase:
    """`--store`: the SQLite file `db`, or an etcd cluster (ValueError naming what is wrong)."""
    if url == "sqlite":
        return Store(db)
    from hostvlan.manager.store.etcd import EtcdConfig, EtcdStore

    cacert, cert, key = (Path(x) if x else None for x in tls)
    cfg = EtcdConfig.parse(url, cacert, cert, key)
    try:
        return EtcdStore(cfg)
    except StoreUnavailable as exc:
        raise ValueError(f"cannot read the table from etcd ({', '.join(cfg.endpoints)}): {exc}") from None


async def _main(serve: Coroutine[Any, Any, None], store: StoreBase) -> None:
    """Serve; a replicated store's watch and probe run beside (store/etcd.py)."""
    follow = getattr(store, "run", None)
    task = asyncio.ensure_future(follow()) if follow is not None else None
    try:
        await serve
    finally:
        if task is not None:
            task.cancel()


def backup_db(db: Path, dest: Path) -> None:
    """`hostvlan manager --backup FILE`: a consistent copy of the (possibly live) database."""
    backup(db, dest)
    log.info("backed up %s to %s", db, dest)


async def _with_metrics(main: Coroutine[Any, Any, None], service: Service, msocks: list[socket.socket]) -> None:
    scrapers = [await scrape.serve(service.metrics.registry, sock=s) for s in msocks]
    try:
        await main
    finally:
        for scraper in scrapers:
            scraper.close()


def _serve(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on uvloop when installed (uvicorn[standard] brings it), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
        return
    uvloop.run(main)
