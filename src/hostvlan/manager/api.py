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

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hostvlan.manager import observe
from hostvlan.manager.audit import batch_args
from hostvlan.manager.contract import ApiError, errors, install_docs, install_error_handlers, install_openapi
from hostvlan.manager.feed import Subscription, chunks
from hostvlan.manager.schemas import (
    AddrAddIn,
    AddrDelIn,
    BatchIn,
    Change,
    Health,
    HostIn,
    HostRow,
    HostsIn,
    HostStr,
    HostToken,
    HostTokens,
    LnidStr,
    MacRow,
    MacStr,
    MoveIn,
    Ok,
    RegIn,
    Removed,
    RevisionOut,
    RmIn,
    TraceDst,
    TraceOut,
    UnregIn,
)
from hostvlan.manager.service import InputError, Service, StoreUnavailable
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


# the audit log's name of each change a route makes (as the service names them)
_COMMANDS = {
    ("POST", "/v1/hosts"): "host add",
    ("POST", "/v1/hosts/batch"): "host add",
    ("POST", "/v1/hosts/{name}/token"): "host token",
    ("DELETE", "/v1/hosts/{name}"): "host rm",
    ("POST", "/v1/reg"): "reg",
    ("POST", "/v1/unreg"): "unreg",
    ("POST", "/v1/rm"): "rm",
    ("POST", "/v1/move"): "move",
    ("POST", "/v1/batch"): "batch",
    ("POST", "/v1/addr/add"): "addr_add",
    ("POST", "/v1/addr/del"): "addr_del",
}


def _refused(service: Service, request: Request, field: str, detail: str, body: Any) -> None:
    """A change the API's types refused before the service saw it: in the audit log too."""
    command = _COMMANDS.get((request.method, getattr(request.scope.get("route"), "path", "")))
    if command is None:
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    host = None if service.is_admin(token) else service.host_of_token(token)
    who = f"host:{host}" if host else "admin"
    args = batch_args(body.get("ops")) if command == "batch" and isinstance(body, dict) else body
    service.audit.record(who, command, args, "refused", f"{field}: {detail}", service.revision)


def _json_number(text: str) -> int | float:
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


def create_asgi(service: Service, max_body: int = MAX_BODY, max_batch_body: int = MAX_BATCH_BODY) -> ASGIApp:
    """The manager's ASGI app: the FastAPI app behind the agents' fast path."""
    snapshots = asyncio.Semaphore(SNAPSHOTS_IN_FLIGHT)
    return AgentFastPath(create_app(service, snapshots, max_body, max_batch_body), service, snapshots)


_bearer = HTTPBearer(auto_error=False, description="the admin token, or a host's own token for its feed and status")
HostPath = Annotated[HostStr, "a host name in the path"]
MinRevision = Annotated[
    int | None,
    Query(ge=0, description="answer once this replica reflects this revision (read-your-writes; 503 after 5 s)"),
]


