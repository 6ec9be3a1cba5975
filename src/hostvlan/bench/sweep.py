"""The size sweep's cells: a plain bridge (`none`) beside one with HostVLAN's bridge filter, the
filter installed directly through the back-end factory (no manager, no agent), measured VM to VM."""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hostvlan.bench.cells import Cell
from hostvlan.bench.options import SHAPE, Options
from hostvlan.bench.programming import filter_factory, program_timed, worst_case
from hostvlan.bench.stats import Progress, summarize
from hostvlan.bench.workloads import Ledger, Servers, ip_in, measure, run_argv
from hostvlan.model.ids import Lnid, Mac, PortName, tap_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.wiring import add_idle_ports, new_ns


# ----- the size sweep: the bridge filter programmed directly ------------------------------------
def run_direct_cell(cell: Cell, opts: Options, progress: Progress, ledger: Ledger) -> dict[str, Any]:
    """A sweep point: a plain bridge (`none`) and one with HostVLAN's bridge filter (`bridge`),
    two VMs each, the filter installed directly by the agent's own `TenantFilter` class with
    the worst-case table of `cell.macs` entries and 126 idle ports in `cell.port_lnids` LNIDs
    each (registering 819,200 MACs through the manager and an agent takes minutes here; the
    main testbed covers the control plane). VM to VM, latency and UDP saturation."""
    t = time.monotonic()
    prefix = netns.new_prefix()
    ledger.prefixes.append(prefix)
    samples: dict[str, dict[str, list[float]]] = {w: {c: [] for c in cell.configs} for w in cell.workloads}
    out: dict[str, Any] = {"macs": cell.macs, "port_lnids": cell.port_lnids, "configs": cell.configs}
    with ExitStack() as stack:
        stack.callback(netns.sweep, prefix)
        tmp = Path(tempfile.mkdtemp(prefix="hvbench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        servers: dict[str, Servers] = {}
        clients: dict[str, str] = {}
        for i, cfg in enumerate(cell.configs):
            host = f"{prefix}-h-{cfg}"
            new_ns(host)
            ip_in(host, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
            ip_in(host, "link", "set", "br0", "up")
            vms: dict[Mac, PortName] = {}
            for k in (1, 2):
                vm, mac, port = f"{prefix}-v-{cfg}-{k}", Mac(f"52:54:00:00:{i + 1:02x}:{k:02x}"), f"vnet{k - 1}"
                new_ns(vm)
                ip_in(host, "link", "add", port, "address", tap_mac(mac), "type", "veth",
                    "peer", "name", "eth0", "address", mac, "netns", vm)  # fmt: skip
                ip_in(host, "link", "set", port, "master", "br0", "up")
                ip_in(vm, "addr", "add", f"10.203.{i}.{k}/24", "dev", "eth0")
                ip_in(vm, "link", "set", "eth0", "up")
                run_argv(["ip", "netns", "exec", vm, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"])
                vms[mac] = PortName(port)
                if k == 1:
                    clients[cfg] = vm
                else:
                    servers[cfg] = Servers(vm, f"10.203.{i}.{k}", tmp / cfg, web=False)
                    stack.callback(servers[cfg].close)
            if cfg == "bridge":
                state = worst_case(cell.macs, port_lnids=cell.port_lnids, port_name="idle")
                add_idle_ports(host, [b.port for b in state.bindings.values() if not b.uplink])
                lnids = frozenset({Lnid(SHAPE.bench_lnid), *(Lnid(1 + j) for j in range(cell.port_lnids - 1))})
                entries = dict(state.entries) | {m: lnids for m in vms}
                bindings = dict(state.bindings) | {p: PortBinding(p, m) for m, p in vms.items()}
                make = filter_factory("bridge", host, stack)
                full = FilterState(entries, bindings)
                out["programming"] = program_timed(make, full, SHAPE.bench_lnid, changes=10)
                out["entries"] = len(entries)
        netns.wait_operstate_up(netns.owned(prefix))
        out["build_s"] = round(time.monotonic() - t, 2)
        progress.step(f"{cell.label}: filter installed, {out.get('entries')} entries", time.monotonic() - t)
        for r in range(opts.rounds):
            t = time.monotonic()
            order = cell.configs if r % 2 == 0 else cell.configs[::-1]
            for w in cell.workloads:
                for c in order:
                    samples[w][c].append(measure(w, clients[c], servers[c], opts.seconds, ledger))
            progress.step(f"{cell.label}: round {r + 1}/{opts.rounds}", time.monotonic() - t)
    out["paths"] = {"vm": {w: summarize(by, w) for w, by in samples.items()}}
    return out
