"""`hostvlan bench …`: benchmarks of this machine (the bench modules are imported when one runs,
but for `hostvlan.bench.options`, the data-path bench's defaults)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from hostvlan.bench import options
from hostvlan.cli.common import emit, main


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


def _csv(values: tuple[object, ...]) -> str:
    return ",".join(str(v) for v in values)


D = options.DEFAULTS  # the data-path bench's defaults (hostvlan.bench.options)


@bench.command("data-path")
@click.option(
    "--rounds", type=int, default=D.rounds, show_default=True, help="Rounds; configurations alternate in each."
)
@click.option("--seconds", type=int, default=D.seconds, show_default=True, help="Seconds per timed measurement.")
@click.option("--configs", default=_csv(D.configs), show_default=True, help="Configurations (comma-separated).")
@click.option(
    "--ext-configs", default=_csv(D.ext_configs), show_default=True, help="Configurations also measured from outside."
)
@click.option(
    "--workloads", default=_csv(D.workloads), show_default=True, help="ab_rps/wrk_rps run on the ext path only."
)
@click.option(
    "--paths", default=_csv(D.paths), show_default=True, help="vm: VM to VM on one host; ext: external client."
)
@click.option("--sizes", default=_csv(D.sizes), show_default=True, help="Table sizes; the first is the main testbed's.")
@click.option(
    "--port-lnids", default=_csv(D.port_lnids), show_default=True, help="LNIDs per idle filled port (size sweep)."
)
@click.option(
    "--programming",
    "prog",
    default=_csv(D.programming),
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
        opts = options.quick()
    else:
        opts = options.Options(
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
        options.validate(opts)
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
    emit(result)


@bench.command("control-plane")
@click.option("--hosts", type=int, default=8192, show_default=True, help="End hosts (one simulated agent each).")
@click.option("--vms-per-host", type=int, default=128, show_default=True)
@click.option("--vms-per-tenant", type=int, default=64, show_default=True, help="VMs per tenant (LNID).")
@click.option("--batch-hosts", type=int, default=0, help="Hosts per bulk registration (default: one pod).")
@click.option("--addresses", is_flag=True, help="Register every VM with one IPv4 and one IPv6 address.")
@click.option("--regs", type=int, default=200, show_default=True, help="Single `reg` commands timed.")
@click.option("--moves", type=int, default=200, show_default=True, help="`move` commands timed.")
@click.option("--lnid-adds", type=int, default=200, show_default=True, help="LNIDs added to running VMs, timed.")
@click.option(
    "--sim-procs", type=int, default=2, show_default=True, help="Processes for the simulated agents (0: this one)."
)
@click.option("--workdir", type=click.Path(file_okay=False), help="Keep the manager's database and log here.")
@click.option("--out", type=click.Path(dir_okay=False), help="Also write the JSON result to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (progress goes to stderr).")
@click.option(
    "--store",
    type=click.Choice(["sqlite", "etcd"]),
    default="sqlite",
    show_default=True,
    help="etcd: run the SQLite configuration, then --managers replicas on a 3-member etcd cluster; ratios.",
)
@click.option("--managers", type=click.IntRange(1, 16), default=3, show_default=True, help="Replicas (--store etcd).")
def bench_control_plane(
    hosts: int,
    vms_per_host: int,
    vms_per_tenant: int,
    batch_hosts: int,
    addresses: bool,
    regs: int,
    moves: int,
    lnid_adds: int,
    sim_procs: int,
    workdir: str | None,
    out: str | None,
    as_json: bool,
    store: str,
    managers: int,
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
        addresses=addresses,
        regs=regs,
        moves=moves,
        lnid_adds=lnid_adds,
        sim_procs=sim_procs,
        workdir=workdir,
    )
    if store == "etcd":
        from hostvlan.bench.replicated import run_compare

        compared = run_compare(cfg, managers)
        if out:
            Path(out).write_text(json.dumps(compared, indent=2) + "\n")
        if as_json:
            emit(compared)
        else:
            for key in ("ratios", "goals", "sqlite_summary", "etcd_summary"):
                click.echo(f"{key}: {json.dumps(compared[key])}")
        return
    try:
        result = run(cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    if as_json:
        emit(result)
    else:
        for key in ("load_s", "manager_rss_mib", "db_mib", "view_entries_max", "views_correct", "reg_p50_ms"):
            click.echo(f"{key}: {result[key]}")
        for key in ("reg_p99_ms", "unaffected_bytes", "move_p99_ms", "restart_resync_s", "lost_acknowledged"):
            click.echo(f"{key}: {result[key]}")
