"""The daemons: `hostvlan manager` (the management server) and `hostvlan agent` (the control
daemon of one end host, run in its network namespace). Their modules are imported when one runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import click

from hostvlan.cli.common import main
from hostvlan.datapath.factory import BackendSpec
from hostvlan.model.ids import InvalidValue, parse_host

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


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
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    metavar="LEVEL",
    default="warning",
    show_default=True,
    help="critical, error, warning, info, debug or trace.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Logs on stderr as text, or as JSON lines (one object per record).",
)
@click.option(
    "--audit-log",
    type=click.Path(dir_okay=False),
    help="Append one JSON line per accepted or refused change here (default: DB.audit.jsonl).",
)
@click.option(
    "--backup",
    "backup_to",
    type=click.Path(dir_okay=False),
    help="Copy the database (consistent, also while a manager serves it) to this new file, and exit.",
)
@click.option(
    "--metrics-listen",
    "metrics_listens",
    multiple=True,
    metavar="[NETNS/]HOST:PORT",
    help="Serve Prometheus metrics (GET /metrics, no token) here, apart from the API (docs/observability.md); "
    "repeatable, like --listen.",
)
@click.option(
    "--max-body",
    type=click.IntRange(min=1),
    default=1 << 20,
    show_default=True,
    metavar="BYTES",
    help="Largest request body of a single call (413 above); /v1/batch takes up to 256 MiB or this.",
)
@click.option(
    "--require-addresses",
    is_flag=True,
    help="Refuse registrations without addresses (`reg ... --ip`) and taking a vNIC's last one: none unguarded.",
)
@click.option(
    "--store",
    "store_url",
    default="sqlite",
    show_default=True,
    metavar="STORE",
    help="sqlite (the --db file), or etcd://HOST:PORT[,HOST:PORT...] for replicas sharing an etcd cluster "
    "(--db then only names the default admin token file and audit log).",
)
@click.option("--etcd-cacert", type=click.Path(exists=True, dir_okay=False), help="CA of etcd's client certificate.")
@click.option("--etcd-cert", type=click.Path(exists=True, dir_okay=False), help="Client certificate for etcd.")
@click.option("--etcd-key", type=click.Path(exists=True, dir_okay=False), help="Private key of --etcd-cert.")
def manager(
    db: str,
    listens: tuple[str, ...],
    tls_cert: str | None,
    tls_key: str | None,
    admin_token_file: str | None,
    ready_file: str | None,
    log_level: str,
    log_format: str,
    audit_log: str | None,
    backup_to: str | None,
    max_body: int,
    metrics_listens: tuple[str, ...],
    require_addresses: bool,
    store_url: str,
    etcd_cacert: str | None,
    etcd_cert: str | None,
    etcd_key: str | None,
) -> None:
    """Run the management server: the authoritative LNID table and the agents' feeds.

    Every acknowledged command is durable (SQLite WAL, synchronous=FULL). On first start
    an admin token is created and its path printed; give it to the CLI with --token or
    HOSTVLAN_TOKEN.
    """
    from hostvlan.manager.server import Listen, backup_db, run

    if backup_to and store_url != "sqlite":
        raise click.UsageError("--backup copies a SQLite database; back etcd up with `etcdctl snapshot save FILE`")
    if backup_to:
        try:
            backup_db(Path(db), Path(backup_to))
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
        return
    if bool(tls_cert) != bool(tls_key):
        raise click.BadParameter("--tls-cert and --tls-key go together", param_hint="--tls-cert")
    try:
        parsed = [Listen.parse(x) for x in listens]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    try:
        metrics = [Listen.parse(x) for x in metrics_listens]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--metrics-listen") from None
    try:
        run(
            Path(db),
            parsed,
            tls_cert=Path(tls_cert) if tls_cert else None,
            tls_key=Path(tls_key) if tls_key else None,
            admin_token_file=Path(admin_token_file) if admin_token_file else None,
            ready_file=Path(ready_file) if ready_file else None,
            log_level=log_level.lower(),
            log_format=log_format,
            audit_log=Path(audit_log) if audit_log else None,
            max_body=max_body,
            metrics_listen=metrics,
            require_addresses=require_addresses,
            store=store_url,
            etcd_tls=(etcd_cacert, etcd_cert, etcd_key),
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("agent")
@click.option(
    "--manager",
    envvar="HOSTVLAN_MANAGER",
    help="Manager URL, or URL1,URL2,... of replicas to fail over between (or HOSTVLAN_MANAGER). "
    "Required unless --cleanup.",
)
@click.option(
    "--host", "host", help="This end host's name, as registered with `hostvlan host add`. Required unless --cleanup."
)
@click.option(
    "--token-file",
    envvar="HOSTVLAN_HOST_TOKEN_FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="File holding this host's token (or HOSTVLAN_HOST_TOKEN_FILE); read again before every retry, so a "
    "rotated token needs no restart. Beats --token.",
)
@click.option("--token", envvar="HOSTVLAN_HOST_TOKEN", help="This host's token (or HOSTVLAN_HOST_TOKEN).")
@click.option(
    "--cacert",
    envvar="HOSTVLAN_CACERT",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle to verify an HTTPS manager.",
)
@click.option(
    "--backend",
    type=click.Choice(["bridge", "ovs", "macvtap"]),
    default="bridge",
    show_default=True,
    help="The virtual switch whose tenant filter this agent programs: a Linux bridge, an Open vSwitch "
    "bridge (OpenFlow, fail-mode=secure), or the macvtap devices on the uplink. On each, a port no binding "
    "names (a new VM's tap or macvtap, also one added while no agent runs) is closed: it receives nothing "
    "and sends nothing until the agent binds it (macvtap: every device named macvtap*, by the guard, see "
    "--macvtap-guard).",
)
@click.option(
    "--macvtap-guard/--no-macvtap-guard",
    default=True,
    show_default=True,
    help="--backend macvtap only: close every macvtap* device no binding names, agent running or not, with "
    "two netdev chains on the device-name prefix macvtap (table `netdev hostvlan_guard`, Linux 6.16+; one "
    "more hook per frame and direction). While they exist, nft 1.0.6 hangs in `nft list ruleset`, `list "
    "tables` and `list counters` (list a table by name instead); the agent reads over nfnetlink and is not "
    "affected. Without the guard an unbound macvtap is closed only while it is down (the agent keeps it "
    "down; a macvtap raised while no agent runs is open).",
)
@click.option(
    "--send-check",
    type=click.Choice(["locked", "nft"]),
    default="locked",
    show_default=True,
    help="Linux bridge only: where the anti-spoofing check runs. `locked`: in the bridge itself (locked "
    "ports, one sticky static FDB entry per bound vNIC MAC; no cost per frame; with the default receive "
    "filter the closing part's fast path drops and counts forged frames first, else they go uncounted). "
    "`nft`: an nftables prerouting chain that counts forged frames per port, at the cost "
    "of one more netfilter hook per frame.",
)
@click.option(
    "--receive-filter",
    type=click.Choice(["tc", "nft"]),
    default=None,
    help="Linux bridge only: where the tenant receive filter runs. `tc` (the default with --send-check "
    "locked): a BPF program at each bridge port's tcx egress hook (one hash lookup per frame copy), "
    "nftables chains with policy drop that close every port no binding names (agent running or not), and "
    "a tcx-ingress fast path that hands VM-to-VM unicast to its port directly, so that path crosses no "
    "netfilter hook and costs less than the plain bridge. `nft` (the default with --send-check nft): "
    "the receive filter in nftables forward/output chains, at about three times the cost per frame.",
)
@click.option(
    "--bpf-pins",
    type=click.Path(file_okay=False),
    help="Where the tc receive filter pins its maps and programs: a directory under /run/hostvlan/bpf, a "
    "bpffs the agent mounts (default: one directory per network namespace).",
)
@click.option("--bridge", "bridge_name", default="br0", show_default=True, help="The OVS bridge (--backend ovs).")
@click.option(
    "--ovs-db",
    default="unix:/run/openvswitch/db.sock",
    show_default=True,
    help="OVSDB remote of the host's Open vSwitch (--backend ovs).",
)
@click.option(
    "--ovs-rundir",
    default="/run/openvswitch",
    show_default=True,
    help="Open vSwitch's run directory: the bridge's OpenFlow socket and ovs-vswitchd's control socket.",
)
@click.option(
    "--uplink",
    "uplinks",
    multiple=True,
    default=["uplink0"],
    show_default=True,
    help="The host's physical NIC port(s): NAME or NAME=MAC; bound as `global`. Repeatable.",
)
@click.option(
    "--audit-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between full read-backs of the data path that repair drift.",
)
@click.option("--ready-file", type=click.Path(dir_okay=False), help="Written once the agent runs.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines as plain text, or as one JSON object per line (time, level, logger, host, message).",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="Do not run: remove every piece of kernel state hostvlan created on this host for the back end the "
    "other options name (the nftables tables `hostvlan` of the bridge and netdev families with the bridge's "
    "closing chains, the macvtap guard's table `netdev hostvlan_guard`, hostvlan's tc programs at tcx "
    "egress and its fast path at tcx ingress, their BPF pins, the locked-port flags and sticky FDB entries "
    "of --backend bridge, the OVS flows in hostvlan's cookie range and its group on --bridge for --backend "
    "ovs), print what went, and exit. "
    "Nothing else is touched; the switch is left open (its defaults): stop the agent first, to uninstall.",
)
@click.option(
    "--metrics-listen",
    metavar="HOST:PORT",
    help="Serve Prometheus metrics (GET /metrics, no token) here, e.g. hostvlan_drops_total (docs/observability.md).",
)
@click.option(
    "--drops-interval",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds between two reads of the drop counters and events (reported to the manager); 0: never.",
)
@click.option("-v", "--verbose", count=True)
def agent(
    manager: str | None,
    host: str | None,
    token_file: str | None,
    token: str | None,
    cacert: str | None,
    backend: str,
    macvtap_guard: bool,
    send_check: str,
    receive_filter: str | None,
    bpf_pins: str | None,
    bridge_name: str,
    ovs_db: str,
    ovs_rundir: str,
    uplinks: tuple[str, ...],
    audit_interval: float,
    ready_file: str | None,
    log_format: str,
    cleanup: bool,
    metrics_listen: str | None,
    drops_interval: float,
    verbose: int,
) -> None:
    """Run the control daemon: follow this host's feed and program its tenant filter.

    Finds each local vNIC's port (libvirt tap: host MAC = guest MAC with first octet fe;
    macvtap: same MAC; Open vSwitch: Interface external_ids:attached-mac; or the port
    named at registration), binds it, and keeps the
    filter in step with the manager. On restart it keeps what the kernel enforces (never
    flushes) until the manager's snapshot arrives; a host with no filter yet gets it
    installed closed. If the manager is unreachable or rejects the token, the last view
    stays enforced; the token file is read again before every retry (rotation needs no
    restart). A failed apply, repair or audit is retried with backoff, and reported to the
    manager as out of sync meanwhile.
    """
    from hostvlan.agent.daemon import Agent, AgentConfig, uplinks_from_args
    from hostvlan.agent.logs import configure as configure_logs
    from hostvlan.datapath.base import DatapathError
    from hostvlan.datapath.factory import build_backend

    configure_logs(log_format, logging.WARNING - 10 * verbose, host or "-")
    try:
        spec = BackendSpec(
            kind=backend,
            send_check=send_check,
            receive_filter=receive_filter,
            bpf_pins=Path(bpf_pins) if bpf_pins else None,
            ovs_bridge=bridge_name,
            ovs_db=ovs_db,
            ovs_rundir=ovs_rundir,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not cleanup and (manager is None or host is None):
        raise click.UsageError("--manager and --host are required (unless --cleanup)")
    if os.geteuid() != 0:
        raise click.ClickException("the agent programs the kernel's virtual switch and needs root")
    if cleanup:
        _cleanup(spec)
        return
    assert manager is not None and host is not None
    if token_file:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise click.ClickException(f"cannot read the token file {token_file}: {exc}") from None
        if not token:
            raise click.ClickException(f"the token file {token_file} is empty")
    if not token:
        raise click.ClickException("no host token: pass --token-file or set HOSTVLAN_HOST_TOKEN")
    try:
        host_id = parse_host(host)
        ups = uplinks_from_args(uplinks)
    except (InvalidValue, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        filt = build_backend(spec, guard=macvtap_guard)
    except (DatapathError, ValueError) as exc:
        raise click.ClickException(f"cannot open the {backend} back end: {exc}") from None
    cfg = AgentConfig(
        manager=",".join(u.strip().rstrip("/") for u in manager.split(",")),
        host=host_id,
        token=token,
        token_file=Path(token_file) if token_file else None,
        uplinks=ups,
        cacert=cacert,
        audit_interval=audit_interval,
        ready_file=Path(ready_file) if ready_file else None,
        guard_macvtaps=backend == "macvtap",
        port_source=(lambda: filt.attached_ports() or {}) if filt.attached_ports() is not None else None,
        poll_ports=filt.poll_interval(),
        metrics_listen=metrics_listen,
        drops_interval=drops_interval,
    )
    try:
        asyncio.run(Agent(cfg, filt).run())
    except KeyboardInterrupt:
        pass
    finally:
        filt.close()


def _cleanup(spec: BackendSpec) -> None:
    """`--cleanup`: remove hostvlan's kernel state for `spec` and say what went."""
    from hostvlan.datapath.base import DatapathError
    from hostvlan.datapath.cleanup import clean_host

    try:
        removed = clean_host(spec)
    except (DatapathError, ValueError) as exc:
        raise click.ClickException(f"cleanup of the {spec.kind} back end failed: {exc}") from None
    for what in removed:
        click.echo(f"removed {what}")
    if not removed:
        click.echo("nothing of hostvlan's was left on this host")
