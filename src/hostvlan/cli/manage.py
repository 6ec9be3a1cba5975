"""Management commands (`reg`, `unreg`, `rm`, `move`, `show`, `hosts`, `trace`, `host …`): they talk
to the manager's HTTP API only, through `hostvlan.client`. Exit codes: see `common`.
"""

from __future__ import annotations

from typing import Any

import click

from hostvlan.cli.common import EXIT_NOT_FOUND, JSON, api, client, emit, fail, main, table
from hostvlan.client import HostInfo, MacRow


def _lnids(values: list[int | str]) -> str:
    return ",".join(str(x) for x in values) or "-"


def _where(host: str | None, port: str | None) -> str:
    return "as external" if host is None else f"on host {host}" + (f" port {port}" if port else "")


@main.command(short_help="Register MAC in LNID on HOST (the paper's `reg`).")
@click.argument("lnid")
@click.argument("mac")
@click.argument("host", required=False)
@click.option("--port", metavar="NAME", help="The vNIC's port on HOST (tap/veth/macvtap name), if known.")
@click.option("--external", is_flag=True, help="MAC lives outside every end host (router, gateway): no HOST.")
@click.option(
    "--ip",
    "ips",
    multiple=True,
    metavar="ADDR",
    help="An IPv4/IPv6 address (or prefix) the vNIC holds; repeat for more. Given: its addresses become exactly these.",
)
@click.option("--router", is_flag=True, help="The vNIC may send router advertisements and redirects.")
@click.option("--dhcp-server", is_flag=True, help="The vNIC may send DHCP/DHCPv6 server messages.")
@JSON
@api
def reg(
    lnid: str,
    mac: str,
    host: str | None,
    port: str | None,
    external: bool,
    ips: tuple[str, ...],
    router: bool,
    dhcp_server: bool,
    as_json: bool,
) -> None:
    """Register vNIC MAC in logical network LNID, on end host HOST (the paper's `reg`).

    LNID is an integer 1..2^63-1, or `global` (member of every logical network: routers,
    shared services). A MAC may be in several LNIDs: run `reg` once per LNID. Frames
    reach a port only from sources sharing one of its LNIDs; the manager sends each host
    exactly the entries it needs, so an LNID added to a running VM takes effect at once.

    A MAC lives on one host; registering it on another is refused (use `move`).
    Re-registering what is already there changes nothing.

    Addresses (`--ip`, repeatable) make the vNIC *guarded*: the ARP, IPv4/IPv6 sources
    and NS/NA it sends must be its own (its EUI-64 link-local always is); without them it
    keeps the paper's MAC-only check (*unguarded*). An address belongs to one MAC (see
    `hostvlan addr add --shared` for a VIP); multicast, broadcast, loopback and unspecified
    addresses are refused. Without --ip, --router or --dhcp-server a MAC keeps the
    addresses it has. Examples:

      hostvlan reg 1 52:54:00:00:00:01 EHS1 --port vnet0 --ip 10.0.0.1 --ip fd00::1

      hostvlan reg global 52:54:00:ff:00:01 --external
    """
    if external and host is not None:
        raise click.UsageError("an --external MAC has no HOST")
    if not external and host is None:
        raise click.UsageError("give HOST, or --external for a MAC outside every end host")
    if external and port is not None:
        raise click.UsageError("an --external MAC has no --port")
    given = bool(ips) or router or dhcp_server
    ans = client().reg(
        lnid,
        mac,
        host,
        port,
        external=external,
        ips=list(ips) if given else None,
        router=router,
        dhcp_server=dhcp_server,
    )
    if as_json:
        emit(ans)
    elif ans["changed"]:
        click.echo(f"registered {mac} in LNID {lnid} {_where(host, port)} (revision {ans['revision']})")
    else:
        click.echo(
            f"{mac} is already in LNID {lnid} {_where(host, port)}: nothing changed (revision {ans['revision']})"
        )


@main.command()
@click.argument("lnid")
@click.argument("mac")
@JSON
@api
def unreg(lnid: str, mac: str, as_json: bool) -> None:
    """Remove MAC from logical network LNID (its other LNIDs stay).

    Takes effect at once on every host. When LNID was the MAC's last one, the MAC is
    unregistered and its port is unbound: the filter then drops every frame to it.
    """
    ans = client().unreg(lnid, mac)
    if as_json:
        emit(ans)
    elif ans["changed"]:
        click.echo(f"removed {mac} from LNID {lnid} (revision {ans['revision']})")
    else:
        click.echo(f"{mac} is not in LNID {lnid}: nothing changed (revision {ans['revision']})")


