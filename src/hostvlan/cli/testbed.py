"""`hostvlan testbed …` and `hostvlan demo`: the emulated data center on this machine (root).

The testbed modules are imported when a command runs (they pull in pyroute2 and the back ends).
"""

from __future__ import annotations

import sys
from typing import Any

import click

from hostvlan.cli.common import EXIT_CONFLICT, EXIT_NOT_FOUND, emit, fail, main, need_root
from hostvlan.model.ids import InvalidValue


@main.group()
def testbed() -> None:
    """The emulated data center: hosts, VMs and a physical switch in network namespaces."""


def _check_prefix(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not (value.isalnum() and len(value) <= 12):
        raise click.BadParameter("prefix must be 1-12 letters or digits")
    return value


@testbed.command("up")
@click.argument("topology", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the testbed as JSON (VM namespaces, MACs, IPs).")
@click.option("--prefix", callback=_check_prefix, help="Name prefix for every namespace (default: a fresh hv<6 hex>).")
def testbed_up(topology: str, as_json: bool, prefix: str | None) -> None:
    """Build TOPOLOGY (a YAML file), program every host's filter, and leave it running.

    Remove it with `hostvlan testbed down`. An invalid file fails naming the line, and
    nothing is created; a failure while building removes what was built. A --prefix in use
    (a testbed that is up, or namespaces of that prefix) is refused (exit 4) and the running
    testbed is left as it is.
    """
    from hostvlan.testbed.build import Testbed
    from hostvlan.testbed.record import PrefixInUse
    from hostvlan.testbed.topology import TopologyError, load_topology

    need_root()
    try:
        topo = load_topology(topology)
    except TopologyError as exc:
        raise click.ClickException(str(exc)) from None
    tb = Testbed(topo, prefix=prefix, record=True)
    try:
        tb.up()
    except PrefixInUse as exc:
        fail("conflict", str(exc), EXIT_CONFLICT)
    if as_json:
        emit(tb.to_json())
        return
    click.echo(f"testbed {tb.prefix} is up ({len(tb.hosts)} hosts, {len(tb.vms)} VMs, {len(tb.external)} external)")
    for h in tb.hosts.values():
        click.echo(f"  host {h.name:<12} backend {h.backend:<7} netns {h.netns}")
    for vm in tb.vms.values():
        where = f"netns {vm.netns}" if vm.netns else f"domain {vm.domain}"  # a libvirt guest: no netns
        click.echo(f"  vm   {vm.name:<12} {vm.mac}  {vm.ip:<14} {where}")
    for e in tb.external.values():
        click.echo(f"  ext  {e.name:<12} {e.mac}  {e.ip:<14} netns {e.netns}")
    click.echo(f"try: hostvlan testbed exec VM -- ping IP   |   remove: hostvlan testbed down --prefix {tb.prefix}")


def _describe(rec: dict[str, Any]) -> str:
    return f"{rec.get('prefix')}: {len(rec.get('hosts', {}))} hosts, {len(rec.get('vms', {}))} VMs"


@testbed.command("down")
@click.option("--prefix", callback=_check_prefix, help="Remove this testbed.")
@click.option("--all", "everything", is_flag=True, help="Remove every testbed started by `testbed up`.")
def testbed_down(prefix: str | None, everything: bool) -> None:
    """Remove a testbed started by `testbed up` (idempotent).

    Without --prefix: the one testbed that is up; when several are, nothing is removed, they
    are listed and the command exits 2 (give --prefix, or --all to remove them all).
    """
    from hostvlan.testbed.record import down_recorded, recorded

    if prefix is not None and everything:
        raise click.UsageError("give --prefix or --all, not both")
    need_root()
    if prefix is None and not everything:
        recs = recorded()
        if len(recs) > 1:
            listing = "\n".join("  " + _describe(r) for r in recs)
            raise click.UsageError(f"{len(recs)} testbeds are up; pass --prefix P (or --all):\n{listing}")
        prefix = str(recs[0].get("prefix")) if recs else None
        if prefix is None:
            click.echo("nothing to remove")
            return
    gone = down_recorded(prefix)
    click.echo(f"removed {len(gone)} network namespaces" if gone else "nothing to remove")


@testbed.command("list")
@click.option("--json", "as_json", is_flag=True)
def testbed_list(as_json: bool) -> None:
    """List testbeds left running by `testbed up`."""
    from hostvlan.testbed.record import recorded

    recs = recorded()
    if as_json:
        emit(recs)
        return
    for r in recs:
        click.echo(_describe(r))
    if not recs:
        click.echo("no testbed is up")


@testbed.command("check")
@click.option("--prefix", help="Which testbed (default: the only one up).")
@click.option("--json", "as_json", is_flag=True)
def testbed_check(prefix: str | None, as_json: bool) -> None:
    """Send real frames from every endpoint of a running testbed and compare with the model.

    Exits 1 when any frame crossed LNIDs, a same-LNID frame went missing, or a forged
    frame was delivered; 3 when no such testbed is up; 2 when several are and no --prefix.
    """
    from hostvlan.testbed.build import from_record
    from hostvlan.testbed.check import run_check
    from hostvlan.testbed.record import recorded

    need_root()
    recs = [r for r in recorded() if "topology" in r and (prefix is None or r["prefix"] == prefix)]
    if not recs:
        fail("not_found", f"testbed {prefix} is not up" if prefix else "no testbed is up", EXIT_NOT_FOUND)
    if len(recs) > 1:
        listing = "\n".join("  " + _describe(r) for r in recs)
        raise click.UsageError(f"{len(recs)} testbeds are up; pass --prefix P:\n{listing}")
    tb = from_record(recs[0])
    rep = run_check(tb)
    from hostvlan.testbed.guestcheck import check_guests  # libvirt guests, from inside

    grep = check_guests(tb, forged=True)
    if as_json:
        out = {**rep.summary(), "leaks": rep.leaks, "misses": rep.misses, "forged": rep.forged_delivered}
        if grep.reach:
            out["guests"] = {**grep.summary(), "wrong": grep.wrong, "forged": grep.forged_answered}
        emit(out)
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in rep.summary().items()))
        for line in rep.leaks + rep.misses + rep.forged_delivered:
            click.echo("  " + line)
        if grep.reach:
            click.echo("guests: " + " ".join(f"{k}={v}" for k, v in grep.summary().items()))
            for line in grep.wrong + grep.forged_answered:
                click.echo("  " + line)
    sys.exit(0 if rep.ok and grep.ok else 1)


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
    """Run the paper's Fig. 7 scenario end to end on real namespaces, explain it, tear down.

    Fig. 7 plus a `global` external router: the broadcast matrix, pings, an LNID joined at
    run time, forged source MACs, then the address guard: a VM's forged ARP reply and NA
    fail to poison the router's neighbour cache (drops counted), and ARP/ND for a registered
    peer is answered on the host (docs/address-guard.md).
    """
    from hostvlan.demo import run_demo
    from hostvlan.demo_guests import run_demo_guests

    need_root()
    try:
        ok = run_demo_guests(topology) if guests == "libvirt" else run_demo(topology)
    except InvalidValue as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if ok else 1)
