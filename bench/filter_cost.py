"""Per-frame cost of the tenant filter versus the same switch without it.

Builds one testbed with a host per configuration, side by side: each HostVLAN back end
(`bridge`, `ovs`, `macvtap`, table filled to the paper's worst case: 8,192 MACs over 128
LNIDs, 126 idle bound ports) and its unfiltered twin (`none` = plain Linux bridge,
`ovs-none` = Open vSwitch with NORMAL, `macvtap-none`). Each host has two VMs in LNID 1;
the workloads run VM to VM on the same host, alternating configurations every round
(machines are noisy), and the JSON gives medians and paired ratios filtered/unfiltered.
Note: macvtap VMs are reached through the testbed's Python QEMU stand-in, which
dominates that path's cost (the ratio still isolates the filter).

    sudo .venv/bin/python bench/filter_cost.py [--rounds 7] [--seconds 3] [--switches bridge,ovs,macvtap]

A benchmark, not a test: it asserts nothing and never gates CI.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hostvlan.testbed.build import Testbed
from hostvlan.testbed.topology import parse_topology

PAIRS = {"bridge": "none", "ovs": "ovs-none", "macvtap": "macvtap-none"}  # filtered -> same switch, no filter


def topology(backends: list[str], macs: int, lnids: int, ports: int) -> str:
    """One host per configuration, two VMs each in LNID 1; filtered hosts filled to the worst case."""
    lines = ["hosts:"]
    for i, b in enumerate(backends):
        lines += [f"  - name: {b}", f"    backend: {b}"]
        if b in PAIRS:
            lines.append(f"    fill: {{macs: {macs}, lnids: {lnids}, ports: {ports}}}")
        lines.append("    vms:")
        lines += [f'      - {{name: {b}-{k}, mac: "52:54:00:00:{i + 1:02x}:{k:02x}", lnids: [1]}}' for k in (1, 2)]
    return "\n".join(lines) + "\n"


def _ns(tb: Testbed, vm: str) -> list[str]:
    return ["ip", "netns", "exec", tb.vms[vm].netns]


@contextmanager
def server(argv: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(5)


def sockperf(tb: Testbed, client: str, srv: str, seconds: float) -> float:
    """Median one-way UDP latency (µs), sockperf ping-pong (lmbench lat_udp equivalent)."""
    ip = tb.vms[srv].ip
    with server([*_ns(tb, srv), "sockperf", "server", "-i", ip, "-p", "11111"]):
        out = (
            subprocess.run(
                [*_ns(tb, client), "sockperf", "ping-pong", "-i", ip, "-p", "11111", "-t", str(seconds), "-m", "64"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            + ""
        )
    m = re.search(r"percentile 50\.000 =\s+([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"sockperf output not understood: {out[-500:]}")
    return float(m.group(1))


def iperf(tb: Testbed, client: str, srv: str, seconds: float, udp: bool) -> float:
    """Received throughput in Gbit/s: UDP 1,470-byte datagrams at saturation, or TCP."""
    ip = tb.vms[srv].ip
    with server([*_ns(tb, srv), "iperf3", "-s", "-B", ip, "-p", "5201"]):
        argv = [*_ns(tb, client), "iperf3", "-c", ip, "-p", "5201", "-t", str(seconds), "-J"]
        if udp:
            argv += ["-u", "-b", "0", "-l", "1470"]
        res = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    end = res["end"]
    bps = end["sum"]["bits_per_second"] if udp else end["sum_received"]["bits_per_second"]
    if udp:  # received rate: what actually got through
        lost = end["sum"].get("lost_percent", 0.0)
        bps = bps * (1 - lost / 100.0)
    return float(bps) / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--macs", type=int, default=8192)
    ap.add_argument("--lnids", type=int, default=128)
    ap.add_argument("--ports", type=int, default=126)
    ap.add_argument("--switches", default="bridge,ovs,macvtap")
    ap.add_argument("--workloads", default="lat_us,udp_gbps,tcp_gbps")
    args = ap.parse_args()
    switches = [x for x in args.switches.split(",") if x]
    workloads = [w for w in args.workloads.split(",") if w]
    backends = [b for sw in switches for b in (sw, PAIRS[sw])]
    topo = parse_topology(topology(backends, args.macs, args.lnids, args.ports), "filter_cost")
    runs = {
        "lat_us": lambda c, s: sockperf(tb, c, s, args.seconds),
        "udp_gbps": lambda c, s: iperf(tb, c, s, args.seconds, udp=True),
        "tcp_gbps": lambda c, s: iperf(tb, c, s, args.seconds, udp=False),
    }
    results: dict[str, dict[str, list[float]]] = {w: {b: [] for b in backends} for w in workloads}
    with Testbed(topo) as tb:
        entries = {b: len(tb.filter_state(b).entries) for b in switches}
        for r in range(args.rounds):
            for sw in switches:
                pair = [sw, PAIRS[sw]] if r % 2 == 0 else [PAIRS[sw], sw]
                for w in workloads:
                    for b in pair:
                        results[w][b].append(runs[w](f"{b}-1", f"{b}-2"))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    out: dict[str, object] = {"entries": entries, "rounds": args.rounds, "seconds": args.seconds}
    for w, by in results.items():
        per: dict[str, object] = {
            b: {"median": statistics.median(v), "min": min(v), "max": max(v)} for b, v in by.items()
        }
        for sw in switches:
            ratios = [f / u for f, u in zip(by[sw], by[PAIRS[sw]], strict=True)]
            per[f"{sw}/{PAIRS[sw]}"] = {"paired_ratio_median": statistics.median(ratios)}
        out[w] = per
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
