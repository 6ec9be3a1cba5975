"""The bench's cells: which configurations, workloads and paths one testbed measures (`plan`), and
the main cell's run on a real testbed (manager, agents, filters filled through the API).
The size sweep's cells run in `sweep.py`."""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostvlan.bench import benchnet
from hostvlan.bench.options import CONFIGS, FILTERED, SHAPE, SWEEP_WORKLOADS, WEB, Options
from hostvlan.bench.stats import Progress, summarize
from hostvlan.bench.workloads import Ledger, Servers, estimate, measure
from hostvlan.testbed.build import Testbed


@dataclass
class Cell:
    """A set of configurations, workloads and paths measured in one testbed."""

    label: str
    configs: list[str]  # every host of the testbed
    workloads: list[str]
    paths: list[str]
    macs: int
    port_lnids: int
    ext_configs: list[str] = field(default_factory=list)
    vm_configs: list[str] | None = None  # None: every host but vxlan

    def cases(self, path: str) -> list[str]:
        """Configurations measured on `path`, in CONFIGS order (pairs adjacent)."""
        if path == "ext":
            return [c for c in self.configs if c in self.ext_configs]
        return [c for c in self.configs if c != "vxlan" and (self.vm_configs is None or c in self.vm_configs)]

    def loads(self, path: str) -> list[str]:
        return [w for w in self.workloads if path == "ext" or w not in WEB]

    def measurements(self) -> int:
        return sum(len(self.cases(p)) * len(self.loads(p)) for p in self.paths)

    def round_est(self, seconds: int) -> float:
        return sum(len(self.cases(p)) * estimate(w, seconds) for p in self.paths for w in self.loads(p))

    def build_est(self, direct: bool = False) -> float:
        filled = sum(1 for c in self.configs if c in FILTERED)
        pairs = SHAPE.fill_ports * self.port_lnids * self.macs / SHAPE.fill_lnids
        if direct:  # the filter class, no manager, no agent
            return 1.5 + self.macs * 50e-6 + pairs * 18e-6
        return 3.0 + 1.5 * len(self.configs) + filled * (self.macs * 60e-6 + pairs * 20e-6)


def run_cell(cell: Cell, opts: Options, progress: Progress, ledger: Ledger) -> dict[str, Any]:
    """Build the cell's testbed (through the manager and agents), then measure every round."""
    t = time.monotonic()
    external = "ext" in cell.paths
    topo = benchnet.topology(cell.configs, cell.macs, cell.port_lnids, external)
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        p: {w: {c: [] for c in cell.cases(p)} for w in cell.loads(p)} for p in cell.paths
    }
    web = "ext" in cell.paths and any(w in WEB for w in cell.workloads)
    out: dict[str, Any] = {"macs": cell.macs, "port_lnids": cell.port_lnids, "configs": cell.configs}
    with ExitStack() as stack:
        tb = Testbed(topo)
        ledger.prefixes.append(tb.prefix)
        stack.enter_context(tb)
        if "vxlan" in cell.configs and external:
            benchnet.setup_vxlan(tb)
        benchnet.offloads_off(tb)
        out["entries"] = {c: len(tb.filter_state(c).entries) for c in cell.configs if c in FILTERED}
        tmp = Path(tempfile.mkdtemp(prefix="hvbench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        servers: dict[str, Servers] = {}
        for c in cell.configs:
            vm = tb.vms[f"{c}-2"]
            servers[c] = Servers(vm.netns, vm.ip, tmp / c, web)
            stack.callback(servers[c].close)
        out["build_s"] = round(time.monotonic() - t, 2)
        progress.step(f"{cell.label}: testbed up, {out['entries'] or 'no filter'} entries", time.monotonic() - t)
        for r in range(opts.rounds):
            t = time.monotonic()
            for path in cell.paths:
                order = cell.cases(path) if r % 2 == 0 else cell.cases(path)[::-1]
                for w in cell.loads(path):
                    for c in order:
                        if path == "vm":
                            client = tb.vms[f"{c}-1"].netns
                        else:
                            client = tb.external["vtep" if c == "vxlan" else "ext"].netns
                        samples[path][w][c].append(measure(w, client, servers[c], opts.seconds, ledger))
            progress.step(f"{cell.label}: round {r + 1}/{opts.rounds}", time.monotonic() - t)
    out["paths"] = {p: {w: summarize(by, w) for w, by in ws.items()} for p, ws in samples.items()}
    return out


def sweep_points(opts: Options) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    """(table size, LNIDs per idle port) of the sweep, and those skipped (too many pairs)."""
    points, skipped = [], []
    for pl in opts.port_lnids:
        for macs in opts.sizes:
            pairs = SHAPE.fill_ports * pl * macs // SHAPE.fill_lnids  # (idle port, MAC of one of its LNIDs)
            if pairs > SHAPE.max_pairs:
                skipped.append({"macs": macs, "port_lnids": pl, "pairs": pairs, "why": f"> {SHAPE.max_pairs:,} pairs"})
            else:
                points.append((macs, pl))
    return points, skipped


def plan(opts: Options) -> tuple[Cell, list[Cell], list[dict[str, Any]]]:
    """The main testbed (every configuration, workload and path at the first size) and the
    sweep's cells (none/bridge, latency and UDP, VM to VM, each size x LNIDs per port)."""
    hosts = [c for c in CONFIGS if c in opts.configs or ("ext" in opts.paths and c in opts.ext_configs)]
    ext = list(opts.ext_configs) if "ext" in opts.paths else []
    main = Cell(
        "main",
        hosts,
        list(opts.workloads),
        list(opts.paths),
        opts.sizes[0],
        opts.port_lnids[0],
        ext,
        list(opts.configs),
    )
    points, skipped = sweep_points(opts)
    sweep_w = [w for w in SWEEP_WORKLOADS if w in opts.workloads]
    if "vm" in opts.paths and {"none", "bridge"} <= set(opts.configs):  # the main testbed's point
        points = [pt for pt in points if pt != (main.macs, main.port_lnids)]
    cells = [Cell(f"sweep {m:,}x{pl}", ["none", "bridge"], sweep_w, ["vm"], m, pl) for m, pl in points if sweep_w]
    return main, cells, skipped