@main.command()
@click.argument("mac")
@JSON
@api
def rm(mac: str, as_json: bool) -> None:
    """Remove MAC from every LNID and unbind its port (the VM is gone)."""
    ans = client().rm(mac)
    if as_json:
        emit(ans)
    elif ans["changed"]:
        click.echo(f"removed {mac} from every LNID (revision {ans['revision']})")
    else:
        click.echo(f"{mac} is not registered: nothing changed (revision {ans['revision']})")


@main.command(short_help="Migrate MAC to another end host, keeping its LNIDs.")
@click.argument("mac")
@click.argument("host", required=False)
@click.option("--port", metavar="NAME", help="The vNIC's port on the new host, if known.")
@click.option("--external", is_flag=True, help="The MAC now lives outside every end host.")
@JSON
@api
def move(mac: str, host: str | None, port: str | None, external: bool, as_json: bool) -> None:
    """Migrate registered MAC to end host HOST, keeping its LNIDs (paper §3.6.3).

    Only the source and destination hosts' tables change; the port binding moves.
    """
    if external == (host is not None):
        raise click.UsageError("give HOST, or --external (not both)")
    if external and port is not None:
        raise click.UsageError("an --external MAC has no --port")
    ans = client().move(mac, host, port, external=external)
    if as_json:
        emit(ans)
    elif ans["changed"]:
        click.echo(f"moved {mac} {_where(host, port).replace('on host', 'to host')} (revision {ans['revision']})")
    else:
        click.echo(f"{mac} is already {_where(host, port)}: nothing changed (revision {ans['revision']})")


@main.command(short_help="Show the LNID table: MAC, LNIDs, host, port, binding state.")
@click.option("--host", metavar="H", help="Only the vNICs placed on host H.")
@click.option("--lnid", metavar="L", help="Only members of LNID L (an integer or `global`).")
@click.option("--mac", metavar="M", help="Only MAC M.")
@JSON
@api
def show(host: str | None, lnid: str | None, mac: str | None, as_json: bool) -> None:
    """Show the manager's LNID table: each MAC, its LNIDs, where it lives and whether it is enforced.

    HOST is the end host whose virtual switch holds the vNIC (`external`: outside every
    host, e.g. a router); PORT the kernel port the host's agent bound it to (else the port
    the registration named, `-` if none); STATE `bound`, `unbound: <why>`, `host down` (the
    host's agent is not connected), `pending` (not reported yet) or `external`; ADDRESSES
    the addresses the vNIC holds (a VIP marked `(shared)`, then its roles `router`,
    `dhcp_server`), or `unguarded` for a vNIC without any (MAC-only isolation).
    Filters combine; an unknown --host exits 3.
    """
    manager = client()
    rows = manager.macs(host, lnid, mac)
    if host is not None and not rows and host not in {h["name"] for h in manager.hosts()}:
        fail("not_found", f"unknown host {host!r}", EXIT_NOT_FOUND)
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no MAC matches" if host or lnid or mac else "no MAC is registered")
        return
    table(("MAC", "LNIDS", "HOST", "PORT", "STATE", "ADDRESSES"), [_mac_row(r) for r in rows])


def _mac_row(r: MacRow) -> tuple[str, ...]:
    """One row of `show`; the binding fields are optional (a manager that does not send them yet)."""
    row: dict[str, Any] = dict(r)
    port = row.get("bound_port") or r["port"] or "-"
    where = "external" if r["external"] else (r["host"] or "-")
    return (r["mac"], _lnids(r["lnids"]), where, port, str(row.get("state") or "-"), addresses_cell(r))


def addresses_cell(r: MacRow) -> str:
    """`show`'s ADDRESSES: the addresses (a VIP marked `(shared)`) and roles, or `unguarded`."""
    if "addresses" not in r:
        return "-"  # a manager from before addresses
    shared = set(r.get("shared", ()))
    words = [a + ("(shared)" if a in shared else "") for a in r.get("addresses", ())]
    words += [role for role in ("router", "dhcp_server") if r.get(role)]
    if not r.get("addresses"):
        return "unguarded" + (" " + ",".join(words) if words else "")
    return ",".join(words)


