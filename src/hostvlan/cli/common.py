"""What every command group shares: the root group `main`, the exit codes, the management
commands' connection options and error mapping, and output helpers.

Exit codes, the same for every command (docs/control-plane.md):
0 success (a `trace` answering DROP included); 1 the manager refused bad input, is unreachable,
or another error; 2 usage error (click's), raised before anything is touched; 3 not found
(an unknown host or MAC: the manager's 404); 4 conflict (the manager's 409).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, ParamSpec, TypeVar

import click

from hostvlan.client import Client, ManagerError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT = 0, 1, 2, 3, 4
DEFAULT_MANAGER = "http://127.0.0.1:7080"
_P = ParamSpec("_P")
_R = TypeVar("_R")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "HOSTVLAN"})
@click.version_option(package_name="hostvlan")
def main() -> None:
    """HostVLAN: isolate tenants on one flat L2 network at the hypervisor's virtual switch.

    Every VM MAC belongs to one or more LNIDs (logical network IDs, 1..2^63-1, or
    `global`). Each end host's virtual switch drops a frame bound for a port unless its
    source MAC shares an LNID with that port, and drops frames whose source MAC is forged.

    Exit codes: 0 success, 1 refused or failed, 2 usage error, 3 not found, 4 conflict.
    """


def exit_code(exc: ManagerError) -> int:
    """The exit code of a manager's refusal: 404 -> 3, 409 -> 4, anything else (or no answer) -> 1."""
    return {404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT}.get(exc.status, EXIT_ERROR)


def fail(field: str, detail: str, code: int = EXIT_ERROR) -> NoReturn:
    """One `error: FIELD: DETAIL` line on stderr, then exit `code`."""
    click.echo(f"error: {field}: {detail}", err=True)
    sys.exit(code)


def need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("this command builds network namespaces and needs root")


def emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


# ----- the management commands' connection (the manager's HTTP API only) -------------------------
def _keep(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        ctx.meta[f"hostvlan.{name}"] = value
        ctx.meta[f"hostvlan.{name}.source"] = ctx.get_parameter_source(param.name or name)

    return store


_CONNECTION = (
    click.option(
        "--manager",
        envvar="HOSTVLAN_MANAGER",
        default=DEFAULT_MANAGER,
        show_default=True,
        metavar="URL[,URL...]",
        expose_value=False,
        callback=_keep("manager"),
        help="The manager's URL, or the URLs of its replicas to fail over between (env HOSTVLAN_MANAGER).",
    ),
    click.option(
        "--token",
        envvar="HOSTVLAN_TOKEN",
        metavar="T",
        expose_value=False,
        callback=_keep("token"),
        help="The admin token (env HOSTVLAN_TOKEN); the manager writes it to DB.admin-token on first start.",
    ),
    click.option(
        "--token-file",
        envvar="HOSTVLAN_TOKEN_FILE",
        type=click.Path(exists=True, dir_okay=False),
        expose_value=False,
        callback=_keep("token_file"),
        help="Read the admin token from this file (env HOSTVLAN_TOKEN_FILE).",
    ),
    click.option(
        "--cacert",
        envvar="HOSTVLAN_CACERT",
        type=click.Path(exists=True, dir_okay=False),
        expose_value=False,
        callback=_keep("cacert"),
        help="CA bundle (PEM) to verify an HTTPS manager with (env HOSTVLAN_CACERT).",
    ),
)
JSON = click.option("--json", "as_json", is_flag=True, help="Print the manager's answer as JSON.")


def api(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """A management command: connection options, and `error: FIELD: DETAIL` + the exit code of
    the refusal (`exit_code`)."""

    @functools.wraps(f)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return f(*args, **kwargs)
        except ManagerError as exc:
            fail(exc.field, exc.detail, exit_code(exc))

    for option in reversed(_CONNECTION):
        run = option(run)
    return run


def _token(meta: dict[str, Any]) -> str:
    token, token_file = meta.get("hostvlan.token"), meta.get("hostvlan.token_file")
    cmdline = click.core.ParameterSource.COMMANDLINE
    if token and token_file:
        if meta.get("hostvlan.token.source") == meta.get("hostvlan.token_file.source") == cmdline:
            raise click.UsageError("give --token or --token-file, not both")
        if meta.get("hostvlan.token_file.source") == cmdline:
            token = None  # an explicit --token-file beats HOSTVLAN_TOKEN
    if not token and token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise click.UsageError(f"cannot read the token file: {exc}") from None
        if not token:
            raise click.UsageError(f"the token file {token_file} is empty")
    if not token:
        raise click.UsageError(
            "no admin token: pass --token T or --token-file FILE, or set HOSTVLAN_TOKEN "
            "(the manager writes it to DB.admin-token on first start)"
        )
    return str(token)


def client() -> Client:
    """The manager's client of the running command (closed with its context)."""
    ctx = click.get_current_context()
    meta = ctx.meta
    try:
        c = Client(str(meta["hostvlan.manager"]), _token(meta), cacert=meta.get("hostvlan.cacert"))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.call_on_close(c.close)
    return c
