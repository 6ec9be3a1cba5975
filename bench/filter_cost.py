"""Per-frame cost of the Linux-bridge tenant filter versus a plain bridge (`none`).

Builds one testbed with two hosts side by side: `base` (plain bridge) and `hv`
(HostVLAN on nftables, table filled to the paper's worst case: 8,192 MACs over 128
LNIDs, 126 idle bound ports). Each host has two VMs in LNID 1; the workloads run VM to
VM on the same host, alternating the two configurations every round (machines are
noisy), and the JSON gives medians and paired ratios.

    sudo .venv/bin/python bench/filter_cost.py [--rounds 7] [--seconds 3]

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

TOPOLOGY = """
hosts:
  - name: base
    backend: none
    vms:
      - {name: a1, mac: "52:54:00:00:0a:01", lnids: [1]}
      - {name: a2, mac: "52:54:00:00:0a:02", lnids: [1]}
  - name: hv
    backend: bridge
    fill: {macs: MACS, lnids: LNIDS, ports: PORTS}
    vms:
      - {name: b1, mac: "52:54:00:00:0b:01", lnids: [1]}
      - {name: b2, mac: "52:54:00:00:0b:02", lnids: [1]}
"""


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
    args = ap.parse_args()
    text = TOPOLOGY.replace("MACS", str(args.macs)).replace("LNIDS", str(args.lnids)).replace("PORTS", str(args.ports))
    topo = parse_topology(text, "filter_cost")
    results: dict[str, dict[str, list[float]]] = {
        w: {"none": [], "bridge": []} for w in ("lat_us", "udp_gbps", "tcp_gbps")
    }
    with Testbed(topo) as tb:
        entries = len(tb.filter_state("hv").entries)
        pairs = {"none": ("a1", "a2"), "bridge": ("b1", "b2")}
        for r in range(args.rounds):
            order = ["none", "bridge"] if r % 2 == 0 else ["bridge", "none"]
            for cfg in order:
                c, s = pairs[cfg]
                results["lat_us"][cfg].append(sockperf(tb, c, s, args.seconds))
                results["udp_gbps"][cfg].append(iperf(tb, c, s, args.seconds, udp=True))
                results["tcp_gbps"][cfg].append(iperf(tb, c, s, args.seconds, udp=False))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    out: dict[str, object] = {"entries": entries, "rounds": args.rounds, "seconds": args.seconds}
    for w, by in results.items():
        ratios = [b / n for b, n in zip(by["bridge"], by["none"], strict=True)]
        out[w] = {cfg: {"median": statistics.median(v), "min": min(v), "max": max(v)} for cfg, v in by.items()} | {
            "paired_ratio_median": statistics.median(ratios)
        }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
