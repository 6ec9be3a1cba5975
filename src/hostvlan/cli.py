"""`hostvlan …`: the command line.

Management commands (reg, unreg, rm, move, show, hosts, trace, host …) talk to the
manager's HTTP API only, through `hostvlan.client`; the `testbed` and `demo` commands
drive the emulated data center on this machine (root).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import click

from hostvlan.client import Client, ManagerError
from hostvlan.model.ids import InvalidValue


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("this command builds network namespaces and needs root")


def _emit(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="hostvlan")
def main() -> None:
    """HostVLAN: isolate tenants on one flat L2 network at the hypervisor's virtual switch.

    Every VM MAC belongs to one or more LNIDs (logical network IDs, 1..2^63-1, or
    `global`). Each end host's virtual switch drops a frame bound for a port unless its
    source MAC shares an LNID with that port, and drops frames whose source MAC is forged.
    """


# ----- manager and agent ----------------------------------------------------------------------
@main.command()
@click.option(
    "--db",
    type=click.Path(dir_okay=False),
    default="/var/lib/hostvlan/manager.db",
    show_default=True,
    help="SQLite database (created if missing).",
)
@click.option(
    "--listen",
    "listens",
    multiple=True,
    default=["127.0.0.1:7080"],
    show_default=True,
    help="HOST:PORT to serve on; NETNS/HOST:PORT binds inside a network namespace. Repeatable.",
)
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), help="Serve HTTPS with this certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="Private key of --tls-cert.")
@click.option(
    "--admin-token-file",
    type=click.Path(dir_okay=False),
    help="Where the admin token is written on first start (default: DB.admin-token, mode 0600).",
)
@click.option("--ready-file", type=click.Path(dir_okay=False), help="Write the bound URLs here once serving.")
@click.option("--log-level", default="warning", show_default=True)
def manager(
    db: str,
    listens: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    admin_token_file: str | None,
    ready_file: str | None,
    log_level: str,
) -> None:
    """Run the management server: the authoritative LNID table and the agents' feeds.

    Every acknowledged command is durable (SQLite WAL, synchronous=FULL). On first start
    an admin token is created and its path printed; give it to the CLI with --token or
    HOSTVLAN_TOKEN.
    """
    from pathlib import Path

    from hostvlan.manager.server import Listen, run

    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    try:
        parsed = [Listen.parse(x) for x in listens]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    try:
        run(
            Path(db),
            parsed,
            tls_cert=Path(tls_cert) if tls_cert else None,
            tls_key=Path(tls_key) if tls_key else None,
            admin_token_file=Path(admin_token_file) if admin_token_file else None,
            ready_file=Path(ready_file) if ready_file else None,
            log_level=log_level,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


# ----- management commands (the manager's HTTP API only) ------------------------------------
DEFAULT_MANAGER = "http://127.0.0.1:7080"
_P = ParamSpec("_P")
_R = TypeVar("_R")


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
        metavar="URL",
        expose_value=False,
        callback=_keep("manager"),
        help="The manager's URL (env HOSTVLAN_MANAGER).",
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
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the manager's answer as JSON.")


def _api(f: Callable[_P, _R]) -> Callable[_P, _R]:
    """A management command: connection options, and `error: FIELD: DETAIL` + exit 1 on refusal."""

    @functools.wraps(f)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return f(*args, **kwargs)
        except ManagerError as exc:
            click.echo(f"error: {exc.field}: {exc.detail}", err=True)
            sys.exit(1)

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


def _client() -> Client:
    ctx = click.get_current_context()
    meta = ctx.meta
    try:
        client = Client(str(meta["hostvlan.manager"]), _token(meta), cacert=meta.get("hostvlan.cacert"))
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.call_on_close(client.close)
    return client


def _lnids(values: list[int | str]) -> str:
    return ",".join(str(x) for x in values) or "-"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _where(host: str | None, port: str | None) -> str:
    return "as external" if host is None else f"on host {host}" + (f" port {port}" if port else "")


@main.command(short_help="Register MAC in LNID on HOST (the paper's `reg`).")
@click.argument("lnid")
@click.argument("mac")
@click.argument("host", required=False)
@click.option("--port", metavar="NAME", help="The vNIC's port on HOST (tap/veth/macvtap name), if known.")
@click.option("--external", is_flag=True, help="MAC lives outside every end host (router, gateway): no HOST.")
@_JSON
@_api
def reg(lnid: str, mac: str, host: str | None, port: str | None, external: bool, as_json: bool) -> None:
    """Register vNIC MAC in logical network LNID, on end host HOST (the paper's `reg`).

    LNID is an integer 1..2^63-1, or `global` (member of every logical network: routers,
    shared services). A MAC may be in several LNIDs: run `reg` once per LNID. Frames
    reach a port only from sources sharing one of its LNIDs; the manager sends each host
    exactly the entries it needs, so an LNID added to a running VM takes effect at once.

    A MAC lives on one host; registering it on another is refused (use `move`).
    Re-registering what is already there changes nothing. Examples:

      hostvlan reg 1 52:54:00:00:00:01 EHS1 --port vnet0

      hostvlan reg global 52:54:00:ff:00:01 --external
    """
    if external and host is not None:
        raise click.UsageError("an --external MAC has no HOST")
    if not external and host is None:
        raise click.UsageError("give HOST, or --external for a MAC outside every end host")
    if external and port is not None:
        raise click.UsageError("an --external MAC has no --port")
    ans = _client().reg(lnid, mac, host, port, external=external)
    if as_json:
        _emit(ans)
    elif ans["changed"]:
        click.echo(f"registered {mac} in LNID {lnid} {_where(host, port)} (revision {ans['revision']})")
    else:
        click.echo(
            f"{mac} is already in LNID {lnid} {_where(host, port)}: nothing changed (revision {ans['revision']})"
        )


@main.command()
@click.argument("lnid")
@click.argument("mac")
@_JSON
@_api
def unreg(lnid: str, mac: str, as_json: bool) -> None:
    """Remove MAC from logical network LNID (its other LNIDs stay).

    Takes effect at once on every host. When LNID was the MAC's last one, the MAC is
    unregistered and its port is unbound: the filter then drops every frame to it.
    """
    ans = _client().unreg(lnid, mac)
    if as_json:
        _emit(ans)
    elif ans["changed"]:
        click.echo(f"removed {mac} from LNID {lnid} (revision {ans['revision']})")
    else:
        click.echo(f"{mac} is not in LNID {lnid}: nothing changed (revision {ans['revision']})")


@main.command()
@click.argument("mac")
@_JSON
@_api
def rm(mac: str, as_json: bool) -> None:
    """Remove MAC from every LNID and unbind its port (the VM is gone)."""
    ans = _client().rm(mac)
    if as_json:
        _emit(ans)
    elif ans["changed"]:
        click.echo(f"removed {mac} from every LNID (revision {ans['revision']})")
    else:
        click.echo(f"{mac} is not registered: nothing changed (revision {ans['revision']})")


@main.command(short_help="Migrate MAC to another end host, keeping its LNIDs.")
@click.argument("mac")
@click.argument("host", required=False)
@click.option("--port", metavar="NAME", help="The vNIC's port on the new host, if known.")
@click.option("--external", is_flag=True, help="The MAC now lives outside every end host.")
@_JSON
@_api
def move(mac: str, host: str | None, port: str | None, external: bool, as_json: bool) -> None:
    """Migrate registered MAC to end host HOST, keeping its LNIDs (paper §3.6.3).

    Only the source and destination hosts' tables change; the port binding moves.
    """
    if external == (host is not None):
        raise click.UsageError("give HOST, or --external (not both)")
    if external and port is not None:
        raise click.UsageError("an --external MAC has no --port")
    ans = _client().move(mac, host, port, external=external)
    if as_json:
        _emit(ans)
    elif ans["changed"]:
        click.echo(f"moved {mac} {_where(host, port).replace('on host', 'to host')} (revision {ans['revision']})")
    else:
        click.echo(f"{mac} is already {_where(host, port)}: nothing changed (revision {ans['revision']})")


@main.command(short_help="Show the LNID table: MAC, LNIDs, host, port.")
@click.option("--host", metavar="H", help="Only the vNICs placed on host H.")
@click.option("--lnid", metavar="L", help="Only members of LNID L (an integer or `global`).")
@click.option("--mac", metavar="M", help="Only MAC M.")
@_JSON
@_api
def show(host: str | None, lnid: str | None, mac: str | None, as_json: bool) -> None:
    """Show the manager's LNID table: each MAC, its LNIDs and where it lives.

    HOST is the end host whose virtual switch holds the vNIC (`external`: outside every
    host, e.g. a router); PORT is the bound port, `-` if the registration named none.
    Filters combine.
    """
    rows = _client().macs(host, lnid, mac)
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no MAC matches" if host or lnid or mac else "no MAC is registered")
        return
    _table(
        ("MAC", "LNIDS", "HOST", "PORT"),
        [
            (r["mac"], _lnids(r["lnids"]), "external" if r["external"] else (r["host"] or "-"), r["port"] or "-")
            for r in rows
        ],
    )


@main.command(short_help="List end hosts: connected, vNICs, revision applied/due, in sync.")
@_JSON
@_api
def hosts(as_json: bool) -> None:
    """List end hosts and whether their agents enforce the latest table.

    CONNECTED: the agent's feed is open. DUE: the last revision that changed the host's
    table; APPLIED: the last one its agent reported enforcing; LAG: DUE - APPLIED.
    IN-SYNC: connected and nothing pending.
    """
    rows = _client().hosts()
    if as_json:
        _emit(rows)
        return
    if not rows:
        click.echo("no host is registered (add one with `hostvlan host add NAME`)")
        return
    yn = {True: "yes", False: "no"}
    _table(
        ("NAME", "CONNECTED", "VNICS", "APPLIED", "DUE", "LAG", "IN-SYNC"),
        [
            (
                h["name"],
                yn[h["connected"]],
                str(h["vnics"]),
                str(h["revision_applied"]),
                str(h["revision_due"]),
                str(h["lag"]),
                yn[h["in_sync"]],
            )
            for h in rows
        ],
    )


@main.command(short_help="Why can (not) SRC_MAC reach DST? ALLOW/DROP and the reason.")
@click.argument("src_mac")
@click.argument("dst")
@_JSON
@_api
def trace(src_mac: str, dst: str, as_json: bool) -> None:
    """Explain whether a frame from SRC_MAC reaches DST ("why can't A reach B?").

    DST is a registered MAC or HOST:PORT. Prints ALLOW or DROP and the tenant filter's
    reason, from the manager's model: the frame passes iff its source MAC shares an LNID
    with the destination port (or either is `global`); unknown sources and unbound ports
    are dropped (fail closed).
    """
    t = _client().trace(src_mac, dst)
    if as_json:
        _emit(t)
        return
    click.echo(f"{'ALLOW' if t['allow'] else 'DROP'}: {t['reason']}")
    click.echo(f"  from {t['src']} (LNIDs {_lnids(t['src_lnids'])})")
    if "host" in t:
        to = f"{t.get('dst_mac')} on {t['host']}:{t.get('port')} (LNIDs {_lnids(t.get('dst_lnids', []))})"
    else:
        to = t["dst"]
    click.echo(f"  to   {to}")


@main.group()
def host() -> None:
    """End hosts known to the manager, and their agents' tokens."""


@host.command("add")
@click.argument("name")
@_JSON
@_api
def host_add(name: str, as_json: bool) -> None:
    """Register end host NAME and print its agent's token (shown only once).

    Start the host's agent (control daemon) with this token: it can read only NAME's
    partial LNID table and report NAME's status.
    """
    ans = _client().add_host(name)
    _token_out(ans, as_json, "added (revision {revision}); its agent's token (shown only once):")


def _token_out(ans: Any, as_json: bool, what: str) -> None:
    """Print a host's new token: JSON, or a line saying what happened then the token alone."""
    if as_json:
        _emit(ans)
        return
    click.echo(f"host {ans['name']} " + what.format(revision=ans["revision"]))
    click.echo(ans["token"])


@host.command("token")
@click.argument("name")
@_JSON
@_api
def host_token(name: str, as_json: bool) -> None:
    """Give host NAME a new token; the old one stops working and its open feeds end."""
    ans = _client().rotate_host_token(name)
    _token_out(ans, as_json, "has a new token (revision {revision}); the old one no longer works:")


@host.command("rm")
@click.argument("name")
@_JSON
@_api
def host_rm(name: str, as_json: bool) -> None:
    """Remove end host NAME; refused while vNICs are registered on it (`rm` or `move` them first)."""
    revision = _client().remove_host(name)
    if as_json:
        _emit({"removed": name, "revision": revision})
        return
    click.echo(f"host {name} removed (revision {revision})")


# ----- testbed ------------------------------------------------------------------------------
@main.group()
def testbed() -> None:
    """The emulated data center: hosts, VMs and a physical switch in network namespaces."""


@testbed.command("up")
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the testbed as JSON (VM namespaces, MACs, IPs).")
@click.option("--prefix", help="Name prefix for every namespace (default: a fresh hv<6 hex>).")
def testbed_up(topology: str, as_json: bool, prefix: str | None) -> None:
    """Build TOPOLOGY (a YAML file), program every host's filter, and leave it running.

    Remove it with `hostvlan testbed down`. An invalid file fails naming the line, and
    nothing is created; a failure while building removes what was built.
    """
    from hostvlan.testbed.build import Testbed
    from hostvlan.testbed.topology import TopologyError, load_topology

    _need_root()
    try:
        topo = load_topology(topology)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from None
    if prefix is not None and not (prefix.isalnum() and len(prefix) <= 12):
        raise click.BadParameter("prefix must be 1-12 letters or digits", param_hint="--prefix")
    tb = Testbed(topo, prefix=prefix, record=True)
    tb.up()
    if as_json:
        _emit(tb.to_json())
        return
    click.echo(f"testbed {tb.prefix} is up ({len(tb.hosts)} hosts, {len(tb.vms)} VMs, {len(tb.external)} external)")
    for h in tb.hosts.values():
        click.echo(f"  host {h.name:<12} backend {h.backend:<7} netns {h.netns}")
    for vm in tb.vms.values():
        where = f"netns {vm.netns}" if vm.netns else f"domain {vm.domain}"  # a libvirt guest: no netns
        click.echo(f"  vm   {vm.name:<12} {vm.mac}  {vm.ip:<14} {where}")
    for e in tb.external.values():
        click.echo(f"  ext  {e.name:<12} {e.mac}  {e.ip:<14} netns {e.netns}")
    click.echo("try: hostvlan testbed exec VM -- ping IP   |   remove: hostvlan testbed down")


@testbed.command("down")
@click.option("--prefix", help="Remove only this testbed (default: every testbed started by `testbed up`).")
def testbed_down(prefix: str | None) -> None:
    """Remove testbeds started by `testbed up` (idempotent)."""
    from hostvlan.testbed.build import down_recorded

    _need_root()
    gone = down_recorded(prefix)
    click.echo(f"removed {len(gone)} network namespaces" if gone else "nothing to remove")


@testbed.command("list")
@click.option("--json", "as_json", is_flag=True)
def testbed_list(as_json: bool) -> None:
    """List testbeds left running by `testbed up`."""
    from hostvlan.testbed.build import recorded

    recs = recorded()
    if as_json:
        _emit(recs)
        return
    for r in recs:
        click.echo(f"{r.get('prefix')}: {len(r.get('hosts', {}))} hosts, {len(r.get('vms', {}))} VMs")
    if not recs:
        click.echo("no testbed is up")


# ----- testbed exec (libvirt guests: hostvlan.testbed.guestvms) -----
@testbed.command("exec")
@click.option("--prefix", help="Which testbed (default: the only one up).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds the command may run.")
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def testbed_exec(prefix: str | None, timeout: float, name: str, argv: tuple[str, ...]) -> None:
    """Run ARGV inside VM (or external endpoint, or host) NAME: `testbed exec vm1 -- ping -c1 IP`.

    A libvirt guest runs it through its virtio-serial exec channel, anything else in its
    network namespace. Prints its output; exits with its status (3: no such NAME).
    """
    import subprocess

    from hostvlan.testbed.build import recorded
    from hostvlan.testbed.guestvms import GuestError, NoSuchTarget, exec_in

    _need_root()
    recs = [r for r in recorded() if "vms" in r and (prefix is None or r["prefix"] == prefix)]
    if len(recs) != 1:
        raise click.ClickException(f"{len(recs)} testbeds match; pass --prefix" if recs else "no such testbed is up")
    try:
        status, out, err = exec_in(recs[0], name, list(argv), timeout)
    except NoSuchTarget as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(3)
    except (GuestError, OSError, subprocess.TimeoutExpired) as exc:
        raise click.ClickException(f"{name}: {exc}") from None
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.exit(status)


@testbed.command("check")
@click.option("--prefix", help="Which testbed (default: the only one up).")
@click.option("--json", "as_json", is_flag=True)
def testbed_check(prefix: str | None, as_json: bool) -> None:
    """Send real frames from every endpoint of a running testbed and compare with the model.

    Exits 1 when any frame crossed LNIDs, a same-LNID frame went missing, or a forged
    frame was delivered.
    """
    from hostvlan.testbed.build import from_record, recorded
    from hostvlan.testbed.check import run_check

    _need_root()
    recs = [r for r in recorded() if "topology" in r and (prefix is None or r["prefix"] == prefix)]
    if len(recs) != 1:
        raise click.ClickException(f"{len(recs)} testbeds match; pass --prefix" if recs else "no such testbed is up")
    tb = from_record(recs[0])
    rep = run_check(tb)
    from hostvlan.testbed.guestcheck import check_guests  # libvirt guests, from inside

    grep = check_guests(tb, forged=True)
    if as_json:
        out = {**rep.summary(), "leaks": rep.leaks, "misses": rep.misses, "forged": rep.forged_delivered}
        if grep.reach:
            out["guests"] = {**grep.summary(), "wrong": grep.wrong, "forged": grep.forged_answered}
        _emit(out)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in rep.summary().items()))
        for line in rep.leaks + rep.misses + rep.forged_delivered:
            click.echo("  " + line)
        if grep.reach:
            click.echo("guests: " + " ".join(f"{k}={v}" for k, v in grep.summary().items()))
            for line in grep.wrong + grep.forged_answered:
                click.echo("  " + line)
    sys.exit(0 if rep.ok and grep.ok else 1)


