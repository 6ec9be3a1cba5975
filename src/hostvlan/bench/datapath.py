"""`hostvlan bench` (data path): what the tenant filter costs per frame, and what programming it costs.

The main measurements run on the testbed (`hostvlan.testbed.build.Testbed`: namespaces,
veths, the real manager and agents), side by side, configurations alternating within every
round (order flipped every round, pairs adjacent: the machine is noisy), and the result is
JSON: per configuration median/min/max, and the median of the paired ratios
filtered/unfiltered (samples of the same round).

Configurations (one host each in one testbed; every VM in the bench's own LNID; filtered
hosts filled through the API to the first --sizes value, Table 1's 128 LNIDs, 126 idle ports):
  none           plain Linux bridge (the paper treats VLAN tagging as this)
  bridge         HostVLAN on the Linux bridge, table filled to `macs` entries
  ovs-none       Open vSwitch, NORMAL action (userspace datapath: this kernel has no OVS module)
  ovs            Open vSwitch with HostVLAN's flows, filled
  macvtap-none   macvtap devices, no filter (VM reached through the testbed's QEMU stand-in)
  macvtap        macvtap with HostVLAN's filter, filled
  vxlan          a plain bridge whose VMs reach the outside over a VXLAN overlay: the
                 host's uplink is a VTEP (underlay 10.202.0.0/24, MTU 1600 so the overlay
                 keeps 1,500), the far VTEP is an external endpoint behind the physical
                 switch. Only on the `ext` path: VM to VM on one host it is `none`.
Pairs (filtered/unfiltered): bridge/none, ovs/ovs-none, macvtap/macvtap-none, vxlan/none.

Paths: `vm` (VM to VM on one host; every config but vxlan) and `ext` (client on an
external endpoint behind the physical switch, server in the VM; `ext_configs` only).
Workloads (servers stay up for the whole run; the web ones on the ext path only):
  lat_us     one-way UDP latency, µs, 50th percentile: sockperf ping-pong, 64 B (lat_udp;
             sockperf sleeps 2 s after its warm-up: ~3.4 s per sample)
  udp_gbps   UDP 1,470-byte datagrams at saturation, received rate (iperf3 -u -b 0)
  tcp_gbps   TCP throughput, received (iperf3)
  ab_rps     web: ApacheBench, 1,024 requests (8 concurrent) of a 1,024-byte static file
             served by lighttpd in the VM; requests/s
  wrk_rps    web: wrk, 1 thread, 16 connections, same file; requests/s

The size sweep (table size x LNIDs per idle port): the `none`/`bridge` pair, latency and
UDP saturation VM to VM (the per-frame cost indicators). Its first point is the main
testbed's; the others are small namespaces of their own whose bridge filter is installed
directly by the agent's back end (built by the back-end factory; timed: install, resync,
single changes), because registering 819,200 MACs through the manager and an agent takes
minutes here. Points with more than `SHAPE.max_pairs` (idle port, MAC) pairs are skipped
and listed. Programming: install, restart resync, one audit and single changes of each back
end's filter at each size up to `SHAPE.prog_max`, in a throw-away namespace (no testbed, no agent).

The whole run holds /dev/cpu_dma_latency at 0 (`polling_idle`): idle vCPUs poll instead of
halting, or every request/response sample would mostly time the hypervisor waking a vCPU.
Every command is an argv list run inside the bench's own namespaces (removed at the end,
also on failure); nothing here is in a packet's path. A benchmark: it reports, never
asserts a number.

The jobs, one module each: `options` (the defaults, one frozen dataclass), `benchnet` (the
cells' topologies, through the topology module's types; VXLAN), `workloads` (servers and
clients), `stats` (summaries, progress), `cells` (the plan and the main testbed's cell),
`sweep` (the size sweep's directly programmed cells), `programming` (back-end programming,
timed); this module runs the suite and writes its JSON. No module keeps global state: a run's
bookkeeping is a `workloads.Ledger` passed along.
"""

from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostvlan.bench.cells import Cell, plan, run_cell, sweep_points
from hostvlan.bench.options import CONFIGS, EXT_CONFIGS, PAIRS, SHAPE, SWEEP_WORKLOADS, Options, quick, validate
from hostvlan.bench.programming import estimate as programming_estimate
from hostvlan.bench.programming import programming, worst_case
from hostvlan.bench.stats import Progress, mmss
from hostvlan.bench.sweep import run_direct_cell
from hostvlan.bench.workloads import Ledger, run_argv

