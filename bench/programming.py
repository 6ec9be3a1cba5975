"""Data-path programming latency of the Linux-bridge filter at the paper's table size.

Measures, in a throw-away namespace: a cold install of a host view of N entries
(model sync + one nftables transaction), a full resync by a restarted agent (read-back,
diff, nothing to change), and single changes (one remote MAC joining/leaving an LNID,
one port bound/unbound), each one transaction.

    sudo .venv/bin/python bench/programming.py [--macs 8192] [--changes 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from hostvlan.datapath.nft_bridge import NftBridgeFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName, int_to_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns


def worst_case(macs: int, lnids: int, ports: int) -> FilterState:
    """Table 1's worst host: `macs` MACs over `lnids` LNIDs, `ports` bound ports, an uplink."""
    entries: dict[Mac, frozenset[Lnid]] = {}
    bindings: dict[PortName, PortBinding] = {}
    for i in range(macs):
        entries[int_to_mac(0x02_FE_00_00_00_00 + i)] = frozenset({Lnid(1 + i % lnids)})
    for k in range(ports):
        mac = int_to_mac(0x02_FE_00_00_00_00 + k)  # the first `ports` MACs are local VMs
        bindings[PortName(f"vnet{k}")] = PortBinding(PortName(f"vnet{k}"), mac)
    uplink = int_to_mac(0x0E_00_00_00_00_01)
    entries[uplink] = frozenset({GLOBAL})
    bindings[PortName("uplink0")] = PortBinding(PortName("uplink0"), uplink, uplink=True)
    return FilterState(entries, bindings)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--macs", type=int, default=8192)
    ap.add_argument("--lnids", type=int, default=128)
    ap.add_argument("--ports", type=int, default=126)
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    prefix = netns.new_prefix()
    ns = f"{prefix}-prog"
    state = worst_case(args.macs, args.lnids, args.ports)
    out: dict[str, object] = {"macs": args.macs, "lnids": args.lnids, "ports": args.ports}
    netns.create(ns)
    try:
        with netns.inside(ns):
            nft = Nft()
        f = NftBridgeFilter(nft)
        t = time.perf_counter()
        f.sync(state)
        rep = f.apply()
        out["install_ms"] = (time.perf_counter() - t) * 1000
        out["install_elements"] = rep.elements
        resync = []
        for _ in range(5):
            g = NftBridgeFilter(nft)
            t = time.perf_counter()
            g.sync(state)
            rep = g.apply()
            resync.append((time.perf_counter() - t) * 1000)
            assert rep.elements == 0, rep
        out["resync_ms_median"] = statistics.median(resync)
        entry, bind = [], []
        remote = int_to_mac(0x02_FE_00_00_00_00 + args.macs - 1)
        base = state.entries[remote]
        for i in range(args.changes):
            lnids = base | {Lnid(2 + i % (args.lnids - 1))} if i % 2 == 0 else base
            t = time.perf_counter()
            f.set_entry(remote, lnids)
            f.apply()
            entry.append((time.perf_counter() - t) * 1000)
            port = PortName("vnet0")
            t = time.perf_counter()
            if i % 2 == 0:
                f.unbind(port)
            else:
                f.bind(state.bindings[port])
            f.apply()
            bind.append((time.perf_counter() - t) * 1000)
        out["change_entry_ms"] = {"median": statistics.median(entry), "p99": pct(entry, 0.99)}
        out["change_binding_ms"] = {"median": statistics.median(bind), "p99": pct(bind, 0.99)}
        nft.close()
    finally:
        netns.sweep(prefix)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