# ----- demo -----------------------------------------------------------------------------------
@main.command(short_help="Run the paper's Fig. 7 scenario end to end on real namespaces.")
@click.option("--topology", type=click.Path(dir_okay=False), help="Another topology (default: the paper's Fig. 7).")
@click.option(
    "--guests",
    type=click.Choice(["namespaces", "libvirt"]),
    default="namespaces",
    show_default=True,
    help="VMs as network namespaces, or real QEMU guests started by libvirt (slower: TCG).",
)
def demo(topology: str | None, guests: str) -> None:
    """Run the paper's Fig. 7 scenario end to end on real namespaces, explain it, tear down."""
    from hostvlan.demo import run_demo
    from hostvlan.demo_guests import run_demo_guests

    _need_root()
    try:
        ok = run_demo_guests(topology) if guests == "libvirt" else run_demo(topology)
    except InvalidValue as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if ok else 1)


# ----- benchmarks ---------------------------------------------------------------------------
@main.group(invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks of this machine (not tests: they measure and report, never fail on a number).

    Without a subcommand: the data-path suite with its defaults (`bench data-path`).
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(bench_data_path)


def _words(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _ints(value: str, option: str) -> tuple[int, ...]:
    try:
        return tuple(int(x.replace("_", "")) for x in _words(value))
    except ValueError:
        raise click.BadParameter(f"not a comma-separated list of integers: {value!r}", param_hint=option) from None


# the data-path bench's defaults (hostvlan.bench.datapath, not imported until it runs)
_CONFIGS = "vxlan,none,bridge,ovs-none,ovs,macvtap-none,macvtap"
_WORKLOADS = "lat_us,udp_gbps,tcp_gbps,ab_rps,wrk_rps"


@bench.command("data-path")
@click.option("--rounds", type=int, default=7, show_default=True, help="Rounds; configurations alternate in each.")
@click.option("--seconds", type=int, default=1, show_default=True, help="Seconds per timed measurement.")
@click.option("--configs", default=_CONFIGS, show_default=True, help="Configurations (comma-separated).")
@click.option(
    "--ext-configs", default="vxlan,none,bridge", show_default=True, help="Configurations also measured from outside."
)
@click.option("--workloads", default=_WORKLOADS, show_default=True, help="ab_rps/wrk_rps run on the ext path only.")
@click.option("--paths", default="vm,ext", show_default=True, help="vm: VM to VM on one host; ext: external client.")
@click.option(
    "--sizes", default="8192,81920,819200", show_default=True, help="Table sizes; the first is the main testbed's."
)
@click.option("--port-lnids", default="1,16", show_default=True, help="LNIDs per idle filled port (size sweep).")
@click.option(
    "--programming",
    "prog",
    default="bridge,ovs,macvtap",
    show_default=True,
    help="Back ends whose programming is timed ('' for none).",
)
@click.option("--out", "out_dir", default="bench/results", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--plots",
    "plots_dir",
    default="docs/benchmarks",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Where the PNGs go ('' for none).",
)
@click.option("--quick", is_flag=True, help="A tiny set for a smoke test (< 1 min); overrides the set options.")
def bench_data_path(
    rounds: int,
    seconds: int,
    configs: str,
    ext_configs: str,
    workloads: str,
    paths: str,
    sizes: str,
    port_lnids: str,
    prog: str,
    out_dir: str,
    plots_dir: str,
    quick: bool,
) -> None:
    """The data path on the testbed: latency, UDP/TCP/web throughput per configuration (plain
    bridge, HostVLAN bridge, OVS and macvtap with and without the filter, VXLAN), VM to VM
    and from an external client; the per-frame cost at 8,192/81,920/819,200 entries and 1/16
    LNIDs per port; the filter's programming latency per back end and size.

    JSON on stdout and in OUT/datapath-<UTC>.json + OUT/latest.json; progress on stderr;
    plots in PLOTS. Needs root (namespaces). Never fails on a number.
    """
    from hostvlan.bench import datapath

    if quick:
        opts = datapath.quick()
    else:
        opts = datapath.Options(
            rounds=rounds,
            seconds=seconds,
            configs=_words(configs),
            ext_configs=_words(ext_configs),
            workloads=_words(workloads),
            paths=_words(paths),
            sizes=_ints(sizes, "--sizes"),
            port_lnids=_ints(port_lnids, "--port-lnids"),
            programming=_words(prog),
        )
    opts = dataclasses.replace(opts, command=" ".join(["hostvlan", *sys.argv[1:]]))
    try:
        datapath.validate(opts)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if os.geteuid() != 0:
        raise click.ClickException("the data-path bench builds network namespaces: run it as root")
    result = datapath.run(opts)
    path = datapath.write(result, Path(out_dir))
    click.echo(f"wrote {path} and {Path(out_dir) / 'latest.json'}", err=True)
    if plots_dir:
        from hostvlan.bench.plot import plot_datapath

        try:
            for png in plot_datapath(result, Path(plots_dir)):
                click.echo(f"wrote {png}", err=True)
        except ImportError as exc:
            click.echo(f"no plots: {exc} (pip install -e .[bench])", err=True)
    _emit(result)


@bench.command("control-plane")
@click.option("--hosts", type=int, default=8192, show_default=True, help="End hosts (one simulated agent each).")
@click.option("--vms-per-host", type=int, default=128, show_default=True)
@click.option("--vms-per-tenant", type=int, default=64, show_default=True, help="VMs per tenant (LNID).")
@click.option("--batch-hosts", type=int, default=0, help="Hosts per bulk registration (default: one pod).")
@click.option("--regs", type=int, default=200, show_default=True, help="Single `reg` commands timed.")
@click.option("--moves", type=int, default=200, show_default=True, help="`move` commands timed.")
@click.option("--lnid-adds", type=int, default=200, show_default=True, help="LNIDs added to running VMs, timed.")
@click.option(
    "--sim-procs", type=int, default=2, show_default=True, help="Processes for the simulated agents (0: this one)."
)
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the manager's database and log here.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (progress goes to stderr).")
def bench_control_plane(
    hosts: int,
    vms_per_host: int,
    vms_per_tenant: int,
    batch_hosts: int,
    regs: int,
    moves: int,
    lnid_adds: int,
    sim_procs: int,
    workdir: str | None,
    out: str | None,
    as_json: bool,
) -> None:
    """The control plane at the paper's scale (Table 1: 8,192 hosts x 128 VMs, 64 VMs per tenant).

    Starts a manager and one simulated agent per host (they speak the real agent protocol),
    loads the worst-case data center through the bulk API, checks every host's view, times
    single `reg`, `move` and LNID-add commands until every affected agent applied them,
    counts feed bytes to unaffected hosts, and kills -9 and restarts the manager.
    """
    from hostvlan.bench.control_plane import BenchConfig, run

    cfg = BenchConfig(
        hosts=hosts,
        vms_per_host=vms_per_host,
        vms_per_tenant=vms_per_tenant,
        batch_hosts=batch_hosts,
        regs=regs,
        moves=moves,
        lnid_adds=lnid_adds,
        sim_procs=sim_procs,
        workdir=workdir,
    )
    try:
        result = run(cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        _emit(result)
    else:
        for key in ("load_s", "manager_rss_mib", "db_mib", "view_entries_max", "views_correct", "reg_p50_ms"):
            click.echo(f"{key}: {result[key]}")
        for key in ("reg_p99_ms", "unaffected_bytes", "move_p99_ms", "restart_resync_s", "lost_acknowledged"):
            click.echo(f"{key}: {result[key]}")


from hostvlan.agent.command import agent as agent_command  # noqa: E402

main.add_command(agent_command)


if __name__ == "__main__":  # pragma: no cover
    main()
