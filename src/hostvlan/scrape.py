"""The Prometheus scrape listener of the agent and the manager: `GET /metrics`, unauthenticated.

Served by an asyncio server on the daemon's own event loop, so collecting reads the daemon's
state on the thread that changes it (no lock, no torn read), and kept apart from the API: its
own listener, no token, nothing but the text exposition format (`prometheus_client`).
May import the standard library and prometheus_client only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def parse_listen(spec: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port = spec.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-listen wants HOST:PORT, got {spec!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    registry: CollectorRegistry, host: str | None = None, port: int = 0, sock: socket.socket | None = None
) -> asyncio.Server:
    """Start the listener on `host`:`port` or on the bound socket `sock`;
    `server.sockets[0].getsockname()` tells the address bound."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            path = line[1].split("?", 1)[0] if len(line) >= 2 else ""
            if len(line) >= 2 and line[0] in ("GET", "HEAD") and path in ("/metrics", "/"):
                body, status, ctype = generate_latest(registry), "200 OK", CONTENT_TYPE_LATEST
            else:
                body, status, ctype = b"only GET /metrics here\n", "404 Not Found", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (body if line[0] != "HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    if sock is not None:
        return await asyncio.start_server(handle, sock=sock)
    return await asyncio.start_server(handle, host, port)


__all__ = ["parse_listen", "serve"]
