"""The API's contract beyond the routes: one error shape, the OpenAPI document, /docs.

- Every non-2xx answer is `{"error": FIELD_OR_KIND, "detail": TEXT}` (`schemas.ErrorOut`):
  the API's own errors, the framework's validation errors (400, never 422), unknown
  routes (404), undeclared methods (405 with `Allow` listing the path's methods),
  authentication failures (401 with `WWW-Authenticate: Bearer`, 403), server errors.
- The OpenAPI document is FastAPI's, generated from the types in `schemas.py`, with the
  framework's 422 replaced by the errors each operation declares and the body limits.
- `/docs` is Swagger UI served from the manager itself (the assets ship in the
  `fastapi-offline` package): it loads nothing from any other host.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hostvlan.manager.schemas import OP_KINDS, ErrorOut
from hostvlan.manager.service import InputError, StoreUnavailable
from hostvlan.model.datacenter import ModelError

log = logging.getLogger("hostvlan.manager")


class ApiError(Exception):
    """An answer other than 2xx, raised from a route or dependency."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def error_response(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_DESCRIPTIONS = {
    400: "bad input: `error` names the field (`mac`, `lnid`, `ops[3].mac`, `body`, …)",
    401: "no token, or not a valid one (`error`: `auth`)",
    403: "a valid token that may not make this call (`error`: `auth`)",
    404: "unknown host or MAC (`error`: `not_found`)",
    408: "the request body stalled (`error`: `body`)",
    409: "the change conflicts with the table (`error`: `conflict`), or gives an address no vNIC may hold "
    "(multicast, broadcast, loopback, unspecified, host bits set; `error` names the field: `ips[0]`, `address`), "
    "or a read asks for a `min_revision` one manager has not reached (`error`: `min_revision`)",
    413: "request body over the limit (`error`: `body`)",
    503: "a replica that cannot reach its store, or not yet at `min_revision` (`error`: `store`): try another",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route: these error statuses, each with the one error shape."""
    return {code: {"model": ErrorOut, "description": _DESCRIPTIONS[code]} for code in codes}


# the service's words for the rules a union of shapes states in the document
_MESSAGES = {
    ("host", "missing"): "a host is required (or mark the MAC as external)",
    ("host", "none_required"): "an external MAC has no host (drop --external or the host)",
}


def validation_error(exc: RequestValidationError) -> tuple[str, str]:
    """(field, detail) of the first validation error, named as the service names fields."""
    errs = exc.errors()
    first: dict[str, Any] = dict(errs[0]) if errs else {}
    loc = list(first.get("loc", ()))
    if loc and loc[0] in ("body", "query", "path", "header"):
        loc = loc[1:]
    kind = first.get("type", "")
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif isinstance(part, str) and part.startswith("("):
            continue  # the tag of a union member (schemas.py): ops[3].(reg).mac is ops[3].mac
        else:
            name += f".{part}" if name else str(part)
    ctx = first.get("ctx") or {}
    msg = str(ctx["error"]) if kind == "value_error" and "error" in ctx else str(first.get("msg", "invalid request"))
    friendly = _MESSAGES.get((name.rpartition(".")[2], kind))
    if friendly:
        msg = friendly
    if kind == "json_invalid":
        return "body", "malformed JSON"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        got = first.get("input")
        if not isinstance(got, dict):
            return f"{name}.op", "each command must be an object"
        return f"{name}.op", f"unknown command {got.get('op')!r} ({', '.join(OP_KINDS)})"
    if not name:
        if kind == "missing":
            return "body", "a JSON object body is required"
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            return "body", "the body must be a JSON object"
        return "body", msg
    return name, msg


def _allowed(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """The methods the document gives this path: those of the documented routes matching
    it, a fixed path (`/v1/hosts/batch`) before a template (`/v1/hosts/{name}`)."""
    fixed: set[str] = set()
    templated: set[str] = set()
    for route in app.router.routes:
        if not getattr(route, "include_in_schema", False):
            continue
        match, _ = route.matches({**scope, "method": "GET"})
        if match != Match.NONE:
            methods = set(getattr(route, "methods", None) or ())
            (templated if "{" in getattr(route, "path", "") else fixed).update(methods)
    return sorted(fixed or templated)


Refused = Callable[[Request, str, str, Any], None]
"""Told of every change the framework's validation refused: (request, field, detail, body)."""


def install_error_handlers(app: FastAPI, refused: Refused | None = None) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(InputError)
    async def _input_error(request: Request, exc: InputError) -> JSONResponse:
        return error_response(exc.status, exc.field, exc.detail)

    @app.exception_handler(StoreUnavailable)
    async def _store(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return error_response(503, "store", str(exc), {"Retry-After": "1"})

    @app.exception_handler(ModelError)
    async def _model_error(request: Request, exc: ModelError) -> JSONResponse:
        return error_response(404 if exc.kind == "not_found" else 409, exc.kind, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        field, detail = validation_error(exc)
        if refused is not None and request.method != "GET":
            refused(request, field, detail, exc.body)
        return error_response(400, field, detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 404:
            return error_response(404, "not_found", f"no such call: {path}")
        if exc.status_code == 405:
            allow = _allowed(app, dict(request.scope))
            detail = f"{request.method} is not a method of {path} (allowed: {', '.join(allow)})"
            return error_response(405, "method", detail, {"Allow": ", ".join(allow)})
        return error_response(exc.status_code, "http", str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", f"internal error ({type(exc).__name__}); see the manager's log")


def install_openapi(app: FastAPI, max_body: int, max_batch_body: int, batch_paths: frozenset[str]) -> None:
    """The document FastAPI makes, without its 422 (this API answers 400 in the one error
    shape), with the body limit of every operation that takes a body."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path, ops in doc.get("paths", {}).items():
            for op in ops.values():
                op.get("responses", {}).pop("422", None)
                for code, resp in op.get("responses", {}).items():
                    if code >= "400":  # errors are JSON, also on a route that streams JSON lines
                        resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
                if "requestBody" in op:
                    limit = max_batch_body if path in batch_paths else max_body
                    op["x-max-body-bytes"] = limit
                    op["requestBody"]["description"] = f"JSON, at most {limit} bytes (413 above)"
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


# Swagger UI from the manager itself: the assets of the fastapi-offline package
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}


@cache
def _asset(name: str) -> bytes:
    import fastapi_offline

    return (Path(fastapi_offline.__file__).parent / "static" / name).read_bytes()


def install_docs(app: FastAPI, openapi_url: str = "/openapi.json") -> None:
    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        html = get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="/docs/assets/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
        return html

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        media = _ASSETS.get(name)
        if media is None:
            raise ApiError(404, "not_found", f"no such asset: {name}")
        return Response(_asset(name), media_type=media, headers={"Cache-Control": "public, max-age=86400"})


def hosts_referenced(html: str) -> set[str]:
    """The hosts an HTML page loads anything from (for tests): absolute URLs in src/href."""
    return set(re.findall(r"""(?:src|href)\s*=\s*["'](?:https?:)?//([^/"']+)""", html))


__all__ = ["ApiError", "errors", "install_docs", "install_error_handlers", "install_openapi", "validation_error"]
