"""The manager's HTTP edge (FastAPI): authentication, JSON in/out, error mapping.

Thin by design: every decision is in `service.py` / the model, and the edge asks the
service for what it needs (`host_calling`/`knows_host`, `open_feed`, `record_status`,
the commands and the readings), never its feed or calc graph. Feeds are streamed by
one function, `stream_feed`, for the agents' fast path and the FastAPI route alike.
The OpenAPI document is served at /openapi.json (interactive docs at /docs).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hostvlan.manager.feed import Subscription
from hostvlan.manager.service import InputError, Service
from hostvlan.model.datacenter import ModelError
from hostvlan.model.ids import HostId
from hostvlan.wire import Status, decode_status

MAX_BODY = 1 << 20  # 1 MiB for single commands
MAX_BATCH_BODY = 256 << 20  # bulk registration
HEARTBEAT_S = 15.0
SNAPSHOTS_IN_FLIGHT = 512

# Any on purpose: `model.ids.parse_lnid` is the one parser. A typed field would let
# pydantic coerce first (`true` -> 1, `"1"` -> 1) and name the field `lnid.int`.
LnidIn = Annotated[Any, Field(description='an integer 1..2^63-1, or "global"')]


class HostIn(BaseModel):
    name: str


class RegIn(BaseModel):
    lnid: LnidIn
    mac: str
    host: str | None = None
    port: str | None = None
    external: bool = False


class UnregIn(BaseModel):
    lnid: LnidIn
    mac: str


class RmIn(BaseModel):
    mac: str


class MoveIn(BaseModel):
    mac: str
    host: str | None = None
    port: str | None = None
    external: bool = False


class HostsIn(BaseModel):
    names: list[Any] = Field(description="host names to register, all or none")


class BatchIn(BaseModel):
    ops: list[dict[str, Any]] = Field(description="commands: {op: reg|unreg|rm|move, …fields of that command}")


STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["revision"],
    "properties": {
        "revision": {"type": "integer", "minimum": 0},
        "in_sync": {"type": "boolean", "default": True},
        "error": {"type": ["string", "null"], "default": None},
        "bindings": {
            "type": "object",
            "description": "every vNIC of the host's view: MAC -> binding; absent = unchanged",
            "additionalProperties": {
                "type": "object",
                "required": ["state"],
                "properties": {
                    "port": {"type": ["string", "null"]},
                    "state": {"enum": ["bound", "unbound"]},
                    "reason": {"type": ["string", "null"]},
                },
            },
        },
    },
}
"""The status body (`hostvlan.wire.decode_status` is the parser; this documents it)."""


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        self.status, self.error, self.detail = status, error, detail


class BodyLimit:
    """Refuse bodies over the limit with 413, also when no Content-Length is given.

    The body is read here, before the app sees it: an error raised from inside the
    app's `receive` would be turned into a generic 400 by the body parser.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_BATCH_BODY if scope["path"].endswith("/batch") else MAX_BODY
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(send, limit)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away before sending its body
                return
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _too_large(send, limit)
                return
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        await self.app(scope, _replay(chunks, receive), send)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"error": "body", "detail": f"request body larger than {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
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
        while (line := await sub.next(HEARTBEAT_S)) is not None:
            await send({"type": "http.response.body", "body": line, "more_body": True})
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
                    await stream_feed(self.service.open_feed(host), receive, send, self._snapshots)
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


def _status_body(body: bytes) -> Status | None:
    """The status report of a well-formed body; else None."""
    try:
        return decode_status(json.loads(body))
    except ValueError:  # malformed JSON, or WireError
        return None


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


def create_asgi(service: Service) -> ASGIApp:
    """The manager's ASGI app: the FastAPI app behind the agents' fast path."""
    snapshots = asyncio.Semaphore(SNAPSHOTS_IN_FLIGHT)
    return AgentFastPath(create_app(service, snapshots), service, snapshots)


