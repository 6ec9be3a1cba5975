"""The manager's raw ASGI edge: the request-body limit and the agents' fast path.

Below the FastAPI app (`api.create_app`) and in front of it: `BodyLimit` refuses bodies over
the limit (413) or that stall (408) before any route parses them; `AgentFastPath` serves
the agents' feed and status calls without FastAPI's per-request cost; `stream_feed` streams
a feed for the fast path and the FastAPI route alike. Imports the service and the wire only.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hostvlan.manager.feed import Subscription, chunks
from hostvlan.manager.service import Service
from hostvlan.model.ids import HostId
from hostvlan.wire import Status, decode_status

MAX_BODY = 1 << 20  # 1 MiB for single commands (`hostvlan manager --max-body`)
MAX_BATCH_BODY = 256 << 20  # bulk registration: /v1/batch, /v1/hosts/batch
BATCH_PATHS = frozenset({"/v1/batch", "/v1/hosts/batch"})
BODY_IDLE_S = 30.0  # a client that sends no part of its body for this long is answered 408
HEARTBEAT_S = 15.0
SNAPSHOTS_IN_FLIGHT = 512


_REASON: dict[str, Any] = {"type": ["string", "null"], "description": "why the vNIC is unbound"}
STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["revision"],
    "properties": {
        "revision": {"type": "integer", "minimum": 0},
        "in_sync": {"type": "boolean", "default": True},
        "error": {"type": ["string", "null"], "default": None},
        "bindings": {
            "type": ["object", "null"],
            "description": "every vNIC of the host's view: MAC -> binding; absent or null = unchanged",
            "additionalProperties": {
                "oneOf": [
                    {
                        "type": "object",
                        "required": ["state", "port"],
                        "properties": {
                            "state": {"const": "bound"},
                            "port": {"type": "string", "minLength": 1},
                            "reason": _REASON,
                        },
                    },
                    {
                        "type": "object",
                        "required": ["state"],
                        "properties": {
                            "state": {"const": "unbound"},
                            "port": {"type": ["string", "null"]},
                            "reason": _REASON,
                        },
                    },
                ]
            },
        },
    },
}
"""The status body (`hostvlan.wire.decode_status` is the parser; this documents it)."""


class BodyLimit:
    """Refuse bodies over the limit with 413, also when no Content-Length is given; a body
    that stalls for BODY_IDLE_S is answered 408.

    The body is read here, before the app sees it: an error raised from inside the
    app's `receive` would be turned into a generic 400 by the body parser.
    """

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY, max_batch_body: int = MAX_BATCH_BODY) -> None:
        self.app = app
        self.max_body = max_body
        self.max_batch_body = max(max_batch_body, max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_batch_body if scope["path"] in BATCH_PATHS else self.max_body
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(send, 413, "body", f"request body larger than {limit} bytes")
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            try:
                msg = await asyncio.wait_for(receive(), BODY_IDLE_S)
            except TimeoutError:
                await _refuse(send, 408, "body", f"no part of the request body came in {BODY_IDLE_S:g} s")
                return
            if msg["type"] != "http.request":  # the client went away before sending its body
                return
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _refuse(send, 413, "body", f"request body larger than {limit} bytes")
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, receive), send)


async def _refuse(send: Send, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def stream_feed(sub: Subscription, receive: Receive, send: Send, snapshots: asyncio.Semaphore) -> None:
    """Stream one host's feed as an ASGI response until the feed ends or the agent goes.

    The one streaming function, for the fast path and the FastAPI route alike. The first
    line (the snapshot) is sent under `snapshots`, and until the transport has handed it
    to the socket: after a manager restart every agent asks for its snapshot at once, and
    8,192 views of 8,192 entries buffered together are ~2 GB.
    """

    async def stream() -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/x-ndjson")]}
        )
        async with snapshots:
            await send({"type": "http.response.body", "body": sub.snapshot(), "more_body": True})
            # an empty chunk waits until the transport has handed the snapshot to the socket
            await send({"type": "http.response.body", "body": b"", "more_body": True})
        while (parts := await sub.next_parts(HEARTBEAT_S)) is not None:
            for chunk in chunks(parts):  # one piece joined at a time; each send waits for the transport
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # the feed was closed (the host's token rotated, or the host removed)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    tasks = {asyncio.ensure_future(stream()), asyncio.ensure_future(disconnected())}
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            t.result()
    finally:
        for t in tasks:
            t.cancel()
        sub.close()


class FeedResponse(Response):
    """The FastAPI route's answer: `stream_feed` of a subscription already opened."""

    media_type = "application/x-ndjson"  # also what the document states for the route

    def __init__(self, sub: Subscription, snapshots: asyncio.Semaphore) -> None:
        super().__init__(media_type="application/x-ndjson")
        self.sub, self.snapshots = sub, snapshots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await stream_feed(self.sub, receive, send, self.snapshots)


