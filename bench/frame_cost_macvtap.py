"""CPU nanoseconds per frame that the macvtap tenant filter and its guard add, configurations alternating.

`bench/frame_cost.py --switch macvtap` runs this (same method as the bridge: frame_cost.c writes
frames and reads them back in one process; the whole path runs in its context). In a throw-away
namespace: a veth `wire` is the uplink (the macvtaps' lower device), its peer `wirep` the far
end of the cable (a packet socket on it sends frames from the wire and receives those for it),
macvtaps `macvtap0` (vNIC A) and `macvtap1`
(vNIC B) in bridge mode on it, opened through private nodes of their character devices as QEMU
opens /dev/tapN; the host view at the paper's worst case (8,192 entries over 128 LNIDs, 126
idle bound ports), A, B and the external EXT behind the wire in LNID 1. Configurations:

  none       plain macvtaps, no nftables
  guardonly  the guard alone (`macvtap_guard`: the prefix-hook chains on macvtap* that close
             every unbound macvtap, one `iifname/oifname @ports` lookup per frame and direction):
             what the closing hooks cost
  filter     the tenant filter without the guard (per-port chains: `--no-macvtap-guard`)
  guarded    the default: filter + guard
  nolog      `guarded` without its drop rules' log rules (issue 15's drop events, `nft_table.logged`):
             the layout before them; they sit on the drop path only, so this should equal `guarded`

Paths: `w2v` wire → A (EXT → A), `v2w` A → wire (A → EXT), `v2v` A → B. Prints JSON: per
(configuration, path) the median/min/max CPU ns per frame and the medians of the per-round
differences and ratios to `none` on that path. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import secrets
import shutil
import statistics
import subprocess
import sys
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

from hostvlan.bench.datapath import worst_case
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.vmtap import private_tap_node

A, B = Mac("52:54:00:00:00:01"), Mac("52:54:00:00:00:02")
EXT = Mac("02:aa:00:00:00:01")
WIRE, WIRE_MAC = "wire", Mac("02:00:00:00:0f:01")
CONFIGS = ("none", "guardonly", "filter", "guarded", "nolog")
PATHS = ("w2v", "v2w", "v2v")


def state(macs: int, lnids: int, ports: int) -> FilterState:
    base = worst_case(macs, lnids, ports, port_name="p")
    one = frozenset({Lnid(1)})
    entries = {**base.entries, A: one, B: one, EXT: one, WIRE_MAC: frozenset({GLOBAL})}
    bindings = dict(base.bindings)
    bindings[PortName("macvtap0")] = PortBinding(PortName("macvtap0"), A)
    bindings[PortName("macvtap1")] = PortBinding(PortName("macvtap1"), B)
    bindings[PortName(WIRE)] = PortBinding(PortName(WIRE), WIRE_MAC, uplink=True)
    return FilterState(entries=entries, bindings=bindings)


def run(args: Namespace, exe: Path, tmp: Path) -> dict[str, object]:
    configs = [c for c in args.configs.split(",") if c] if args.configs else list(CONFIGS)
    ns = f"hvfm{secrets.token_hex(3)}-h"
    sh = ["ip", "netns", "exec", ns]
    results: dict[tuple[str, str], list[float]] = {(c, p): [] for c in configs for p in PATHS}
    st = state(args.macs, args.lnids, args.ports)
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for conf in ("all", "default"):  # no stray frame on the cable
            subprocess.run([*sh, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1"], check=True)
        with netns.iproute(ns) as ipr:
            ipr.link("add", ifname=WIRE, kind="veth", peer=f"{WIRE}p", address=WIRE_MAC)
            wire = ipr.link_lookup(ifname=WIRE)[0]
            ipr.link("set", index=ipr.link_lookup(ifname=f"{WIRE}p")[0], state="up")
            ipr.link("set", index=wire, state="up")
            nodes = {}
            for i, mac in enumerate((A, B)):
                port = f"macvtap{i}"
                ipr.link("add", ifname=port, kind="macvtap", link=wire, macvtap_mode="bridge", address=mac)
                idx = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=idx, flags=0x1 | 0x200, change=0x1 | 0x200)  # up, allmulticast
                nodes[mac] = str(private_tap_node(ns, port, idx, tmp / f"tap-{port}"))
        with netns.inside(ns):
            nft = Nft()
            filt = build_backend(BackendSpec(kind="macvtap"), guard=False)
            guarded = build_backend(BackendSpec(kind="macvtap"))
        for f in (filt, guarded):
            f.sync(st)

        def clear() -> None:
            filt.remove()
            guarded.remove()

        def guard_only() -> None:  # both tables, then the filter's gone: the guard's table alone
            guarded.apply()
            nft.run([{"delete": {"table": {"family": "netdev", "name": "hostvlan"}}}])

        def no_log() -> None:  # the default, then its log rules deleted (listed by table name: nft 1.0.6 can)
            guarded.apply()
            items = nft.list("table netdev hostvlan").get("nftables", [])
            logs = [i["rule"] for i in items if "rule" in i and any("log" in e for e in i["rule"].get("expr", []))]
            t = {"family": "netdev", "table": "hostvlan"}
            nft.run([{"delete": {"rule": {**t, "chain": r["chain"], "handle": r["handle"]}}} for r in logs])

        setups: dict[str, Callable[[], object]] = {
            "none": lambda: None,
            "guardonly": guard_only,
            "filter": filt.apply,
            "guarded": guarded.apply,
            "nolog": no_log,
        }
        far = f"@{WIRE}p"
        legs = {"w2v": (far, nodes[A], EXT, A), "v2w": (nodes[A], far, A, EXT), "v2v": (nodes[A], nodes[B], A, B)}
        for r in range(args.rounds):
            order = configs if r % 2 == 0 else configs[::-1]
            line = []
            for c in order:
                clear()
                setups[c]()
                for path in PATHS:
                    src_dev, dst_dev, src, dst = legs[path]
                    cmd = [*sh, str(exe), src_dev, dst_dev, str(args.frames), str(args.len), src, dst]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    if "stall" in out.stderr:
                        print(f"{c}/{path}: {out.stderr.strip()}", file=sys.stderr)
                    results[(c, path)].append(float(out.stdout.split()[0]))
                    line.append(f"{c}/{path}={out.stdout.split()[0]}")
            print(f"round {r + 1}/{args.rounds}: {' '.join(line)}", file=sys.stderr)
        clear()
        filt.close()
        guarded.close()
        nft.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, object] = {
        "switch": "macvtap",
        "frames": args.frames,
        "len": args.len,
        "rounds": args.rounds,
        "entries": len(st.entries),
        "lnids": args.lnids,
        "idle_ports": args.ports,
    }
    for (c, path), v in results.items():
        base = results.get(("none", path))
        row: dict[str, float] = {"median_ns": statistics.median(v), "min_ns": min(v), "max_ns": max(v)}
        if base:
            row["added_ns_median"] = statistics.median([x - b for x, b in zip(v, base, strict=True)])
            row["ratio_median"] = statistics.median([x / b for x, b in zip(v, base, strict=True)])
        out[f"{c}/{path}"] = row
    return out


if __name__ == "__main__":
    sys.exit("run it as: bench/frame_cost.py --switch macvtap")