def create_app(
    service: Service,
    snapshots: asyncio.Semaphore | None = None,
    max_body: int = MAX_BODY,
    max_batch_body: int = MAX_BATCH_BODY,
) -> FastAPI:
    app = FastAPI(
        title="hostvlan manager",
        version="1",
        description=(
            "The HostVLAN management server: the authoritative LNID table and the per-host feeds.\n\n"
            'Every answer other than 2xx is `{"error": FIELD_OR_KIND, "detail": TEXT}`. '
            f"Request bodies are limited to {max_body} bytes "
            f"({max(max_batch_body, max_body)} for /v1/batch and /v1/hosts/batch): 413 above."
        ),
        docs_url=None,
        redoc_url=None,
    )
    lock = asyncio.Lock()
    snapshot_gate = snapshots or asyncio.Semaphore(SNAPSHOTS_IN_FLIGHT)
    install_error_handlers(app, lambda request, field, detail, body: _refused(service, request, field, detail, body))

    def _token(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or not auth[7:].strip():
            raise ApiError(
                401, "auth", "missing token: send 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
        return auth[7:].strip()

    # async: a plain `def` dependency would run in a worker thread, a thread hop per call
    async def admin(request: Request, _: HTTPAuthorizationCredentials | None = Security(_bearer)) -> None:  # noqa: B008
        if not service.is_admin(_token(request)):
            host = service.host_of_token(_token(request))
            if request.method != "GET":  # a refused change: in the audit log, by whom
                service.refused(f"host:{host}" if host else "unknown token", f"{request.method} {request.url.path}")
            if host is not None:
                raise ApiError(403, "auth", "a host token cannot make management calls")
            raise ApiError(401, "auth", "invalid token", {"WWW-Authenticate": "Bearer"})

    async def host_auth(
        name: HostPath,
        request: Request,
        _: HTTPAuthorizationCredentials | None = Security(_bearer),  # noqa: B008
    ) -> HostId:
        token = _token(request)
        host = service.host_of_token(token)
        if host is None:
            if service.is_admin(token):
                return HostId(name)
            raise ApiError(401, "auth", "invalid token", {"WWW-Authenticate": "Bearer"})
        if host != name:
            raise ApiError(403, "auth", f"this token belongs to host {host}, not {name}")
        return host

    Admin = Depends(admin)
    AUTH = (401, 403)

    # ----- hosts -----------------------------------------------------------------------------
    @app.post(
        "/v1/hosts",
        status_code=201,
        dependencies=[Admin],
        summary="Register an end host; returns its token",
        response_model=HostToken,
        responses=errors(400, *AUTH, 409, 413, 503),
    )
    async def add_host(body: HostIn) -> dict[str, Any]:
        async with lock:
            token = service.add_host(body.name)
            return {"name": body.name, "token": token, "revision": service.revision}

    @app.post(
        "/v1/hosts/batch",
        status_code=201,
        dependencies=[Admin],
        summary="Register many end hosts in one durable transaction; returns their tokens",
        response_model=HostTokens,
        responses=errors(400, *AUTH, 409, 413, 503),
    )
    async def add_hosts(body: HostsIn) -> dict[str, Any]:
        async with lock:
            got = service.add_hosts(body.names)
            return {"hosts": [{"name": h, "token": t} for h, t in got], "revision": service.revision}

    # a fixed path wins over a template for every method (as in the document): DELETE
    # /v1/hosts/batch is not DELETE /v1/hosts/{name}
    @app.delete("/v1/hosts/batch", include_in_schema=False)
    async def _no_batch_delete() -> None:
        raise StarletteHTTPException(405)

    @app.post(
        "/v1/hosts/{name}/token",
        dependencies=[Admin],
        summary="Rotate a host's token",
        response_model=HostToken,
        responses=errors(400, *AUTH, 404, 503),
    )
    async def rotate(name: HostPath) -> dict[str, Any]:
        async with lock:
            token = service.rotate_host_token(name)
            return {"name": name, "token": token, "revision": service.revision}

    @app.delete(
        "/v1/hosts/{name}",
        dependencies=[Admin],
        summary="Remove a host that has no vNIC",
        response_model=Removed,
        responses=errors(400, *AUTH, 404, 409, 503),
    )
    async def remove_host(name: HostPath) -> dict[str, Any]:
        async with lock:
            service.remove_host(name)
            return {"removed": name, "revision": service.revision}

    @app.get(
        "/v1/hosts",
        dependencies=[Admin],
        summary="Hosts: connected, revision applied, lag",
        response_model=None,
        responses={200: {"model": list[HostRow], "description": "one row per host"}, **errors(400, *AUTH, 409, 503)},
    )
    async def hosts(min_revision: MinRevision = None) -> JSONResponse:
        await service.wait_revision(min_revision)
        return JSONResponse(service.hosts())

    # ----- commands ------------------------------------------------------------------------------
    command: dict[str, Any] = {
        "dependencies": [Admin],
        "response_model": Change,
        "responses": errors(400, *AUTH, 404, 409, 413, 503),
    }

    @app.post("/v1/reg", summary="Register a MAC in an LNID (the paper's `reg`)", **command)
    async def reg(body: RegIn) -> dict[str, Any]:
        async with lock:
            return service.reg(
                body.lnid,
                body.mac,
                body.host,
                body.port,
                body.external,
                ips=body.ips,
                router=body.router,
                dhcp_server=body.dhcp_server,
            ).json()

    @app.post("/v1/addr/add", summary="Let a registered MAC hold an address too", **command)
    async def addr_add(body: AddrAddIn) -> dict[str, Any]:
        async with lock:
            return service.addr_add(body.mac, body.address, body.shared).json()

    @app.post("/v1/addr/del", summary="Take an address from a MAC", **command)
    async def addr_del(body: AddrDelIn) -> dict[str, Any]:
        async with lock:
            return service.addr_del(body.mac, body.address).json()

    @app.post("/v1/unreg", summary="Remove a MAC from one LNID", **command)
    async def unreg(body: UnregIn) -> dict[str, Any]:
        async with lock:
            return service.unreg(body.lnid, body.mac).json()

    @app.post("/v1/rm", summary="Remove a MAC from every LNID", **command)
    async def rm(body: RmIn) -> dict[str, Any]:
        async with lock:
            return service.rm(body.mac).json()

    @app.post("/v1/move", summary="Migrate a MAC to another host", **command)
    async def move(body: MoveIn) -> dict[str, Any]:
        async with lock:
            return service.move(body.mac, body.host, body.port, body.external).json()

    @app.post("/v1/batch", summary="Many commands, one durable transaction", **command)
    async def batch(body: BatchIn) -> dict[str, Any]:
        async with lock:
            return service.batch([op.model_dump() for op in body.ops]).json()

    # ----- reading ---------------------------------------------------------------------------------
    @app.get(
        "/v1/macs",
        dependencies=[Admin],
        summary="The LNID table, filtered",
        response_model=None,
        responses={200: {"model": list[MacRow], "description": "one row per MAC"}, **errors(400, *AUTH, 409, 503)},
    )
    async def macs(
        host: Annotated[HostStr | None, Query()] = None,
        lnid: Annotated[LnidStr | None, Query()] = None,
        mac: Annotated[MacStr | None, Query()] = None,
        min_revision: MinRevision = None,
    ) -> JSONResponse:
        await service.wait_revision(min_revision)
        # the table can be millions of rows: sent as the service made them (the document
        # states their schema; the contract test checks the answers against it)
        return JSONResponse(service.show(host, lnid, mac))

    @app.get(
        "/v1/trace",
        dependencies=[Admin],
        summary="Why can (not) a frame from SRC reach DST?",
        response_model=TraceOut,
        response_model_exclude_unset=True,
        responses=errors(400, *AUTH, 404, 409, 503),
    )
    async def trace(
        src: Annotated[MacStr, Query()], dst: Annotated[TraceDst, Query()], min_revision: MinRevision = None
    ) -> dict[str, Any]:
        await service.wait_revision(min_revision)
        return service.trace(src, dst)

    @app.get(
        "/v1/revision",
        dependencies=[Admin],
        summary="The last durable revision",
        response_model=RevisionOut,
        responses=errors(400, *AUTH, 409, 503),
    )
    async def revision(min_revision: MinRevision = None) -> dict[str, Any]:
        await service.wait_revision(min_revision)
        return {"revision": service.revision}

    # ----- agents ------------------------------------------------------------------------------------
    @app.get(
        "/v1/hosts/{name}/feed",
        summary="The host's view: a snapshot, then deltas (JSON lines)",
        response_class=FeedResponse,
        status_code=200,
        responses={200: {"content": {"application/x-ndjson": {}}}, **errors(400, *AUTH, 404, 503)},
    )
    async def feed(
        name: HostPath,
        host: HostId = Depends(host_auth),  # noqa: B008
        since: Annotated[int | None, Query(ge=0, description="resume after this revision")] = None,
    ) -> Response:
        if not service.knows_host(host):
            raise ApiError(404, "not_found", f"unknown host {host!r}")
        if since is not None and since > service.revision:  # another replica is ahead: wait a bit
            try:
                await service.wait_revision(since, 2.0)
            except StoreUnavailable:
                since = None  # a snapshot then
        return FeedResponse(service.open_feed(host, since), snapshot_gate)

    @app.post(
        "/v1/hosts/{name}/status",
        summary="The agent reports the revision its data path enforces, whether it is in sync, its port bindings",
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": STATUS_SCHEMA}}}},
        response_model=Ok,
        responses=errors(400, *AUTH, 404, 413),
    )
    async def status(
        request: Request,
        host: HostId = Depends(host_auth),  # noqa: B008
    ) -> dict[str, Any]:
        try:  # 7.0 is the integer 7 (as JSON Schema counts it); the body has no other number
            body = json.loads(await request.body(), parse_float=_json_number)
        except ValueError:
            raise InputError("body", "malformed JSON") from None
        who = "admin" if service.is_admin(_token(request)) else f"host:{host}"
        service.record_status(host, body, who=who)
        return {"ok": True}

    @app.get("/healthz", summary="The manager is up", response_model=Health)
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "revision": service.revision}

    app.state.drops = observe.install(app, service, Admin, host_auth)  # drops, status: manager/observe.py
    install_docs(app)
    install_openapi(app, max_body, max(max_batch_body, max_body), BATCH_PATHS)
    app.add_middleware(BodyLimit, max_body=max_body, max_batch_body=max_batch_body)
    return app


__all__ = ["create_app", "create_asgi"]
