"""A throw-away end host on Open vSwitch (userspace datapath), for the integration tier.

`ovs_host(prefix)` is a context manager: it builds namespaces whose names carry the
per-test prefix, starts a private ovsdb-server and ovs-vswitchd INSIDE the host
namespace (their database, sockets, pid files and logs in a fresh temporary directory;
`OVS_RUNDIR`/`OVS_DBDIR`/`OVS_LOGDIR`/`OVS_SYSCONFDIR` point there), and on exit stops
both daemons (SIGTERM, then SIGKILL), checks they are gone and removes every namespace.
Nothing touches the root namespace: the bridge's ports live in the host namespace.

Topology (same names as `hostnet`, so the same frames and the same model apply):

    <prefix>-h   ovsdb-server + ovs-vswitchd; OVS bridge br0 (datapath_type=netdev,
                 fail-mode=secure), ports vnet0 … vnet<n-1> (MAC fe:54:00:00:00:0i,
                 external_ids:attached-mac = the guest MAC) and uplink0
    <prefix>-v<i> eth0, the guest vNIC, MAC 52:54:00:00:00:0i, peer of vnet<i>
    <prefix>-x   eth0, peer of uplink0: the wire

Over veth the userspace datapath forwards what AF_PACKET hands it, so every sender has
tx checksum offload, TSO and GSO off (`ethtool -K eth0 tx off tso off gso off`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from hostvlan.datapath.ovs import COOKIE_BASE, COOKIE_MASK, UNBOUND, UNKNOWN, OvsFilter
from hostvlan.datapath.ovs_proc import OvsTools
from hostvlan.datapath.ovsdb import OvsDb
from hostvlan.model import verdict
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns
from hostvlan.testbed.ovsd import OvsDaemons as _OvsDaemons
from hostvlan.testbed.traffic import Probe, Received

from .hostnet import OUTSIDE, OUTSIDE_MAC, UPLINK, UPLINK_MAC, Sent, Vm, vm_mac, vm_tap_mac

BRIDGE = "br0"
STARTED: set[int] = set()  # pid of every OVS daemon this session started (all must be gone)


def _wait_for(what: str, ok: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class OvsDaemons(_OvsDaemons):
    """The package's runner in a fresh temporary directory, every daemon recorded in STARTED."""

    def __init__(self, ns: str) -> None:
        super().__init__(ns, Path(tempfile.mkdtemp(prefix="hvovs-", dir="/tmp")))  # short: unix socket paths

    def start(self) -> None:
        try:
            super().start()
        finally:
            STARTED.update(p.pid for p in self.procs)

    def stop(self, remove_dir: bool = True) -> list[int]:
        alive = super().stop(remove_dir)
        assert not alive, f"OVS daemons survived: {alive}"
        return alive


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists" until reaped; Popen.wait reaped ours
    return Path(f"/proc/{pid}").exists()


def surviving_daemons() -> list[int]:
    """Pids from `pgrep -x ovs-vswitchd` / `ovsdb-server` that this session started."""
    out: list[int] = []
    for name in ("ovs-vswitchd", "ovsdb-server"):
        got = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
        out += [int(x) for x in got.stdout.split() if int(x) in STARTED]
    return out


class RecordingTools(OvsTools):
    """OvsTools that records every ovs-ofctl call: (argv, lines on stdin)."""

    calls: list[tuple[tuple[str, ...], int]]

    def ofctl(self, *args: str, stdin: str | None = None) -> str:
        self.calls.append((args, stdin.count("\n") if stdin else 0))
        return super().ofctl(*args, stdin=stdin)