def create_app(service: Service, snapshots: asyncio.Semaphore | None = None) -> FastAPI:
    app = FastAPI(
        title="hostvlan manager",
        version="1",
        description="The HostVLAN management server: the authoritative LNID table and the per-host feeds.",
    )
    lock = asyncio.Lock()
    snapshot_gate = snapshots or asyncio.Semaphore(SNAPSHOTS_IN_FLIGHT)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return JSONResponse({"error": exc.field, "detail": exc.detail}, status_code=400)

    @app.exception_handler(ModelError)
    async def _model_error(request: Request, exc: ModelError) -> JSONResponse:
        return JSONResponse(
            {"error": exc.kind, "detail": str(exc)}, status_code=404 if exc.kind == "not_found" else 409
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        # loc is e.g. ("body", "lnid") or ("query", "dst"): name the field itself
        names = [str(x) for x in first.get("loc", ()) if x not in ("body", "query", "path")]
        loc = names[0] if names else "body"
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            loc, msg = "body", "malformed JSON"
        elif first.get("type") == "model_attributes_type":
            loc, msg = "body", "the body must be a JSON object"
        return JSONResponse({"error": loc, "detail": msg}, status_code=400)

    def _token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise ApiError(401, "auth", "missing token: send 'Authorization: Bearer <token>'")
        return auth[7:].strip()

    # async: a plain `def` dependency would run in a worker thread, a thread hop per call
    async def admin(request: Request) -> None:
        if not service.is_admin(_token(request)):
            host = service.host_of_token(_token(request))
            if request.method != "GET":  # a refused change: in the audit log, by whom
                service.refused(f"host:{host}" if host else "unknown token", f"{request.method} {request.url.path}")
            if host is not None:
                raise ApiError(403, "auth", "a host token cannot make management calls")
            raise ApiError(401, "auth", "invalid token")

    async def host_auth(name: str, request: Request) -> HostId:
        token = _token(request)
        host = service.host_of_token(token)
        if host is None:
            if service.is_admin(token):
                return HostId(name)
            raise ApiError(401, "auth", "invalid token")
        if host != name:
            raise ApiError(403, "auth", f"this token belongs to host {host}, not {name}")
        return host

    Admin = Depends(admin)

    # ----- hosts -----------------------------------------------------------------------------
    @app.post("/v1/hosts", status_code=201, dependencies=[Admin], summary="Register an end host; returns its token")
    async def add_host(body: HostIn) -> dict[str, Any]:
        async with lock:
            token = service.add_host(body.name)
            return {"name": body.name, "token": token, "revision": service.revision}

    @app.post(
        "/v1/hosts/batch",
        status_code=201,
        dependencies=[Admin],
        summary="Register many end hosts in one durable transaction; returns their tokens",
    )
    async def add_hosts(body: HostsIn) -> dict[str, Any]:
        async with lock:
            got = service.add_hosts(body.names)
            return {"hosts": [{"name": h, "token": t} for h, t in got], "revision": service.revision}

    @app.post("/v1/hosts/{name}/token", dependencies=[Admin], summary="Rotate a host's token")
    async def rotate(name: str) -> dict[str, Any]:
        async with lock:
            token = service.rotate_host_token(name)
            return {"name": name, "token": token, "revision": service.revision}

    @app.delete("/v1/hosts/{name}", dependencies=[Admin], summary="Remove a host that has no vNIC")
    async def remove_host(name: str) -> dict[str, Any]:
        async with lock:
            service.remove_host(name)
            return {"removed": name, "revision": service.revision}

    @app.get("/v1/hosts", dependencies=[Admin], summary="Hosts: connected, revision applied, lag")
    async def hosts() -> list[dict[str, Any]]:
        return service.hosts()

    # ----- commands ------------------------------------------------------------------------------
    @app.post("/v1/reg", dependencies=[Admin], summary="Register a MAC in an LNID (the paper's `reg`)")
    async def reg(body: RegIn) -> dict[str, Any]:
        async with lock:
            return service.reg(body.lnid, body.mac, body.host, body.port, body.external).json()

    @app.post("/v1/unreg", dependencies=[Admin], summary="Remove a MAC from one LNID")
    async def unreg(body: UnregIn) -> dict[str, Any]:
        async with lock:
            return service.unreg(body.lnid, body.mac).json()

    @app.post("/v1/rm", dependencies=[Admin], summary="Remove a MAC from every LNID")
    async def rm(body: RmIn) -> dict[str, Any]:
        async with lock:
            return service.rm(body.mac).json()

    @app.post("/v1/move", dependencies=[Admin], summary="Migrate a MAC to another host")
    async def move(body: MoveIn) -> dict[str, Any]:
        async with lock:
            return service.move(body.mac, body.host, body.port, body.external).json()

    @app.post("/v1/batch", dependencies=[Admin], summary="Many commands, one durable transaction")
    async def batch(body: BatchIn) -> dict[str, Any]:
        async with lock:
            return service.batch(body.ops).json()

    # ----- reading ---------------------------------------------------------------------------------
    @app.get("/v1/macs", dependencies=[Admin], summary="The LNID table, filtered")
    async def macs(host: str | None = None, lnid: str | None = None, mac: str | None = None) -> list[dict[str, Any]]:
        return service.show(host, lnid, mac)

    @app.get("/v1/trace", dependencies=[Admin], summary="Why can (not) a frame from SRC reach DST?")
    async def trace(src: str, dst: str) -> dict[str, Any]:
        return service.trace(src, dst)

    @app.get("/v1/revision", dependencies=[Admin])
    async def revision() -> dict[str, Any]:
        return {"revision": service.revision}

    # ----- agents ------------------------------------------------------------------------------------
    @app.get("/v1/hosts/{name}/feed", summary="The host's view: a snapshot, then deltas (JSON lines)")
    async def feed(
        name: str,
        host: HostId = Depends(host_auth),  # noqa: B008
    ) -> Response:
        if not service.knows_host(host):
            raise ApiError(404, "not_found", f"unknown host {host!r}")
        return FeedResponse(service.open_feed(host), snapshot_gate)

    @app.post(
        "/v1/hosts/{name}/status",
        summary="The agent reports the revision its data path enforces, whether it is in sync, its port bindings",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": STATUS_SCHEMA}}}},
    )
    async def status(
        request: Request,
        host: HostId = Depends(host_auth),  # noqa: B008
    ) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InputError("body", "malformed JSON") from None
        who = "admin" if service.is_admin(_token(request)) else f"host:{host}"
        service.record_status(host, body, who=who)
        return {"ok": True}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "revision": service.revision}

    app.add_middleware(BodyLimit)
    return app


__all__ = ["create_app", "create_asgi"]
