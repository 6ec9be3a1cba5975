"""CPU nanoseconds per frame that the Linux-bridge tenant filter adds, configurations alternating.

End-to-end ratios (sockperf, iperf3) on a 2-vCPU VM move by several percent between runs;
this measures the filter's own cost directly. In a throw-away namespace: a bridge with two
tap ports (vNIC A sends to vNIC B, both in LNID 1) and 126 idle bound ports, the host view
filled to the paper's worst case (8,192 entries over 128 LNIDs). A small C program
(frame_cost.c, compiled with gcc) writes frames into tap A and reads them from tap B; the
bridge's whole path runs in its context, so its CPU time per frame is the path's cost.
Configurations, alternating every round (order flipped each round):

  none     the plain bridge (B's MAC pinned to its port by a static FDB entry in every
           configuration, so no configuration floods)
  hook     an empty accepting nftables chain on the bridge's forward hook: the floor of
           any netfilter design
  closed   the default bridge back end (with the address guard's program, A unguarded: one lookup):
           send check by locked ports, receive filter a tc/eBPF
           program on each port's egress, and the closing part (`bridge.closing`): netfilter
           chains that close every unbound port (prerouting/forward/output policy drop,
           `@open accept`) + the tcx-ingress fast path (bound-to-bound unicast redirected: no hook)
  closedhooks  the same without the fast path: what the closing hooks alone cost
  guarded  `closed` with vNIC A guarded (issue 13: registered 10.0.0.1/32): the address guard
           (`bridge.guard`, bpf/hv_guard.c at tcx ingress) checks every frame A sends; run it
           with `--ip4` so the frames are IPv4 from A's address (what the guard parses)
  tc       the tc receive filter without the closing part (no netfilter hook, a new port
           open until an agent attaches its program)
  locked   locked ports, receive filter in nftables (one hook)
  nft      the send check in nftables too (a second hook)
  lockonly only the locked ports and sticky entries, no nftables: the send check's cost

    sudo .venv/bin/python bench/frame_cost.py [--rounds 9] [--frames 300000] [--len 64] [--ip4]

`--switch macvtap` measures the macvtap back end and its guard instead (frame_cost_macvtap.py:
wire to VM, VM to wire, VM to VM; `--configs` from its list).

Prints JSON: per configuration the median/min/max CPU ns per frame and the median of the
paired differences to `none`. A benchmark: it asserts nothing and never gates CI.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from hostvlan.bench.datapath import worst_case
from hostvlan.datapath.bridge.tc import BPFFS
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel.brports import BridgePorts
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.model.addresses import Addrs
from hostvlan.model.ids import Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns

A, B = Mac("52:54:00:00:00:01"), Mac("52:54:00:00:00:02")
HOOK_TABLE = {"family": "bridge", "name": "hvhook"}
HOOK_ONLY = [  # an empty accepting base chain on the forward hook
    {"add": {"table": HOOK_TABLE}},
    {
        "add": {
            "chain": {
                "family": "bridge",
                "table": "hvhook",
                "name": "forward",
                "type": "filter",
                "hook": "forward",
                "prio": -200,
                "policy": "accept",
            }
        }
    },
]
CONFIGS = ("none", "hook", "closed", "closedhooks", "guarded", "tc", "locked", "nft", "lockonly")


def state(macs: int, lnids: int, ports: int) -> FilterState:
    """Table 1's worst host (`bench.datapath.worst_case`, idle ports p0…) plus the two taps' vNICs in LNID 1."""
    base = worst_case(macs, lnids, ports, port_name="p")
    entries = {**base.entries, A: frozenset({Lnid(1)}), B: frozenset({Lnid(1)})}
    taps = {PortName(t): PortBinding(PortName(t), m) for t, m in (("tapa", A), ("tapb", B))}
    return FilterState(entries=entries, bindings={**base.bindings, **taps})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--frames", type=int, default=300_000)
    ap.add_argument("--len", type=int, default=64)
    ap.add_argument("--macs", type=int, default=8192)
    ap.add_argument("--lnids", type=int, default=128)
    ap.add_argument("--ports", type=int, default=126)
    ap.add_argument("--configs", default=None, help=f"default: {','.join(CONFIGS)} (bridge)")
    ap.add_argument("--switch", choices=("bridge", "macvtap"), default="bridge")
    ap.add_argument("--ip4", action="store_true", help="IPv4/UDP frames from 10.0.0.1 (A's registered address)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hostvlan-frame-cost-"))
    exe = tmp / "frame_cost"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(Path(__file__).with_name("frame_cost.c"))], check=True)
    if args.switch == "macvtap":
        sys.path.insert(0, str(Path(__file__).parent))
        from frame_cost_macvtap import run as run_macvtap

        print(json.dumps(run_macvtap(args, exe, tmp), indent=2))
        return 0
    configs = [c for c in (args.configs or ",".join(CONFIGS)).split(",") if c]
    ns = f"hvfc{secrets.token_hex(3)}-h"
    sh = ["ip", "netns", "exec", ns]

    def run(*argv: str) -> None:
        subprocess.run([*sh, *argv], check=True, capture_output=True)

    results: dict[str, list[float]] = {c: [] for c in configs}
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        with netns.iproute(ns) as ipr:
            ipr.link("add", ifname="br0", kind="bridge", br_stp_state=0, br_mcast_snooping=0)
            br = ipr.link_lookup(ifname="br0")[0]
            ipr.link("set", index=br, state="up")
            for i in range(args.ports):
                ipr.link("add", ifname=f"p{i}", kind="veth", peer=f"q{i}")
                ipr.link("set", index=ipr.link_lookup(ifname=f"p{i}")[0], master=br, state="up")
        for tap in ("tapa", "tapb"):
            run("ip", "tuntap", "add", tap, "mode", "tap")
            run("ip", "link", "set", tap, "master", "br0", "up")
        st = state(args.macs, args.lnids, args.ports)
        with netns.inside(ns):
            nft, ports = Nft(), BridgePorts()
        locked = build_backend(
            BackendSpec(send_check="locked", receive_filter="nft"), nft=nft, ports=ports, address_guard=False
        )
        counted = build_backend(BackendSpec(send_check="nft", receive_filter="nft"), nft=nft)
        tc_spec = BackendSpec(send_check="locked", receive_filter="tc", bpf_pins=BPFFS / ns)
        tc = build_backend(tc_spec, nft=nft, ports=ports, closing=False, address_guard=False)
        closed = build_backend(replace(tc_spec, bpf_pins=BPFFS / f"{ns}-c"), nft=nft, ports=ports)
        hooks = build_backend(
            replace(tc_spec, bpf_pins=BPFFS / f"{ns}-k"), nft=nft, ports=ports, fast_path=False, address_guard=False
        )
        guarded = build_backend(replace(tc_spec, bpf_pins=BPFFS / f"{ns}-g"), nft=nft, ports=ports)
        for f in (locked, counted, tc, closed, hooks):
            f.sync(st)
        guarded.sync(replace(st, addresses={A: Addrs(frozenset({ipaddress.ip_network("10.0.0.1/32")}))}))

        def clear() -> None:
            guarded.remove()
            closed.remove()
            hooks.remove()
            tc.remove()  # also detaches its programs, unpins its maps
            locked.remove()  # also unlocks every port, deletes the sticky entries
            counted.remove()
            nft.run([{"add": {"table": HOOK_TABLE}}, {"delete": {"table": HOOK_TABLE}}])
            run("bridge", "fdb", "replace", B, "dev", "tapb", "master", "static")

        def lockonly() -> None:
            ports.enforce({(PortName("tapa"), A), (PortName("tapb"), B)}, set())

        setups: dict[str, Callable[[], object]] = {
            "none": lambda: None,
            "hook": lambda: nft.run(HOOK_ONLY),
            "closed": closed.apply,
            "closedhooks": hooks.apply,
            "guarded": guarded.apply,
            "tc": tc.apply,
            "locked": locked.apply,
            "nft": counted.apply,
            "lockonly": lockonly,
        }
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            line = []
            for c in order:
                clear()
                setups[c]()
                out = subprocess.run(
                    [
                        *sh,
                        str(exe),
                        "tapa",
                        "tapb",
                        str(args.frames),
                        str(args.len),
                        A,
                        B,
                        *(["ip4"] if args.ip4 else []),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                results[c].append(float(out[0]))
                line.append(f"{c}={out[0]}")
            print(f"round {r + 1}/{args.rounds}: {' '.join(line)}", file=sys.stderr)
        clear()
        for f in (closed, hooks, tc, guarded):
            f.close()
        locked.close()
        counted.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for pins in (ns, f"{ns}-c", f"{ns}-k", f"{ns}-g", f"{ns}-c-guard", f"{ns}-g-guard"):
            shutil.rmtree(BPFFS / pins, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
    base = results.get("none")
    out: dict[str, object] = {
        "frames": args.frames,
        "len": args.len,
        "rounds": args.rounds,
        "entries": len(st.entries),
        "lnids": args.lnids,
        "idle_ports": args.ports,
        "ip4": args.ip4,
    }
    for c, v in results.items():
        row: dict[str, float] = {"median_ns": statistics.median(v), "min_ns": min(v), "max_ns": max(v)}
        if base is not None:
            row["added_ns_median"] = statistics.median([x - b for x, b in zip(v, base, strict=True)])
            row["ratio_median"] = statistics.median([x / b for x, b in zip(v, base, strict=True)])
        out[c] = row
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
