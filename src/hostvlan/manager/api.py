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
from starlette.types import ASGIApp

from hostvlan.manager import observe
from hostvlan.manager.audit import batch_args
from hostvlan.manager.contract import ApiError, errors, install_docs, install_error_handlers, install_openapi
from hostvlan.manager.edge import (
    BATCH_PATHS,
    MAX_BATCH_BODY,
    MAX_BODY,
    SNAPSHOTS_IN_FLIGHT,
    STATUS_SCHEMA,
    AgentFastPath,
    BodyLimit,
    FeedResponse,
    json_number,
)
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
            body = json.loads(await request.body(), parse_float=json_number)
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
