"""`hostvlan bench` (data path): what the tenant filter costs per frame, and what programming it costs.

The main measurements run on the testbed (`hostvlan.testbed.build.Testbed`: namespaces,
veths, the real manager and agents), side by side, configurations alternating within every
round (order flipped every round, pairs adjacent: the machine is noisy), and the result is
JSON: per configuration median/min/max, and the median of the paired ratios
filtered/unfiltered (samples of the same round).

Configurations (one host each in one testbed; every VM in the bench's own LNID; filtered
hosts filled through the API to the first --sizes value, Table 1's 128 LNIDs, 126 idle ports):
  none           plain Linux bridge (the paper treats VLAN tagging as this)
  bridge         HostVLAN on the Linux bridge, table filled to `macs` entries
  ovs-none       Open vSwitch, NORMAL action (userspace datapath: this kernel has no OVS module)
  ovs            Open vSwitch with HostVLAN's flows, filled
  macvtap-none   macvtap devices, no filter (VM reached through the testbed's QEMU stand-in)
  macvtap        macvtap with HostVLAN's filter, filled
  vxlan          a plain bridge whose VMs reach the outside over a VXLAN overlay: the
                 host's uplink is a VTEP (underlay 10.202.0.0/24, MTU 1600 so the overlay
                 keeps 1,500), the far VTEP is an external endpoint behind the physical
                 switch. Only on the `ext` path: VM to VM on one host it is `none`.
Pairs (filtered/unfiltered): bridge/none, ovs/ovs-none, macvtap/macvtap-none, vxlan/none.

Paths: `vm` (VM to VM on one host; every config but vxlan) and `ext` (client on an
external endpoint behind the physical switch, server in the VM; `ext_configs` only).
Workloads (servers stay up for the whole run; the web ones on the ext path only):
  lat_us     one-way UDP latency, µs, 50th percentile: sockperf ping-pong, 64 B (lat_udp;
             sockperf sleeps 2 s after its warm-up: ~3.4 s per sample)
  udp_gbps   UDP 1,470-byte datagrams at saturation, received rate (iperf3 -u -b 0)
  tcp_gbps   TCP throughput, received (iperf3)
  ab_rps     web: ApacheBench, 1,024 requests (8 concurrent) of a 1,024-byte static file
             served by lighttpd in the VM; requests/s
  wrk_rps    web: wrk, 1 thread, 16 connections, same file; requests/s

The size sweep (table size x LNIDs per idle port): the `none`/`bridge` pair, latency and
UDP saturation VM to VM (the per-frame cost indicators). Its first point is the main
testbed's; the others are small namespaces of their own whose bridge filter is installed
directly by the agent's filter class (timed: install, resync, single changes), because
registering 819,200 MACs through the manager and an agent takes minutes here. Points
with more than MAX_PAIRS (idle port, MAC) pairs are skipped and listed.
Programming: install, restart resync, one audit and single changes of each back end's
filter at each size up to PROG_MAX, in a throw-away namespace (no testbed, no agent).

The whole run holds /dev/cpu_dma_latency at 0 (`polling_idle`): idle vCPUs poll instead of
halting, or every request/response sample would mostly time the hypervisor waking a vCPU.
Every command is an argv list run inside the bench's own namespaces (removed at the end,
also on failure); nothing here is in a packet's path. A benchmark: it reports, never
asserts a number.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hostvlan.datapath.base import TenantFilter
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName, int_to_mac, tap_mac
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.build import Testbed, add_idle_ports
from hostvlan.testbed.topology import parse_topology

CONFIGS = ("vxlan", "none", "bridge", "ovs-none", "ovs", "macvtap-none", "macvtap")  # pairs adjacent
PAIRS = {"bridge": "none", "ovs": "ovs-none", "macvtap": "macvtap-none", "vxlan": "none"}
BACKEND = {"vxlan": "none"}  # config -> testbed backend (else the same name)
FILTERED = ("bridge", "ovs", "macvtap")
WORKLOADS = ("lat_us", "udp_gbps", "tcp_gbps", "ab_rps", "wrk_rps")
LOWER_IS_BETTER = {"lat_us"}
PATHS = ("vm", "ext")
EXT_CONFIGS = ("vxlan", "none", "bridge")  # the default set's external path (the 15-minute budget)
WEB = ("ab_rps", "wrk_rps")  # on the ext path only: the paper's web clients are outside
SWEEP_WORKLOADS = ("lat_us", "udp_gbps")
BENCH_LNID = 1 << 40  # the measured VMs' own LNID, apart from every fill's
FILL_LNIDS = 128  # Table 1: 8,192 MACs over 128 LNIDs, 126 idle bound ports
FILL_PORTS = 126
PROG_MAX = 100_000  # larger: the bridge's programming is timed in the sweep (others: minutes each)
MAX_PAIRS = 2_000_000  # sweep points whose (idle port, MAC) pairs exceed this are skipped
VNI = 4242
UNDERLAY = ("10.202.0.1", "10.202.0.2")
UNDERLAY_MTU = 1600
SOCKPERF_PORT, IPERF_PORT, HTTP_PORT = 11111, 5201, 8080
WEB_FILE = "1k.html"


@dataclass(frozen=True)
class Options:
    rounds: int = 7
    seconds: int = 1
    configs: tuple[str, ...] = CONFIGS  # on the vm path (all but vxlan)
    ext_configs: tuple[str, ...] = EXT_CONFIGS  # also on the ext path
    workloads: tuple[str, ...] = WORKLOADS
    paths: tuple[str, ...] = PATHS
    sizes: tuple[int, ...] = (8192, 81920, 819200)
    port_lnids: tuple[int, ...] = (1, 16)
    programming: tuple[str, ...] = FILTERED  # back ends whose programming is timed ('' : none)
    changes: int = 50  # single changes timed per back end and size
    command: str = ""


def quick() -> Options:
    """A tiny set for a smoke test (< 1 min): one round, a small table, the bridge pair and VXLAN."""
    return Options(
        rounds=1,
        seconds=1,
        configs=("vxlan", "none", "bridge"),
        ext_configs=("vxlan", "none", "bridge"),
        workloads=("lat_us", "udp_gbps", "ab_rps", "wrk_rps"),
        paths=PATHS,
        sizes=(512,),
        port_lnids=(1, 4),
        programming=("bridge",),
        changes=10,
    )


# ----- progress -----------------------------------------------------------------------------
@dataclass
class Progress:
    """One line per step on stderr: elapsed time, what was done, and an ETA from the plan."""

    plan: list[float]  # estimated seconds of every step
    t0: float = field(default_factory=time.monotonic)
    done: int = 0
    done_est: float = 0.0
    stream: Any = sys.stderr

    def step(self, label: str, took: float) -> None:
        est = self.plan[self.done] if self.done < len(self.plan) else took
        self.done += 1
        self.done_est += est
        elapsed = time.monotonic() - self.t0
        left = sum(self.plan[self.done :])
        scale = min(3.0, max(0.8, elapsed / self.done_est)) if self.done_est > 0 else 1.0
        print(
            f"[{_mmss(elapsed)}] {self.done}/{len(self.plan)} {label} ({took:.1f} s); ETA {_mmss(left * scale)}",
            file=self.stream,
            flush=True,
        )


def _mmss(s: float) -> str:
    return f"{int(s) // 60:d}:{int(s) % 60:02d}"


# ----- topology -----------------------------------------------------------------------------
def topology_yaml(configs: list[str], macs: int, port_lnids: int, external: bool) -> str:
    """One host per configuration; the filtered ones filled to `macs` entries (Table 1: over 128
    LNIDs, 126 idle ports, each in `port_lnids` LNIDs); servers `<config>-2`, VM-to-VM clients
    `<config>-1`, all in BENCH_LNID (plus port_lnids - 1 of their host's fill LNIDs)."""
    lines = ["hosts:"]
    first = 1
    for i, cfg in enumerate(configs):
        lines += [f"  - name: {cfg}", f"    backend: {BACKEND.get(cfg, cfg)}"]
        extra: list[int] = []
        if cfg in FILTERED:
            lines.append(
                f"    fill: {{macs: {macs}, lnids: {FILL_LNIDS}, ports: {FILL_PORTS}, port_lnids: {port_lnids}}}"
            )
            extra = [first + j for j in range(port_lnids - 1)]
            first += FILL_LNIDS
        lnids = ", ".join(str(x) for x in [BENCH_LNID, *extra])
        lines.append("    vms:")
        for k in (1, 2) if cfg != "vxlan" else (2,):
            lines.append(f'      - {{name: {cfg}-{k}, mac: "52:54:00:00:{i + 1:02x}:{k:02x}", lnids: [{lnids}]}}')
    if external:
        lines += ["external:", f'  - {{name: ext, mac: "52:54:00:ff:00:01", lnids: [{BENCH_LNID}]}}']
        if "vxlan" in configs:
            lines.append('  - {name: vtep, mac: "52:54:00:ff:00:02", lnids: []}')
    return "\n".join(lines) + "\n"


def _run(argv: list[str], timeout: float = 30.0) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {(res.stderr or res.stdout)[-400:]}")
    return res.stdout


def _ip(ns: str, *args: str) -> None:
    _run(["ip", "-n", ns, *args])


def setup_vxlan(tb: Testbed) -> None:
    """Make host `vxlan`'s uplink a VTEP and external endpoint `vtep` the far one (inside the
    testbed's namespaces only; they go with it). The client's overlay address is the
    endpoint's testbed IP, moved from its eth0 to its vxlan0."""
    host, far = tb.hosts["vxlan"], tb.external["vtep"]
    hosts = [h.name for h in tb.topology.hosts]
    exts = [e.name for e in tb.topology.external]
    for port in (f"up{hosts.index('vxlan')}", f"ex{exts.index('vtep')}"):
        _ip(tb.switch_ns, "link", "set", port, "mtu", str(UNDERLAY_MTU))
    _ip(host.netns, "link", "set", host.uplink, "nomaster")
    _ip(host.netns, "link", "set", host.uplink, "mtu", str(UNDERLAY_MTU))
    _ip(host.netns, "addr", "add", f"{UNDERLAY[0]}/24", "dev", host.uplink)
    _ip(far.netns, "addr", "flush", "dev", far.ifname)
    _ip(far.netns, "link", "set", far.ifname, "mtu", str(UNDERLAY_MTU))
    _ip(far.netns, "addr", "add", f"{UNDERLAY[1]}/24", "dev", far.ifname)
    for ns, dev, local, remote in (
        (host.netns, host.uplink, UNDERLAY[0], UNDERLAY[1]),
        (far.netns, far.ifname, UNDERLAY[1], UNDERLAY[0]),
    ):
        vxlan = ["type", "vxlan", "id", str(VNI), "local", local, "remote", remote, "dstport", "4789", "dev", dev]
        _ip(ns, "link", "add", "vxlan0", *vxlan)
    _ip(host.netns, "link", "set", "vxlan0", "master", host.bridge, "up")
    _ip(far.netns, "addr", "add", f"{far.ip}/16", "dev", "vxlan0")
    _ip(far.netns, "link", "set", "vxlan0", "up")
    # the client sends on vxlan0: the same offloads off as on every other client's eth0
    _run(["ip", "netns", "exec", far.netns, "ethtool", "-K", "vxlan0", "tx", "off", "tso", "off", "gso", "off"])


def offloads_off(tb: Testbed) -> None:
    """The same NIC settings in every testbed (the OVS userspace datapath needs them off)."""
    for ns in [vm.netns for vm in tb.vms.values()] + [e.netns for e in tb.external.values()]:
        _run(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"])


# ----- servers and workloads ----------------------------------------------------------------
class Servers:
    """sockperf, iperf3 and lighttpd in a VM's namespace, up until `close`."""

    def __init__(self, ns: str, ip: str, workdir: Path, web: bool) -> None:
        self.ns, self.ip, self.web = ns, ip, web
        self.dir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start("sockperf", ["sockperf", "server", "-i", ip, "-p", str(SOCKPERF_PORT)])
        self.start("iperf3", ["iperf3", "-s", "-B", ip, "-p", str(IPERF_PORT)])
        if web:
            www = workdir / "www"
            www.mkdir(parents=True, exist_ok=True)
            (www / WEB_FILE).write_bytes((b"hostvlan " * 114)[:1023] + b"\n")  # 1,024 bytes
            conf = workdir / "lighttpd.conf"
            conf.write_text(
                f'server.document-root = "{www}"\nserver.bind = "{ip}"\nserver.port = {HTTP_PORT}\n'
                f'server.errorlog = "{workdir}/lighttpd.log"\nserver.max-connections = 1024\n'
                'mimetype.assign = (".html" => "text/html")\n'
            )
            self.start("lighttpd", ["lighttpd", "-D", "-f", str(conf)])
        time.sleep(0.3)

    def start(self, name: str, argv: list[str]) -> None:
        old = self.procs.pop(name, None)
        if old is not None:
            _stop(old)
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def restart_iperf(self) -> None:
        self.start("iperf3", ["iperf3", "-s", "-B", self.ip, "-p", str(IPERF_PORT)])
        time.sleep(0.3)

    def close(self) -> None:
        for proc in self.procs.values():
            _stop(proc)
        self.procs.clear()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def sockperf_lat(ns: str, ip: str, seconds: int) -> float:
    out = _run(
        [*_in(ns), "sockperf", "ping-pong", "-i", ip, "-p", str(SOCKPERF_PORT), "-t", str(seconds), "-m", "64"],
        timeout=seconds + 20,
    )
    m = re.search(r"percentile 50\.000 =\s+([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"sockperf output not understood: {out[-500:]}")
    return float(m.group(1))


def iperf_gbps(ns: str, ip: str, seconds: int, udp: bool) -> float:
    argv = [*_in(ns), "iperf3", "-c", ip, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", "1470"]
    end = json.loads(_run(argv, timeout=seconds + 20))["end"]
    if udp:  # received rate: what got through
        return float(end["sum"]["bits_per_second"]) * (1 - float(end["sum"].get("lost_percent", 0.0)) / 100) / 1e9
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def ab_rps(ns: str, ip: str, seconds: int) -> float:
    out = _run([*_in(ns), "ab", "-q", "-n", "1024", "-c", "8", f"http://{ip}:{HTTP_PORT}/{WEB_FILE}"], timeout=60)
    m = re.search(r"Requests per second:\s+([0-9.]+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if not m or (failed and int(failed.group(1))):
        raise RuntimeError(f"ab output not understood or requests failed: {out[-500:]}")
    return float(m.group(1))


def wrk_rps(ns: str, ip: str, seconds: int) -> float:
    url = f"http://{ip}:{HTTP_PORT}/{WEB_FILE}"
    out = _run([*_in(ns), "wrk", "-t", "1", "-c", "16", "-d", f"{seconds}s", url], timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not m or "Non-2xx" in out:
        raise RuntimeError(f"wrk output not understood or errors: {out[-500:]}")
    return float(m.group(1))


SPENT: dict[str, float] = {}  # wall-clock seconds per workload in this process (for budgeting)
PREFIXES: list[str] = []  # the namespace prefixes this process used (all removed when it is done)


def measure(workload: str, client_ns: str, srv: Servers, seconds: int) -> float:
    """One measurement (retried twice; iperf3's server restarted if it refused)."""
    t = time.monotonic()
    try:
        return _measure(workload, client_ns, srv, seconds)
    finally:
        SPENT[workload] = SPENT.get(workload, 0.0) + time.monotonic() - t


def _measure(workload: str, client_ns: str, srv: Servers, seconds: int) -> float:
    for attempt in (1, 2, 3):
        try:
            if workload == "lat_us":
                return sockperf_lat(client_ns, srv.ip, seconds)
            if workload in ("udp_gbps", "tcp_gbps"):
                return iperf_gbps(client_ns, srv.ip, seconds, udp=workload == "udp_gbps")
            if workload == "ab_rps":
                return ab_rps(client_ns, srv.ip, seconds)
            if workload == "wrk_rps":
                return wrk_rps(client_ns, srv.ip, seconds)
            raise ValueError(f"unknown workload {workload!r}")
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError):
            if attempt == 3:
                raise
            if workload.endswith("_gbps"):
                srv.restart_iperf()
            else:
                time.sleep(0.5)
    raise AssertionError("unreachable")


def _est(workload: str, seconds: int) -> float:
    # sockperf sleeps 2 s after its warm-up, whatever -t says
    return {"ab_rps": 0.6, "lat_us": seconds + 2.4}.get(workload, seconds + 0.2)


# ----- statistics ---------------------------------------------------------------------------
def stats(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": [round(v, 4) for v in values],
    }


def summarize(samples: dict[str, list[float]], workload: str) -> dict[str, Any]:
    """Per config median/min/max; per pair present the paired ratios (same round) and the
    overhead in percent (positive: the filtered configuration is worse)."""
    out: dict[str, Any] = {"configs": {c: stats(v) for c, v in samples.items() if v}, "ratios": {}}
    for f, u in PAIRS.items():
        if samples.get(f) and samples.get(u):
            ratios = [a / b for a, b in zip(samples[f], samples[u], strict=True) if b > 0]
            if not ratios:
                continue
            r = stats(ratios)
            med = r["median"]
            r["overhead_pct"] = (med - 1) * 100 if workload in LOWER_IS_BETTER else (1 - med) * 100
            out["ratios"][f"{f}/{u}"] = r
    return out


# ----- one testbed, all rounds ----------------------------------------------------------------
@dataclass
class Cell:
    """A set of configurations, workloads and paths measured in one testbed."""

    label: str
    configs: list[str]  # every host of the testbed
    workloads: list[str]
    paths: list[str]
    macs: int
    port_lnids: int
    ext_configs: list[str] = field(default_factory=list)
    vm_configs: list[str] | None = None  # None: every host but vxlan

    def cases(self, path: str) -> list[str]:
        """Configurations measured on `path`, in CONFIGS order (pairs adjacent)."""
        if path == "ext":
            return [c for c in self.configs if c in self.ext_configs]
        return [c for c in self.configs if c != "vxlan" and (self.vm_configs is None or c in self.vm_configs)]

    def loads(self, path: str) -> list[str]:
        return [w for w in self.workloads if path == "ext" or w not in WEB]

    def measurements(self) -> int:
        return sum(len(self.cases(p)) * len(self.loads(p)) for p in self.paths)

    def round_est(self, seconds: int) -> float:
        return sum(len(self.cases(p)) * _est(w, seconds) for p in self.paths for w in self.loads(p))

    def build_est(self, direct: bool = False) -> float:
        filled = sum(1 for c in self.configs if c in FILTERED)
        pairs = FILL_PORTS * self.port_lnids * self.macs / FILL_LNIDS
        if direct:  # the filter class, no manager, no agent
            return 1.5 + self.macs * 50e-6 + pairs * 18e-6
        return 3.0 + 1.5 * len(self.configs) + filled * (self.macs * 60e-6 + pairs * 20e-6)


def run_cell(cell: Cell, opts: Options, progress: Progress) -> dict[str, Any]:
    t = time.monotonic()
    external = "ext" in cell.paths
    topo = parse_topology(topology_yaml(cell.configs, cell.macs, cell.port_lnids, external), f"bench {cell.label}")
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        p: {w: {c: [] for c in cell.cases(p)} for w in cell.loads(p)} for p in cell.paths
    }
    web = "ext" in cell.paths and any(w in WEB for w in cell.workloads)
    out: dict[str, Any] = {"macs": cell.macs, "port_lnids": cell.port_lnids, "configs": cell.configs}
    with ExitStack() as stack:
        tb = Testbed(topo)
        PREFIXES.append(tb.prefix)
        stack.enter_context(tb)
        if "vxlan" in cell.configs and external:
            setup_vxlan(tb)
        offloads_off(tb)
        out["entries"] = {c: len(tb.filter_state(c).entries) for c in cell.configs if c in FILTERED}
        tmp = Path(tempfile.mkdtemp(prefix="hvbench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        servers: dict[str, Servers] = {}
        for c in cell.configs:
            vm = tb.vms[f"{c}-2"]
            servers[c] = Servers(vm.netns, vm.ip, tmp / c, web)
            stack.callback(servers[c].close)
        out["build_s"] = round(time.monotonic() - t, 2)
        progress.step(f"{cell.label}: testbed up, {out['entries'] or 'no filter'} entries", time.monotonic() - t)
        for r in range(opts.rounds):
            t = time.monotonic()
            for path in cell.paths:
                order = cell.cases(path) if r % 2 == 0 else cell.cases(path)[::-1]
                for w in cell.loads(path):
                    for c in order:
                        if path == "vm":
                            client = tb.vms[f"{c}-1"].netns
                        else:
                            client = tb.external["vtep" if c == "vxlan" else "ext"].netns
                        samples[path][w][c].append(measure(w, client, servers[c], opts.seconds))
            progress.step(f"{cell.label}: round {r + 1}/{opts.rounds}", time.monotonic() - t)
    out["paths"] = {p: {w: summarize(by, w) for w, by in ws.items()} for p, ws in samples.items()}
    return out


# ----- the size sweep: the bridge filter programmed directly ------------------------------------
def run_direct_cell(cell: Cell, opts: Options, progress: Progress) -> dict[str, Any]:
    """A sweep point: a plain bridge (`none`) and one with HostVLAN's bridge filter (`bridge`),
    two VMs each, the filter installed directly by the agent's own `TenantFilter` class with
    the worst-case table of `cell.macs` entries and 126 idle ports in `cell.port_lnids` LNIDs
    each (registering 819,200 MACs through the manager and an agent takes minutes here; the
    main testbed covers the control plane). VM to VM, latency and UDP saturation."""
    t = time.monotonic()
    prefix = netns.new_prefix()
    PREFIXES.append(prefix)
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
            _new_ns(host)
            _ip(host, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
            _ip(host, "link", "set", "br0", "up")
            vms: dict[Mac, PortName] = {}
            for k in (1, 2):
                vm, mac, port = f"{prefix}-v-{cfg}-{k}", Mac(f"52:54:00:00:{i + 1:02x}:{k:02x}"), f"vnet{k - 1}"
                _new_ns(vm)
                _ip(host, "link", "add", port, "address", tap_mac(mac), "type", "veth",
                    "peer", "name", "eth0", "address", mac, "netns", vm)  # fmt: skip
                _ip(host, "link", "set", port, "master", "br0", "up")
                _ip(vm, "addr", "add", f"10.203.{i}.{k}/24", "dev", "eth0")
                _ip(vm, "link", "set", "eth0", "up")
                _run(["ip", "netns", "exec", vm, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"])
                vms[mac] = PortName(port)
                if k == 1:
                    clients[cfg] = vm
                else:
                    servers[cfg] = Servers(vm, f"10.203.{i}.{k}", tmp / cfg, web=False)
                    stack.callback(servers[cfg].close)
            if cfg == "bridge":
                state = worst_case(cell.macs, port_lnids=cell.port_lnids, port_name="idle")
                add_idle_ports(host, [b.port for b in state.bindings.values() if not b.uplink])
                lnids = frozenset({Lnid(BENCH_LNID), *(Lnid(1 + j) for j in range(cell.port_lnids - 1))})
                entries = dict(state.entries) | {m: lnids for m in vms}
                bindings = dict(state.bindings) | {p: PortBinding(p, m) for m, p in vms.items()}
                make = filter_factory("bridge", host, stack)
                full = FilterState(entries, bindings)
                out["programming"] = _program_timed(make, full, BENCH_LNID, changes=10)
                out["entries"] = len(entries)
        netns.wait_operstate_up(netns.owned(prefix))
        out["build_s"] = round(time.monotonic() - t, 2)
        progress.step(f"{cell.label}: filter installed, {out.get('entries')} entries", time.monotonic() - t)
        for r in range(opts.rounds):
            t = time.monotonic()
            order = cell.configs if r % 2 == 0 else cell.configs[::-1]
            for w in cell.workloads:
                for c in order:
                    samples[w][c].append(measure(w, clients[c], servers[c], opts.seconds))
            progress.step(f"{cell.label}: round {r + 1}/{opts.rounds}", time.monotonic() - t)
    out["paths"] = {"vm": {w: summarize(by, w) for w, by in samples.items()}}
    return out


def _program_timed(make: Callable[[], TenantFilter], state: FilterState, lnid: int, changes: int) -> dict[str, Any]:
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


def _new_ns(name: str) -> None:
    netns.create(name)
    netns.sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
    _ip(name, "link", "set", "lo", "up")


# ----- programming (a throw-away namespace, no testbed) ------------------------------------------
def worst_case(
    macs: int, lnids: int = FILL_LNIDS, ports: int = FILL_PORTS, *, port_lnids: int = 1, port_name: str = "vnet"
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
    """A maker of fresh filters (an agent and its restarts) for `backend` in namespace `ns`."""
    if backend == "ovs":
        from hostvlan.datapath.ovs import OvsFilter
        from hostvlan.datapath.ovsdb import OvsDb
        from hostvlan.testbed.ovsd import OvsDaemons

        daemons = OvsDaemons(ns, Path(f"/tmp/hvbench-{ns}"))
        stack.callback(daemons.stop)
        daemons.start()
        db = OvsDb(daemons.tools.db_remote)
        stack.callback(db.close)
        db.ensure_bridge("br0", datapath_type="netdev")
        return lambda: OvsFilter("br0", daemons.tools, db)
    from hostvlan.datapath.brports import BridgePorts
    from hostvlan.datapath.macvtap import MacvtapFilter
    from hostvlan.datapath.nftlib import Nft
    from hostvlan.datapath.tc_bridge import BPFFS, TcBridgeFilter

    with netns.inside(ns):
        nft = Nft()
        ports = BridgePorts() if backend == "bridge" else None
    stack.callback(nft.close)
    if ports is not None:
        stack.callback(ports.close)
        stack.callback(shutil.rmtree, BPFFS / ns, ignore_errors=True)
        return lambda: TcBridgeFilter(nft, ports, BPFFS / ns)  # the agent's default bridge back end
    return lambda: MacvtapFilter(nft)


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))]


def programming(
    backend: str,
    macs: int,
    *,
    lnids: int = FILL_LNIDS,
    ports: int = FILL_PORTS,
    changes: int = 50,
    resyncs: int = 3,
    audit: bool = True,
) -> dict[str, Any]:
    """Install (one transaction), restart resync (a new filter object syncs the same state:
    nothing to change), a full audit (once), and single changes (a remote MAC joins/leaves an
    LNID; a port is bound/unbound; each one transaction) of one back end."""
    prefix = netns.new_prefix()
    PREFIXES.append(prefix)
    ns = f"{prefix}-prog"
    state = worst_case(macs, lnids, ports)
    out: dict[str, Any] = {"backend": backend, "macs": macs}
    netns.create(ns)
    try:
        with ExitStack() as stack:
            if backend == "bridge":  # real ports: the tc filter keys its maps by their ifindex
                _ip(ns, "link", "add", "br0", "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
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


def _prog_est(backend: str, macs: int, changes: int) -> float:
    per_entry = {"ovs": 35e-6, "macvtap": 20e-6}.get(backend, 17e-6)
    return 1.0 + 5 * macs * per_entry + changes * (0.01 if backend == "ovs" else 0.002)


# ----- the suite ----------------------------------------------------------------------------
def sweep_points(opts: Options) -> tuple[list[tuple[int, int]], list[dict[str, Any]]]:
    """(table size, LNIDs per idle port) of the sweep, and those skipped (too many pairs)."""
    points, skipped = [], []
    for pl in opts.port_lnids:
        for macs in opts.sizes:
            pairs = FILL_PORTS * pl * macs // FILL_LNIDS  # (idle port, MAC of one of its LNIDs)
            if pairs > MAX_PAIRS:
                skipped.append({"macs": macs, "port_lnids": pl, "pairs": pairs, "why": f"> {MAX_PAIRS:,} pairs"})
            else:
                points.append((macs, pl))
    return points, skipped


def plan(opts: Options) -> tuple[Cell, list[Cell], list[dict[str, Any]]]:
    """The main testbed (every configuration, workload and path at the first size) and the
    sweep's cells (none/bridge, latency and UDP, VM to VM, each size x LNIDs per port)."""
    hosts = [c for c in CONFIGS if c in opts.configs or ("ext" in opts.paths and c in opts.ext_configs)]
    ext = list(opts.ext_configs) if "ext" in opts.paths else []
    main = Cell(
        "main",
        hosts,
        list(opts.workloads),
        list(opts.paths),
        opts.sizes[0],
        opts.port_lnids[0],
        ext,
        list(opts.configs),
    )
    points, skipped = sweep_points(opts)
    sweep_w = [w for w in SWEEP_WORKLOADS if w in opts.workloads]
    if "vm" in opts.paths and {"none", "bridge"} <= set(opts.configs):  # the main testbed's point
        points = [pt for pt in points if pt != (main.macs, main.port_lnids)]
    cells = [Cell(f"sweep {m:,}x{pl}", ["none", "bridge"], sweep_w, ["vm"], m, pl) for m, pl in points if sweep_w]
    return main, cells, skipped


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if "model name" in ln
            ),
            "",
        )
    except OSError:
        pass
    mem = 0
    try:
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    except (OSError, IndexError, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "cpu": cpu,
        "mem_mib": mem,
        "loadavg": list(os.getloadavg()),
        "tools": {t: _version(t) for t in ("sockperf", "iperf3", "ab", "wrk", "lighttpd")},
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether the working tree differed from it (the harness
    measures whatever back-end code is on disk when it starts)."""
    here = Path(__file__).resolve().parent
    try:
        commit = _run(["git", "-C", str(here), "rev-parse", "HEAD"], timeout=10).strip()
        dirty = bool(_run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"], timeout=10))
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return {}
    return {"commit": commit, "dirty": dirty}


def _version(tool: str) -> str:
    argv = {"ab": ["ab", "-V"], "lighttpd": ["lighttpd", "-v"], "sockperf": ["sockperf", "--version"]}
    try:
        res = subprocess.run(argv.get(tool, [tool, "--version"]), capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return "missing"
    text = (res.stdout + res.stderr).strip().splitlines()
    return text[0][:80] if text else ""


def validate(opts: Options) -> None:
    for name, got, allowed in (
        ("config", opts.configs, CONFIGS),
        ("workload", opts.workloads, WORKLOADS),
        ("path", opts.paths, PATHS),
        ("programming back end", opts.programming, FILTERED),
    ):
        bad = [x for x in got if x not in allowed]
        if bad:
            raise ValueError(f"unknown {name} {', '.join(bad)} (choose from {', '.join(allowed)})")
    if not opts.configs or not opts.workloads or not opts.paths or not opts.sizes or not opts.port_lnids:
        raise ValueError("need at least one config, workload, path, size and --port-lnids value")
    if opts.rounds < 1 or opts.seconds < 1:
        raise ValueError("--rounds and --seconds must be at least 1")
    bad = [c for c in opts.ext_configs if c not in CONFIGS]
    if bad:
        raise ValueError(f"unknown config {', '.join(bad)} in --ext-configs (choose from {', '.join(CONFIGS)})")
    if "vxlan" in opts.ext_configs and "none" not in opts.ext_configs:
        raise ValueError("vxlan is compared with none on the ext path: add none to --ext-configs")
    if any(pl < 1 or pl > FILL_LNIDS for pl in opts.port_lnids):
        raise ValueError(f"--port-lnids values must be 1..{FILL_LNIDS}")
    if any(m < FILL_LNIDS for m in opts.sizes):
        raise ValueError(f"--sizes must be at least {FILL_LNIDS} (entries over {FILL_LNIDS} LNIDs)")
    for t in ("sockperf", "iperf3", "ethtool") + (
        ("ab",) if "ab_rps" in opts.workloads else ()
    ) + (("wrk",) if "wrk_rps" in opts.workloads else ()) + (
        ("lighttpd",) if {"ab_rps", "wrk_rps"} & set(opts.workloads) else ()
    ):  # fmt: skip
        if shutil.which(t) is None:
            raise ValueError(f"{t} is not installed (run `make setup`)")


@contextmanager
def polling_idle() -> Iterator[bool]:
    """Hold a PM QoS request of 0 µs CPU wake-up latency (/dev/cpu_dma_latency, as tuned's
    latency-performance profile does) for the run: an idle vCPU then polls instead of halting.
    Without it, a request/response test on an otherwise idle VM measures the hypervisor's
    wake-up of a halted vCPU (~30 µs here), not the network path (~3-5 µs). Yields whether
    the request is held (False where the device is missing)."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError:
        yield False
        return
    try:
        os.write(fd, struct.pack("i", 0))
        yield True
    finally:
        os.close(fd)  # closing the file drops the request


def run(opts: Options, stream: Any = sys.stderr) -> dict[str, Any]:
    """The whole suite; returns the JSON-able result. Progress goes to `stream`."""
    with polling_idle() as held:
        result = _run_suite(opts, stream)
    result["machine"]["cpu_dma_latency_us"] = 0 if held else None
    return result


def _run_suite(opts: Options, stream: Any) -> dict[str, Any]:
    validate(opts)
    main, cells, skipped = plan(opts)
    steps = [main.build_est()] + [main.round_est(opts.seconds)] * opts.rounds
    for c in cells:
        steps += [c.build_est(direct=True)] + [c.round_est(opts.seconds)] * opts.rounds
    prog_jobs = [(b, m) for m in opts.sizes for b in opts.programming if m <= PROG_MAX]
    steps += [_prog_est(b, m, opts.changes) for b, m in prog_jobs]
    progress = Progress(steps, stream=stream)
    started = datetime.now(UTC)
    print(
        f"hostvlan bench: {len(steps)} steps, estimated {_mmss(sum(steps))} "
        f"({opts.rounds} rounds x {main.measurements()} measurements on the main testbed, "
        f"{len(cells)} sweep testbeds, {len(prog_jobs)} programming runs)",
        file=stream,
        flush=True,
    )
    result: dict[str, Any] = {
        "kind": "hostvlan-bench-datapath",
        "command": opts.command,
        "started_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "source": source(),
        "options": {
            "rounds": opts.rounds,
            "seconds": opts.seconds,
            "configs": list(opts.configs),
            "ext_configs": list(opts.ext_configs),
            "workloads": list(opts.workloads),
            "paths": list(opts.paths),
            "sizes": list(opts.sizes),
            "port_lnids": list(opts.port_lnids),
            "fill": {"lnids": FILL_LNIDS, "ports": FILL_PORTS},
        },
        "pairs": {f: u for f, u in PAIRS.items() if f in opts.configs and u in opts.configs},
    }
    result["main"] = run_cell(main, opts, progress)
    sweep = []
    vm_main = result["main"]["paths"].get("vm", {})
    if "bridge" in result["main"].get("entries", {}) and "none" in vm_main.get(SWEEP_WORKLOADS[0], {}).get(
        "configs", {}
    ):
        sweep.append(
            {"macs": main.macs, "port_lnids": main.port_lnids, "entries": result["main"]["entries"]["bridge"],
             "build_s": result["main"]["build_s"], "programmed_by": "agent (main testbed)",
             "paths": {"vm": {w: v for w, v in vm_main.items() if w in SWEEP_WORKLOADS}}}
        )  # fmt: skip
    for c in cells:
        r = run_direct_cell(c, opts, progress)
        sweep.append({k: r[k] for k in ("macs", "port_lnids", "entries", "build_s", "programming", "paths")})
    result["sweep"] = sweep
    result["sweep_skipped"] = skipped
    progs = []
    for b, m in prog_jobs:
        t = time.monotonic()
        progs.append(programming(b, m, changes=opts.changes))
        progress.step(f"programming {b} at {m:,} entries", time.monotonic() - t)
    result["programming"] = progs
    result["programming_skipped"] = [
        {"backend": b, "macs": m, "why": f"> {PROG_MAX:,} entries: minutes each here (the bridge's is in the sweep)"}
        for m in opts.sizes
        for b in opts.programming
        if m > PROG_MAX
    ]
    result["duration_s"] = round(time.monotonic() - progress.t0, 1)
    result["spent_s"] = {w: round(v, 1) for w, v in SPENT.items()}
    result["netns_prefixes"] = list(PREFIXES)
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def write(result: dict[str, Any], out_dir: Path) -> Path:
    """bench/results/datapath-<UTC>.json and latest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = result["started_utc"].replace("-", "").replace(":", "")
    path = out_dir / f"datapath-{stamp}.json"
    text = json.dumps(result, indent=2) + "\n"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path
