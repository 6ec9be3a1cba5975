"""Plots of the benchmarks. Needs matplotlib (`pip install -e .[bench]`).

    python -m hostvlan.bench.plot OUT.png RUN.json [RUN.json …]       # control plane
    python -m hostvlan.bench.plot --datapath OUTDIR RESULT.json        # data path

Control plane: each RUN.json is the `--out` file of one `hostvlan bench control-plane`
run. Four panels against the number of VMs: load time, manager memory, per-command
latency (p50/p99 of reg, move, LNID add), and resync time after a manager restart.

Data path (`hostvlan bench`, which also draws them): in the style of the paper's
Figs. 8-10, bar charts per configuration normalized to the plain bridge (`none` = 1; the
whiskers are the 25th-75th percentiles of the rounds, normalized the same way), one panel per path:
datapath-latency.png, datapath-throughput.png (UDP 1,470 B and TCP), datapath-web.png
(ab and wrk); and datapath-table-size.png: the bridge filter's paired overhead against
table size, one line per number of LNIDs per port.
"""

from __future__ import annotations

import json
import statistics
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


LABELS = {
    "none": "plain\nbridge",
    "bridge": "HostVLAN\nbridge",
    "ovs-none": "OVS",
    "ovs": "OVS +\nHostVLAN",
    "macvtap-none": "macvtap",
    "macvtap": "macvtap +\nHostVLAN",
    "vxlan": "VXLAN",
}
TITLES = {
    "lat_us": "UDP latency (one way, p50)",
    "udp_gbps": "UDP 1,470 B at saturation",
    "tcp_gbps": "TCP throughput",
    "ab_rps": "web: ab, 1,024 requests",
    "wrk_rps": "web: wrk",
}
PATH_TITLES = {"vm": "VM to VM, one host", "ext": "external client -> VM"}
FIGURES = {
    "datapath-latency.png": ["lat_us"],
    "datapath-throughput.png": ["udp_gbps", "tcp_gbps"],
    "datapath-web.png": ["ab_rps", "wrk_rps"],
}


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 1000 else f"{v:.3g}"


def _quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], q[2]


def plot_datapath(result: dict[str, Any], outdir: Path) -> list[Path]:
    """The data-path figures of one `hostvlan bench` result; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    outdir.mkdir(parents=True, exist_ok=True)
    main = result["main"]
    paths = list(main["paths"])
    written = []
    for name, workloads in FIGURES.items():
        ws = [w for w in workloads if any(w in main["paths"][p] for p in paths)]
        cols = [p for p in paths if any(w in main["paths"][p] for w in ws)]  # web: the ext path only
        if not ws:
            continue
        fig, axes = plt.subplots(len(ws), len(cols), figsize=(max(9.0, 5.5 * len(cols)), 3.6 * len(ws)), squeeze=False)
        for i, w in enumerate(ws):
            for j, path in enumerate(cols):
                ax = axes[i][j]
                per = main["paths"][path].get(w, {}).get("configs", {})
                base = per.get("none", {}).get("median")
                cfgs = [c for c in per if base]
                vals = [per[c]["median"] / base for c in cfgs] if base else []
                quart = [_quartiles(per[c]["samples"]) for c in cfgs]
                lo = [max(0.0, v - q[0] / base) for q, v in zip(quart, vals, strict=True)] if base else []
                hi = [max(0.0, q[1] / base - v) for q, v in zip(quart, vals, strict=True)] if base else []
                colors = ["#bbbbbb" if c.endswith("none") else "#d62728" if c == "vxlan" else "#1f77b4" for c in cfgs]
                ax.bar(range(len(cfgs)), vals, yerr=[lo, hi], color=colors, capsize=3)
                ax.axhline(1.0, color="black", lw=0.6)
                ax.set_xticks(range(len(cfgs)))
                ax.set_xticklabels([f"{LABELS.get(c, c)}\n{_num(per[c]['median'])}" for c in cfgs], fontsize=7)
                unit = "latency" if w == "lat_us" else "throughput"
                ax.set_ylabel(f"{unit} / plain bridge")
                ax.set_title(f"{TITLES.get(w, w)}\n{PATH_TITLES.get(path, path)}", fontsize=9)
                ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(
            "hostvlan data path, normalized to the plain Linux bridge "
            "(labels: medians; whiskers: 25th-75th percentile of the rounds)\n"
            "grey: no filter, blue: HostVLAN filter, red: VXLAN overlay",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(outdir / name, dpi=110)
        plt.close(fig)
        written.append(outdir / name)
    sweep = result.get("sweep", [])
    if sweep:
        ws = [w for w in ("lat_us", "udp_gbps") if any(w in s["paths"]["vm"] for s in sweep)]
        fig, axes = plt.subplots(1, len(ws), figsize=(5.5 * len(ws), 4), squeeze=False)
        for ax, w in zip(axes[0], ws, strict=True):
            for pl in sorted({s["port_lnids"] for s in sweep}):
                pts = sorted(
                    (s["entries"], s["paths"]["vm"][w]["ratios"]["bridge/none"]["overhead_pct"])
                    for s in sweep
                    if s["port_lnids"] == pl and "bridge/none" in s["paths"]["vm"].get(w, {}).get("ratios", {})
                )
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                ys = [y for _, y in pts]
                ax.plot(xs, ys, "o-", label=f"{pl} LNID{'s' if pl > 1 else ''} per port")
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xscale("log")
            ax.set_xlabel("entries in the host's table")
            ax.set_ylabel("overhead vs plain bridge, %")
            ax.set_title(TITLES.get(w, w) + ", VM to VM", fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(
            "HostVLAN bridge filter: per-frame overhead against table size (median of paired ratios)", fontsize=10
        )
        fig.tight_layout()
        fig.savefig(outdir / "datapath-table-size.png", dpi=110)
        plt.close(fig)
        written.append(outdir / "datapath-table-size.png")
    return written


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--datapath":
        for path in plot_datapath(json.loads(Path(argv[2]).read_text()), Path(argv[1])):
            print(path)
        return 0
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    plot(load_runs(argv[1:]), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