class AgentFastPath:
    """The agents' two hot calls as plain ASGI, in front of the FastAPI app.

    At 8,192 hosts every command is followed by a feed line and a status report per
    affected host, and FastAPI's per-request machinery (dependency solving, validation,
    middleware wrappers around every streamed line) cost more than the command itself.
    This serves only the well-formed case, with the same answers as the FastAPI routes:
    `GET /v1/hosts/{H}/feed` and `POST /v1/hosts/{H}/status` with H's own host token,
    H registered, and for status a body `wire.decode_status` accepts. Anything else
    (other tokens, errors, odd bodies) goes to the FastAPI routes, which define the
    behaviour; both call the same service methods and `stream_feed`.
    """

    def __init__(self, app: ASGIApp, service: Service, snapshots: asyncio.Semaphore) -> None:
        self.app = app
        self.service = service
        self._snapshots = snapshots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/v1/hosts/") and path.count("/") == 4:
                name, _, call = path[len("/v1/hosts/") :].partition("/")
                method = scope["method"]
                if call == "feed" and method == "GET" and (host := self._host(scope, name)) is not None:
                    since = _since(scope)
                    if self.service.store.available and (since is None or since <= self.service.revision):
                        await stream_feed(self.service.open_feed(host, since), receive, send, self._snapshots)
                        return
                if call == "status" and method == "POST" and (host := self._host(scope, name)) is not None:
                    await self._status(host, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def _host(self, scope: Scope, name: str) -> HostId | None:
        """H when the request carries H's own token and H is registered."""
        for key, value in scope["headers"]:
            if key == b"authorization":
                auth = value.decode("latin-1")
                if auth[:7].lower() != "bearer ":
                    return None
                return self.service.host_calling(auth[7:].strip(), name)
        return None

    async def _status(self, host: HostId, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            chunk = msg.get("body", b"")
            chunks.append(chunk)
            seen += len(chunk)
            if seen > MAX_BODY or not msg.get("more_body", False):
                break
        status = _status_body(b"".join(chunks)) if seen <= MAX_BODY else None
        if status is None:  # not the plain case: the FastAPI route answers (and explains)
            await self.app(scope, _replay(chunks, receive), send)
            return
        self.service.record_status(host, status)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"11"), (b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok":true}'})


def _since(scope: Scope) -> int | None:
    """The feed's `?since=N` (the revision the agent enforces), if well-formed."""
    for part in scope.get("query_string", b"").split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"since" and value.isdigit():
            return int(value)
    return None


def _status_body(body: bytes) -> Status | None:
    """The status report of a well-formed body; else None."""
    try:
        return decode_status(json.loads(body))
    except ValueError:  # malformed JSON, or WireError
        return None


def json_number(text: str) -> int | float:
    """A JSON number as the API reads it: an integral value (up to 2**53) as an int."""
    value = float(text)
    return int(value) if value.is_integer() and abs(value) <= 2**53 else value


def _replay(chunks: list[bytes], receive: Receive) -> Receive:
    """A `receive` that hands over the body already read, then the client's next messages
    (after the body: http.disconnect, which streaming responses wait for)."""
    first: Message | None = {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def replay() -> Message:
        nonlocal first
        if first is not None:
            msg, first = first, None
            return msg
        return await receive()

    return replay
