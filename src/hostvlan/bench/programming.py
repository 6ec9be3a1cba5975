"""Programming a back end's filter: install, restart resync, audit and single changes, timed
(in a throw-away namespace, no testbed and no agent; or on a sweep cell's bridge). Every back
end is built by `hostvlan.datapath.factory.build_backend`, inside its namespace."""

from __future__ import annotations

import shutil
import statistics
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from hostvlan.bench.options import SHAPE
from hostvlan.bench.stats import pct
from hostvlan.bench.workloads import Ledger, ip_in
from hostvlan.datapath.base import TenantFilter
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName, int_to_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.plan import BPFFS
from hostvlan.testbed.wiring import add_idle_ports


def program_timed(make: Callable[[], TenantFilter], state: FilterState, lnid: int, changes: int) -> dict[str, Any]:
    """Install `state` (timed), a restart's resync (a new filter, same state: timed), then
    `changes` single changes: a VM's MAC joins/leaves another LNID, an idle port is
    unbound/bound (each one transaction, timed). Leaves the filter as `state`."""
    f = make()
    t = time.perf_counter()
    f.sync(state)
    rep = f.apply()
    out: dict[str, Any] = {"install_ms": (time.perf_counter() - t) * 1000, "install_elements": rep.elements}
    g = make()
    t = time.perf_counter()
    g.sync(state)
    g.apply()
    out["resync_ms"] = (time.perf_counter() - t) * 1000
    mac = next(m for m, ls in state.entries.items() if Lnid(lnid) in ls)
    idle = next(b for b in state.bindings.values() if not b.uplink and not state.entries[b.mac] & {Lnid(lnid)})
    entry, bind = [], []
    for i in range(changes):
        t = time.perf_counter()
        g.set_entry(mac, state.entries[mac] | {Lnid(lnid + 1)} if i % 2 == 0 else state.entries[mac])
        g.apply()
        entry.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        g.unbind(idle.port) if i % 2 == 0 else g.bind(idle)
        g.apply()
        bind.append((time.perf_counter() - t) * 1000)
    if changes % 2:  # back to `state`
        g.set_entry(mac, state.entries[mac])
        g.bind(idle)
        g.apply()
    if changes:
        out["change_entry_ms"] = {"median": statistics.median(entry), "max": max(entry)}
        out["change_binding_ms"] = {"median": statistics.median(bind), "max": max(bind)}
    return out


# ----- programming (a throw-away namespace, no testbed) ------------------------------------------
def worst_case(
    macs: int,
    lnids: int = SHAPE.fill_lnids,
    ports: int = SHAPE.fill_ports,
    *,
    port_lnids: int = 1,
    port_name: str = "vnet",
) -> FilterState:
    """Table 1's worst host: `macs` MACs over `lnids` LNIDs, `ports` bound ports (the first
    `ports` MACs; port k in LNIDs k … k+port_lnids-1, round-robin), an uplink."""
    entries: dict[Mac, frozenset[Lnid]] = {}
    bindings: dict[PortName, PortBinding] = {}
    for i in range(macs):
        per = port_lnids if i < ports else 1
        entries[int_to_mac(0x02_FE_00_00_00_00 + i)] = frozenset(Lnid(1 + (i + j) % lnids) for j in range(per))
    for k in range(ports):
        mac = int_to_mac(0x02_FE_00_00_00_00 + k)  # the first `ports` MACs are local VMs
        bindings[PortName(f"{port_name}{k}")] = PortBinding(PortName(f"{port_name}{k}"), mac)
    uplink = int_to_mac(0x0E_00_00_00_00_01)
    entries[uplink] = frozenset({GLOBAL})
    bindings[PortName("uplink0")] = PortBinding(PortName("uplink0"), uplink, uplink=True)
    return FilterState(entries, bindings)


