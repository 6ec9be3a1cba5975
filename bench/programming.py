"""Data-path programming latency of each back end, at any table size (the filter alone).

The same measurement `hostvlan bench` runs at each table size (hostvlan.bench.datapath):
in a throw-away namespace, a cold install of a worst-case host view of N entries (model
sync + one transaction: nftables batch or OpenFlow bundle), a full resync by a restarted
agent (a new filter object, same state: nothing to change), a full audit (every element
read back, once), and single changes (a remote MAC joining/leaving an LNID, a port
bound/unbound), each one transaction.

    sudo .venv/bin/python bench/programming.py [--backend bridge|ovs|macvtap|all] [--macs 8192] [--changes 200]
"""

from __future__ import annotations

import argparse
import json
import sys

from hostvlan.bench.datapath import programming


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="all", choices=["all", "bridge", "ovs", "macvtap"])
    ap.add_argument("--macs", type=int, default=8192)
    ap.add_argument("--lnids", type=int, default=128)
    ap.add_argument("--ports", type=int, default=126)
    ap.add_argument("--changes", type=int, default=200)
    ap.add_argument("--resyncs", type=int, default=5)
    args = ap.parse_args()
    backends = ["bridge", "ovs", "macvtap"] if args.backend == "all" else [args.backend]
    results = []
    for b in backends:
        print(f"measuring {b} ...", file=sys.stderr)
        results.append(
            programming(b, args.macs, lnids=args.lnids, ports=args.ports, changes=args.changes, resyncs=args.resyncs)
        )
    print(json.dumps({"macs": args.macs, "lnids": args.lnids, "ports": args.ports, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
