"""Data-path programming latency of each back end at the paper's table size.

Measures, in a throw-away namespace: a cold install of a host view of N entries
(model sync + one transaction: nftables batch or OpenFlow bundle), a full resync by a
restarted agent (digest check: nothing to change), a full audit (every element read
back), and single changes (one remote MAC joining/leaving an LNID, one port
bound/unbound), each one transaction.

    sudo .venv/bin/python bench/programming.py [--backend bridge|ovs|macvtap|all] [--macs 8192] [--changes 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from hostvlan.datapath.base import TenantFilter
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.datapath.nft_bridge import NftBridgeFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.datapath.ovs import OvsFilter
from hostvlan.datapath.ovsdb import OvsDb
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName, int_to_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.ovsd import OvsDaemons


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


def factory(backend: str, ns: str, stack: ExitStack) -> Callable[[], TenantFilter]:
    """A maker of fresh filters (an agent and its restarts) for `backend` in namespace `ns`."""
    if backend == "ovs":
        daemons = OvsDaemons(ns, Path(f"/tmp/hvbench-{ns}"))
        stack.callback(daemons.stop)
        daemons.start()
        db = OvsDb(daemons.tools.db_remote)
        stack.callback(db.close)
        db.ensure_bridge("br0", datapath_type="netdev")
        return lambda: OvsFilter("br0", daemons.tools, db)
    with netns.inside(ns):
        nft = Nft()
    stack.callback(nft.close)
    cls = MacvtapFilter if backend == "macvtap" else NftBridgeFilter
    return lambda: cls(nft)


def measure(backend: str, args: argparse.Namespace) -> dict[str, object]:
    prefix = netns.new_prefix()
    ns = f"{prefix}-prog"
    state = worst_case(args.macs, args.lnids, args.ports)
    out: dict[str, object] = {"backend": backend}
    netns.create(ns)
    try:
        with ExitStack() as stack:
            make = factory(backend, ns, stack)
            f = make()
            t = time.perf_counter()
            f.sync(state)
            rep = f.apply()
            out["install_ms"] = (time.perf_counter() - t) * 1000
            out["install_elements"] = rep.elements
            resync, audit = [], []
            for _ in range(5):
                g = make()
                t = time.perf_counter()
                g.sync(state)
                rep = g.apply()
                resync.append((time.perf_counter() - t) * 1000)
                assert rep.elements == 0, rep
                t = time.perf_counter()
                rep = g.audit()
                audit.append((time.perf_counter() - t) * 1000)
                assert rep.elements == 0, rep
            out["resync_ms_median"] = statistics.median(resync)
            out["audit_ms_median"] = statistics.median(audit)
            entry, bind = [], []
            remote = int_to_mac(0x02_FE_00_00_00_00 + args.macs - 1)
            base = state.entries[remote]
            port = PortName("vnet0")
            for i in range(args.changes):
                lnids = base | {Lnid(2 + i % (args.lnids - 1))} if i % 2 == 0 else base
                t = time.perf_counter()
                f.set_entry(remote, lnids)
                f.apply()
                entry.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                if i % 2 == 0:
                    f.unbind(port)
                else:
                    f.bind(state.bindings[port])
                f.apply()
                bind.append((time.perf_counter() - t) * 1000)
            out["change_entry_ms"] = {"median": statistics.median(entry), "p99": pct(entry, 0.99)}
            out["change_binding_ms"] = {"median": statistics.median(bind), "p99": pct(bind, 0.99)}
    finally:
        netns.sweep(prefix)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="all", choices=["all", "bridge", "ovs", "macvtap"])
    ap.add_argument("--macs", type=int, default=8192)
    ap.add_argument("--lnids", type=int, default=128)
    ap.add_argument("--ports", type=int, default=126)
    ap.add_argument("--changes", type=int, default=200)
    args = ap.parse_args()
    backends = ["bridge", "ovs", "macvtap"] if args.backend == "all" else [args.backend]
    out = {"macs": args.macs, "lnids": args.lnids, "ports": args.ports, "results": []}
    for b in backends:
        print(f"measuring {b} ...", file=sys.stderr)
        out["results"].append(measure(b, args))  # type: ignore[attr-defined]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