@main.command(short_help="List end hosts: connected, vNICs, revision applied/due, in sync.")
@JSON
@api
def hosts(as_json: bool) -> None:
    """List end hosts and whether their agents enforce the latest table.

    CONNECTED: the agent's feed is open. DUE: the last revision that changed the host's
    table; APPLIED: the last one its agent reported enforcing; LAG: DUE - APPLIED.
    IN-SYNC: connected, nothing pending and the agent's last apply succeeded: `yes`, `yes, N
    unbound` (N registered vNICs it could not bind: see `hostvlan show --host`), `no: <the
    agent's error>` (it retries with backoff), `no (lag N)` or `no`.
    """
    rows = client().hosts()
    if as_json:
        emit(rows)
        return
    if not rows:
        click.echo("no host is registered (add one with `hostvlan host add NAME`)")
        return
    yn = {True: "yes", False: "no"}
    table(
        ("NAME", "CONNECTED", "VNICS", "APPLIED", "DUE", "LAG", "IN-SYNC"),
        [
            (
                h["name"],
                yn[h["connected"]],
                str(h["vnics"]),
                str(h["revision_applied"]),
                str(h["revision_due"]),
                str(h["lag"]),
                in_sync(h),
            )
            for h in rows
        ],
    )


def in_sync(h: HostInfo) -> str:
    """`yes`, `yes, N unbound`, `no: <the agent's error>`, `no (lag N)` or `no`; `unbound` and
    `error` are optional (a manager that does not send them yet)."""
    row: dict[str, Any] = dict(h)
    if h["in_sync"]:
        unbound = int(row.get("unbound") or 0)
        return f"yes, {unbound} unbound" if unbound else "yes"
    if row.get("error"):
        return f"no: {row['error']}"
    return f"no (lag {h['lag']})" if h["lag"] > 0 else "no"


@main.command(short_help="Why can (not) SRC_MAC reach DST? ALLOW/DROP and the reason.")
@click.argument("src_mac")
@click.argument("dst")
@JSON
@api
def trace(src_mac: str, dst: str, as_json: bool) -> None:
    """Explain whether a frame from SRC_MAC reaches DST ("why can't A reach B?").

    DST is a registered MAC or HOST:PORT. Prints ALLOW or DROP and the tenant filter's
    reason, from the manager's model: the frame passes iff its source MAC shares an LNID
    with the destination port (or either is `global`); unknown sources and unbound ports
    are dropped (fail closed). The source line says whether the source is guarded (its
    addresses, which what it sends must carry) or `unguarded` (registered without any).
    """
    t = client().trace(src_mac, dst)
    if as_json:
        emit(t)
        return
    click.echo(f"{'ALLOW' if t['allow'] else 'DROP'}: {t['reason']}")
    row: dict[str, Any] = dict(t)
    guard = ""
    if "src_guarded" in row:
        addrs = row.get("src_addresses") or []
        guard = f"; addresses {', '.join(addrs)}" if row["src_guarded"] else "; unguarded: MAC-only"
    click.echo(f"  from {t['src']} (LNIDs {_lnids(t['src_lnids'])}{guard})")
    if "host" in t:
        port = t.get("port") or "-"  # none: the destination vNIC is not bound (the reason says why)
        to = f"{t.get('dst_mac')} on {t['host']}:{port} (LNIDs {_lnids(t.get('dst_lnids', []))})"
    else:
        to = t["dst"]
    click.echo(f"  to   {to}")


@main.group()
def host() -> None:
    """End hosts known to the manager, and their agents' tokens."""


@host.command("add")
@click.argument("name")
@JSON
@api
def host_add(name: str, as_json: bool) -> None:
    """Register end host NAME and print its agent's token (shown only once).

    Start the host's agent (control daemon) with this token: it can read only NAME's
    partial LNID table and report NAME's status.
    """
    ans = client().add_host(name)
    _token_out(ans, as_json, "added (revision {revision}); its agent's token (shown only once):")


def _token_out(ans: Any, as_json: bool, what: str) -> None:
    """Print a host's new token: JSON, or a line saying what happened then the token alone."""
    if as_json:
        emit(ans)
        return
    click.echo(f"host {ans['name']} " + what.format(revision=ans["revision"]))
    click.echo(ans["token"])


@host.command("token")
@click.argument("name")
@click.option("--rotate", is_flag=True, help="Rotate the token (what `host token` always does; say it to be explicit).")
@JSON
@api
def host_token(name: str, rotate: bool, as_json: bool) -> None:
    """Give host NAME a new token; the old one stops working and its open feeds end.

    A host's token is never shown again after it is made: this always rotates it. Write the
    new one to the agent's --token-file.
    """
    ans = client().rotate_host_token(name)
    _token_out(ans, as_json, "has a new token (revision {revision}); the old one no longer works:")
    if not rotate and not as_json:
        click.echo(f"note: the token of host {name} was rotated (`host token --rotate` says so)", err=True)


@host.command("rm")
@click.argument("name")
@JSON
@api
def host_rm(name: str, as_json: bool) -> None:
    """Remove end host NAME; refused while vNICs are registered on it (`rm` or `move` them first)."""
    revision = client().remove_host(name)
    if as_json:
        emit({"removed": name, "revision": revision})
        return
    click.echo(f"host {name} removed (revision {revision})")
