"""`hostvlan …`: the command line.

Management commands (reg, unreg, …) will talk to the manager's HTTP API only; the
`testbed` and `demo` commands drive the emulated data center on this machine (root).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click

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
    run(
        Path(db),
        parsed,
        tls_cert=Path(tls_cert) if tls_cert else None,
        tls_key=Path(tls_key) if tls_key else None,
        admin_token_file=Path(admin_token_file) if admin_token_file else None,
        ready_file=Path(ready_file) if ready_file else None,
        log_level=log_level,
    )


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
        click.echo(f"  vm   {vm.name:<12} {vm.mac}  {vm.ip:<14} netns {vm.netns}")
    for e in tb.external.values():
        click.echo(f"  ext  {e.name:<12} {e.mac}  {e.ip:<14} netns {e.netns}")
    click.echo("try: ip netns exec NETNS ping IP   |   remove: hostvlan testbed down")


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
    if as_json:
        _emit({**rep.summary(), "leaks": rep.leaks, "misses": rep.misses, "forged": rep.forged_delivered})
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in rep.summary().items()))
        for line in rep.leaks + rep.misses + rep.forged_delivered:
            click.echo("  " + line)
    sys.exit(0 if rep.ok else 1)


# ----- demo -----------------------------------------------------------------------------------
@main.command()
@click.option("--topology", type=click.Path(dir_okay=False), help="Another topology (default: the paper's Fig. 7).")
def demo(topology: str | None) -> None:
    """Run the paper's Fig. 7 scenario end to end on real namespaces, explain it, tear down."""
    from hostvlan.demo import run_demo

    _need_root()
    try:
        ok = run_demo(topology)
    except InvalidValue as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(0 if ok else 1)


from hostvlan.agent.command import agent as agent_command  # noqa: E402

main.add_command(agent_command)


if __name__ == "__main__":  # pragma: no cover
    main()
