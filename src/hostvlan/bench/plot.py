"""Plot the growth curve of `hostvlan bench control-plane` runs at several sizes.

    python -m hostvlan.bench.plot OUT.png RUN.json [RUN.json …]

Each RUN.json is the `--out` file of one run. Four panels against the number of VMs:
load time, manager memory, per-command latency (p50/p99 of reg, move, LNID add), and
resync time after a manager restart. Needs matplotlib (`pip install -e .[bench]`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def load_runs(paths: list[str]) -> list[dict[str, Any]]:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    return sorted(runs, key=lambda r: r["vms"])


def plot(runs: list[dict[str, Any]], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vms = [r["vms"] for r in runs]
    labels = [f"{r['vms']:,} VMs\n{r['hosts']} hosts" for r in runs]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (a, b), (c, d) = axes

    a.plot(vms, [r["load_s"] for r in runs], "o-", label="load, applied by every agent")
    a.plot(vms, [r["load"]["acknowledged_s"] for r in runs], "s--", label="load, acknowledged (durable)")
    a.axhline(60, color="grey", ls=":", label="goal 60 s")
    a.set_ylabel("seconds")
    a.set_title("Load the data center (all agents connected)")

    b.plot(vms, [r["manager_rss_mib"] for r in runs], "o-", label="manager RSS")
    b.plot(vms, [r["db_mib"] for r in runs], "s--", label="SQLite database")
    b.axhline(4096, color="grey", ls=":", label="goal 4 GiB")
    b.set_ylabel("MiB")
    b.set_title("Memory and disk")

    for key, style in (("reg", "o"), ("move", "s"), ("lnid_add", "^")):
        c.plot(vms, [r[key]["p50_ms"] for r in runs], style + "--", label=f"{key} p50")
        c.plot(vms, [r[key]["p99_ms"] for r in runs], style + "-", label=f"{key} p99")
    c.axhline(100, color="grey", ls=":", label="goal p99 100 ms")
    c.set_ylabel("ms until every affected agent applied it")
    c.set_title("One command, everything connected")

    d.plot(vms, [r["restart_resync_s"] for r in runs], "o-", label="kill -9 → every agent resynced")
    d.plot(vms, [r["restart"]["manager_start_s"] for r in runs], "s--", label="manager start (table loaded)")
    d.axhline(60, color="grey", ls=":", label="goal 60 s")
    d.set_ylabel("seconds")
    d.set_title("Manager restart")

    for ax in (a, b, c, d):
        ax.set_xlim(0, max(vms) * 1.08)  # linear: linear growth shows as a straight line
        ax.set_ylim(bottom=0)
        ax.set_xticks(vms)
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("hostvlan control plane at scale (worst case: 128 VMs per host, each of another tenant of 64)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    plot(load_runs(argv[1:]), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