__all__ = [
    "CONFIGS", "EXT_CONFIGS", "Cell", "Options", "machine", "plan", "programming", "quick", "run", "source",
    "sweep_points", "validate", "worst_case", "write",
]  # fmt: skip


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in ln
            ),
            "",
        )
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "mem_mib": mem,
        "loadavg": list(os.getloadavg()),
        "tools": {t: _version(t) for t in ("sockperf", "iperf3", "ab", "wrk", "lighttpd")},
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (the harness
    measures whatever back-end code is on disk when it starts)."""
    here = Path(__file__).resolve().parent
    try:
        commit = run_argv(["git", "-C", str(here), "rev-parse", "HEAD"], timeout=10).strip()
        dirty = bool(run_argv(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], timeout=10))
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return {}
    return {"commit": commit, "dirty": dirty}


def _version(tool: str) -> str:
    argv = {"ab": ["ab", "-V"], "lighttpd": ["lighttpd", "-v"], "sockperf": ["sockperf", "--version"]}
    try:
        res = subprocess.run(argv.get(tool, [tool, "--version"]), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0][:80] if text else ""


@contextmanager
def polling_idle() -> Iterator[bool]:
    """Hold a PM QoS request of 0 µs CPU wake-up latency (/dev/cpu_dma_latency, as tuned's
    latency-performance profile does) for the run: an idle vCPU then polls instead of halting.
    Without it, a request/response test on an otherwise idle VM measures the hypervisor's
    wake-up of a halted vCPU (~30 µs here), not the network path (~3-5 µs). Yields whether
    the request is held (False where the device is missing)."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        yield False
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield True
    finally:
        os.close(fd)  # closing the file drops the request


def run(opts: Options, stream: Any = sys.stderr) -> dict[str, Any]:
    """The whole suite; returns the JSON-able result. Progress goes to `stream`."""
    with polling_idle() as held:
        result = _run_suite(opts, stream)
    result["machine"]["cpu_dma_latency_us"] = 0 if held else None
    return result


def _run_suite(opts: Options, stream: Any) -> dict[str, Any]:
    validate(opts)
    ledger = Ledger()
    main, cells, skipped = plan(opts)
    steps = [main.build_est()] + [main.round_est(opts.seconds)] * opts.rounds
    for c in cells:
        steps += [c.build_est(direct=True)] + [c.round_est(opts.seconds)] * opts.rounds
    prog_jobs = [(b, m) for m in opts.sizes for b in opts.programming if m <= SHAPE.prog_max]
    steps += [programming_estimate(b, m, opts.changes) for b, m in prog_jobs]
    progress = Progress(steps, stream=stream)
    started = datetime.now(UTC)
    print(
        f"hostvlan bench: {len(steps)} steps, estimated {mmss(sum(steps))} "
        f"({opts.rounds} rounds x {main.measurements()} measurements on the main testbed, "
        f"{len(cells)} sweep testbeds, {len(prog_jobs)} programming runs)",
        file=stream,
        flush=True,
    )
    result: dict[str, Any] = {
        "kind": "hostvlan-bench-datapath",
        "command": opts.command,
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "source": source(),
        "options": {
            "rounds": opts.rounds,
            "seconds": opts.seconds,
            "configs": list(opts.configs),
            "ext_configs": list(opts.ext_configs),
            "workloads": list(opts.workloads),
            "paths": list(opts.paths),
            "sizes": list(opts.sizes),
            "port_lnids": list(opts.port_lnids),
            "fill": {"lnids": SHAPE.fill_lnids, "ports": SHAPE.fill_ports},
        },
        "pairs": {f: u for f, u in PAIRS.items() if f in opts.configs and u in opts.configs},
    }
    result["main"] = run_cell(main, opts, progress, ledger)
    sweep = []
    vm_main = result["main"]["paths"].get("vm", {})
    if "bridge" in result["main"].get("entries", {}) and "none" in vm_main.get(SWEEP_WORKLOADS[0], {}).get(
        "configs", {}
    ):
        sweep.append(
            {"macs": main.macs, "port_lnids": main.port_lnids, "entries": result["main"]["entries"]["bridge"],
             "build_s": result["main"]["build_s"], "programmed_by": "agent (main testbed)",
             "paths": {"vm": {w: v for w, v in vm_main.items() if w in SWEEP_WORKLOADS}}}
        )  # fmt: skip
    for c in cells:
        r = run_direct_cell(c, opts, progress, ledger)
        sweep.append({k: r[k] for k in ("macs", "port_lnids", "entries", "build_s", "programming", "paths")})
    result["sweep"] = sweep
    result["sweep_skipped"] = skipped
    progs = []
    for b, m in prog_jobs:
        t = time.monotonic()
        progs.append(programming(b, m, changes=opts.changes, ledger=ledger))
        progress.step(f"programming {b} at {m:,} entries", time.monotonic() - t)
    result["programming"] = progs
    result["programming_skipped"] = [
        {
            "backend": b,
            "macs": m,
            "why": f"> {SHAPE.prog_max:,} entries: minutes each here (the bridge's is in the sweep)",
        }
        for m in opts.sizes
        for b in opts.programming
        if m > SHAPE.prog_max
    ]
    result["duration_s"] = round(time.monotonic() - progress.t0, 1)
    result["spent_s"] = {w: round(v, 1) for w, v in ledger.spent.items()}
    result["netns_prefixes"] = list(ledger.prefixes)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def write(result: dict[str, Any], out_dir: Path) -> Path:
    """bench/results/datapath-<UTC>.json and latest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = result["started_utc"].replace("-", "").replace(":", "")
    path = out_dir / f"datapath-{stamp}.json"
    text = json.dumps(result, indent=2) + "\n"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path