@dataclass
class OvsHost:
    prefix: str
    ns: str
    outside_ns: str
    vms: list[Vm]
    daemons: OvsDaemons
    db: OvsDb
    attached: set[PortName] = field(default_factory=set)  # VM ports on the bridge
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def attach(self, vm: Vm) -> None:
        """Add a VM's port to the bridge, tagged with its vNIC MAC (as OpenStack does)."""
        self.db.add_port(BRIDGE, vm.port, attached_mac=vm.mac, iface_id=vm.name)
        self.attached.add(vm.port)

    @property
    def tools(self) -> OvsTools:
        return self.daemons.tools

    def new_filter(self, record: bool = False) -> OvsFilter:
        """A fresh OvsFilter with its own OVSDB connection (an agent (re)start)."""
        db = OvsDb(self.tools.db_remote)
        self._closers.append(db.close)
        tools: OvsTools = self.tools
        if record:
            rec = RecordingTools(tools.rundir, tools.db, tools.vswitchd_ctl)
            object.__setattr__(rec, "calls", [])
            tools = rec
        return OvsFilter(BRIDGE, tools, db)

    def start(self, state: FilterState | None = None) -> OvsFilter:
        """Install the filter (fail closed: empty unless `state`), then bring links up."""
        filt = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        self.up()
        return filt

    def up(self) -> None:
        for vm_ns in [*(vm.ns for vm in self.vms), self.outside_ns]:
            with netns.iproute(vm_ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
            subprocess.run(
                ["ip", "netns", "exec", vm_ns, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"],
                check=True,
                capture_output=True,
            )
        with netns.iproute(self.ns) as ipr:
            for name in [vm.port for vm in self.vms] + [UPLINK]:
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        ports = [vm.port for vm in self.vms if vm.port in self.attached] + [UPLINK]
        netns.wait_operstate_up([self.outside_ns, *(vm.ns for vm in self.vms)])
        _wait_for("the bridge's ports to be up", lambda: self._links_up(ports))
        _wait_for("OpenFlow ports of every interface", lambda: set(ports) <= set(self.db.ofports(BRIDGE)))
        _wait_for("OVS to see every port up", lambda: self._ports_up(ports))

    def _links_up(self, ports: list[PortName]) -> bool:
        with netns.iproute(self.ns) as ipr:
            states = {link.get("ifname"): link.get("operstate") for link in ipr.get_links()}
        return all(states.get(p) == "UP" for p in ports)

    def _ports_up(self, ports: list[PortName]) -> bool:
        out = self.tools.ofctl("show", self.tools.of_target(BRIDGE))
        down = [p for p in ports if f"({p}):" not in out]
        return not down and "LINK_DOWN" not in out.split("LOCAL")[0]

    def add_vm_port(self, vm: Vm) -> None:
        """Create a VM's veth pair (links down) without adding it to the bridge."""
        with netns.iproute(self.ns) as ipr:
            ipr.link(
                "add",
                ifname=vm.port,
                kind="veth",
                address=vm.tap_mac,
                peer={"ifname": "eth0", "net_ns_fd": vm.ns, "address": vm.mac},
            )

    def dump_flows(self, stats: bool = False) -> list[str]:
        """hostvlan's flows as ovs-ofctl prints them (sorted; durations/counters only with stats)."""
        args = [] if stats else ["--no-stats"]
        out = self.tools.ofctl(
            *args, "dump-flows", self.tools.of_target(BRIDGE), f"cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}"
        )
        return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)

    def probe(self, *names: str) -> Probe:
        where = {vm.name: vm.ns for vm in self.vms} | {OUTSIDE: self.outside_ns}
        probe = Probe()
        self._closers.append(probe.close)
        for name in names or tuple(where):
            probe.attach(name, where[name])
        return probe

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()


def _no_ipv6(ns: str) -> None:
    netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")


@contextmanager
def ovs_host(prefix: str, n_vms: int, ports_on_bridge: int | None = None) -> Iterator[OvsHost]:
    """Build the host (links down, no filter yet); tear everything down on exit.

    `ports_on_bridge`: how many VM ports join the bridge (default all); the others exist
    as veth pairs only, so a test can add them later (`OvsDb.add_port`)."""
    host_ns, outside_ns = f"{prefix}-h", f"{prefix}-x"
    vms = [Vm(i, f"{prefix}-v{i}", vm_mac(i), PortName(f"vnet{i}"), vm_tap_mac(i)) for i in range(n_vms)]
    with ExitStack() as stack:
        stack.callback(_sweep, prefix)
        for ns in [host_ns, outside_ns, *(vm.ns for vm in vms)]:
            netns.create(ns)
            _no_ipv6(ns)
        with netns.iproute(host_ns) as ipr:
            ipr.link(
                "add",
                ifname=UPLINK,
                kind="veth",
                address=UPLINK_MAC,
                peer={"ifname": "eth0", "net_ns_fd": outside_ns, "address": OUTSIDE_MAC},
            )
        daemons = OvsDaemons(host_ns)
        stack.callback(daemons.stop)
        daemons.start()
        db = OvsDb(daemons.tools.db_remote)
        stack.callback(db.close)
        db.ensure_bridge(BRIDGE, datapath_type="netdev")
        host = OvsHost(prefix, host_ns, outside_ns, vms, daemons, db)
        stack.callback(host.close)  # sockets and connections first: they pin namespaces and daemons
        for vm in vms:
            host.add_vm_port(vm)
        db.add_port(BRIDGE, UPLINK)
        for vm in vms[:ports_on_bridge]:
            host.attach(vm)
        yield host


@contextmanager
def ovs_hosts(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    """Factory for one `ovs_host` per test; on exit it is torn down and no daemon survives."""
    with ExitStack() as stack:

        def build(n_vms: int, ports_on_bridge: int | None = None) -> OvsHost:
            assert not stack_used, "one host per test"
            stack_used.append(True)
            return stack.enter_context(ovs_host(prefix, n_vms, ports_on_bridge))

        stack_used: list[bool] = []
        yield build
    assert not surviving_daemons(), "an OVS daemon of this session survived its test"


def _sweep(prefix: str) -> None:
    netns.sweep(prefix)
    left = netns.owned(prefix)
    assert not left, f"namespaces left behind: {left}"


# ----- what the model says a frame does on this switch -----------------------------------------
@dataclass(frozen=True)
class Uni:
    """One unicast frame put on the wire."""

    sender: str
    port: PortName
    src: Mac
    dst: Mac
    tag: str


@dataclass
class Expectation:
    delivered: dict[str, list[str]]
    rx_dropped: Counter[str]
    tx_dropped: Counter[str]


def _targets(state: FilterState, dst: Mac | None) -> list[PortName] | None:
    """Ports a frame to `dst` is copied to (None: every bound port, a flood)."""
    if dst is None or int(dst[:2], 16) & 1:
        return None
    local = [p for p, b in state.bindings.items() if not b.uplink and b.mac == dst]
    if local:
        return local
    if dst in state.entries:
        return [p for p, b in state.bindings.items() if b.uplink]
    return None


def expect(state: FilterState, host: OvsHost, frames: Iterable[Sent | Uni]) -> Expectation:
    """Deliveries and drop counters the model predicts on the OVS pipeline (see `ovs` doc):
    the send check, then the known-source check (one "(unknown)" drop per frame), then
    the model's receive verdict for each copy (copies only to bound ports, never back to
    the ingress port nor from an uplink to an uplink)."""
    endpoints = {vm.port: vm.name for vm in host.vms}
    endpoints[UPLINK] = OUTSIDE
    delivered: dict[str, list[str]] = {name: [] for name in endpoints.values()}
    rx: Counter[str] = Counter()
    tx: Counter[str] = Counter()
    uplinks = {p for p, b in state.bindings.items() if b.uplink}
    for f in frames:
        if not verdict.send(state, f.port, f.src).allow:
            tx[f.port if f.port in state.bindings else UNBOUND] += 1
            continue
        if f.src not in state.entries:
            rx[UNKNOWN] += 1
            continue
        targets = _targets(state, f.dst if isinstance(f, Uni) else None)
        for port in targets if targets is not None else list(state.bindings):
            if port == f.port or (port in uplinks and f.port in uplinks):
                continue
            if verdict.receive(state, f.src, port).allow:
                if port in endpoints:
                    delivered[endpoints[port]].append(f.tag)
            else:
                rx[port] += 1
    return Expectation({n: sorted(t) for n, t in delivered.items()}, rx, tx)


def received(got: dict[str, list[Received]]) -> dict[str, list[str]]:
    return {name: sorted(r.tag for r in rs) for name, rs in got.items()}


def drops(filt: OvsFilter) -> tuple[Counter[str], Counter[str]]:
    rx: Counter[str] = Counter()
    tx: Counter[str] = Counter()
    for name, c in filt.counters().items():
        rx[name] = c.rx_dropped
        tx[name] = c.tx_dropped
    return rx, tx