def filter_factory(backend: str, ns: str, stack: ExitStack) -> Callable[[], TenantFilter]:
    """A maker of fresh filters (an agent and its restarts) for `backend` in namespace `ns`,
    each built by the factory inside `ns` and closed with `stack`."""
    spec = BackendSpec(kind=backend, bpf_pins=BPFFS / ns)
    if backend == "ovs":
        from hostvlan.datapath.kernel.ovsdb import OvsDb
        from hostvlan.testbed.ovsd import OvsDaemons

        daemons = OvsDaemons(ns, Path(f"/tmp/hvbench-{ns}"))
        stack.callback(daemons.stop)
        daemons.start()
        spec = BackendSpec(
            kind="ovs", ovs_bridge="br0", ovs_db=daemons.tools.db_remote, ovs_rundir=daemons.tools.rundir
        )
        db = OvsDb(daemons.tools.db_remote)
        try:
            db.ensure_bridge("br0", datapath_type="netdev")
        finally:
            db.close()
    elif backend == "bridge":
        stack.callback(shutil.rmtree, BPFFS / ns, ignore_errors=True)

    def make() -> TenantFilter:
        with netns.inside(ns):
            f = build_backend(spec)
        stack.callback(f.close)
        return f

    return make


def programming(
    backend: str,
    macs: int,
    *,
    lnids: int = SHAPE.fill_lnids,
    ports: int = SHAPE.fill_ports,
    changes: int = 50,
    resyncs: int = 3,
    audit: bool = True,
    ledger: Ledger | None = None,
) -> dict[str, Any]:
    """Install (one transaction), restart resync (a new filter object syncs the same state:
    nothing to change), a full audit (once), and single changes (a remote MAC joins/leaves an
    LNID; a port is bound/unbound; each one transaction) of one back end."""
    prefix = netns.new_prefix()
    if ledger is not None:
        ledger.prefixes.append(prefix)
    ns = f"{prefix}-prog"
    state = worst_case(macs, lnids, ports)
    out: dict[str, Any] = {"backend": backend, "macs": macs}
    netns.create(ns)
    try:
        with ExitStack() as stack:
            if backend == "bridge":  # real ports: the tc filter keys its maps by their ifindex
                ip_in(ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
                add_idle_ports(ns, [b.port for b in state.bindings.values()])
            make = filter_factory(backend, ns, stack)
            f = make()
            t = time.perf_counter()
            f.sync(state)
            rep = f.apply()
            out["install_ms"] = (time.perf_counter() - t) * 1000
            out["install_elements"] = rep.elements
            resync = []
            for i in range(resyncs):
                g = make()
                t = time.perf_counter()
                g.sync(state)
                g.apply()
                resync.append((time.perf_counter() - t) * 1000)
                if i == 0 and audit:  # every element read back: slow at large sizes, so once
                    t = time.perf_counter()
                    g.audit()
                    out["audit_ms"] = (time.perf_counter() - t) * 1000
            out["resync_ms_median"] = statistics.median(resync)
            out["resyncs"] = resyncs
            entry, bind = [], []
            remote = int_to_mac(0x02_FE_00_00_00_00 + macs - 1)
            base = state.entries[remote]
            port = PortName("vnet0")
            for i in range(changes):
                joined = base | {Lnid(2 + i % (lnids - 1))} if i % 2 == 0 else base
                t = time.perf_counter()
                f.set_entry(remote, joined)
                f.apply()
                entry.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                if i % 2 == 0:
                    f.unbind(port)
                else:
                    f.bind(state.bindings[port])
                f.apply()
                bind.append((time.perf_counter() - t) * 1000)
            if changes:
                out["change_entry_ms"] = {"median": statistics.median(entry), "p99": pct(entry, 0.99)}
                out["change_binding_ms"] = {"median": statistics.median(bind), "p99": pct(bind, 0.99)}
    finally:
        netns.sweep(prefix)
    return out


def estimate(backend: str, macs: int, changes: int) -> float:
    per_entry = {"ovs": 35e-6, "macvtap": 20e-6}.get(backend, 17e-6)
    return 1.0 + 5 * macs * per_entry + changes * (0.01 if backend == "ovs" else 0.002)
