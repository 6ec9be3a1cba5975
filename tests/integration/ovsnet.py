"""A throw-away end host on Open vSwitch (userspace datapath), for the integration tier.

`ovs_host(prefix)` is a context manager: it builds namespaces whose names carry the
per-test prefix, starts a private ovsdb-server and ovs-vswitchd INSIDE the host
namespace (their database, sockets, pid files and logs in a fresh temporary directory;
`OVS_RUNDIR`/`OVS_DBDIR`/`OVS_LOGDIR`/`OVS_SYSCONFDIR` point there), and on exit stops
both daemons (SIGTERM, then SIGKILL), checks they are gone and removes every namespace.
Nothing touches the root namespace: the bridge's ports live in the host namespace.

Topology (same names as every back end's, see `switchhost`):

    <prefix>-h   ovsdb-server + ovs-vswitchd; OVS bridge br0 (datapath_type=netdev,
                 fail-mode=secure), ports vnet0 … vnet<n-1> (MAC fe:54:00:00:00:0i,
                 external_ids:attached-mac = the guest MAC) and uplink0
    <prefix>-v<i> eth0, the guest vNIC, MAC 52:54:00:00:00:0i, peer of vnet<i>
    <prefix>-x   eth0, peer of uplink0: the wire

Over veth the userspace datapath forwards what AF_PACKET hands it, so every sender has
tx checksum offload, TSO and GSO off (`ethtool -K eth0 tx off tso off gso off`).

Where OVS differs (`OvsHost.forward`): a frame whose source no entry knows is dropped
once, before any copy (bucket "(unknown)"); copies go only to bound ports, never back to
the ingress port nor from an uplink to an uplink; unicast to a VM's MAC goes to its port,
to a known MAC without a local port to the uplink, to any other MAC everywhere (filtered
per copy). Its datapath caches flows, so verdicts are checked over a few round trips.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hostvlan.datapath.cleanup import clean_host
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel.ovs_proc import OvsTools
from hostvlan.datapath.kernel.ovsdb import OvsDb
from hostvlan.datapath.ovs import COOKIE_BASE, COOKIE_MASK, UNKNOWN, OvsFilter
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns
from hostvlan.testbed.ovsd import OvsDaemons as _OvsDaemons

from .switchhost import (
    UPLINK,
    Sent,
    SwitchHost,
    Vm,
    add_uplink,
    add_vm_veth,
    create_namespaces,
    is_group,
    vm_mac,
    vm_tap_mac,
)

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


SPEC = BackendSpec(kind="ovs", ovs_bridge=BRIDGE)
FOREIGN_FLOW = "table=100,priority=1,cookie=0x1234,actions=drop"  # someone else's flow
STALE_FLOWS = [
    f"table=4,priority=999,cookie={COOKIE_BASE | 0x77:#x},actions=goto_table:5",  # would allow everything
    f"table=200,priority=0,cookie={COOKIE_BASE | 1 << 32:#x},actions=note:64.00.6f.6c.64",
]
FAILING_FLOW = "flow add table=100,priority=1,cookie=0x4856000000000000,actions=group:4242\n"  # no such group


@dataclass
class OvsHost(SwitchHost):
    daemons: OvsDaemons
    db: OvsDb
    attached: set[PortName] = field(default_factory=set)  # VM ports on the bridge

    KIND: ClassVar[str] = "ovs"
    UNKNOWN_SOURCE: ClassVar[str | None] = UNKNOWN
    CACHE_ROUNDS: ClassVar[int] = 3  # the datapath's flow cache must not keep an old verdict
    WORST_CASE_LIMITS: ClassVar[tuple[float, float]] = (20.0, 0.100)
    STALE: ClassVar[tuple[str, ...]] = ("flows of another layout",)

    def attach(self, vm: Vm) -> None:
        """Add a VM's port to the bridge, tagged with its vNIC MAC (as OpenStack does)."""
        self.db.add_port(BRIDGE, vm.port, attached_mac=vm.mac, iface_id=vm.name)
        self.attached.add(vm.port)

    @property
    def tools(self) -> OvsTools:
        return self.daemons.tools

    @property
    def target(self) -> str:
        return self.tools.of_target(BRIDGE)

    # ----- the filter ------------------------------------------------------------------
    def new_filter(self) -> OvsFilter:
        """A fresh OvsFilter with its own OVSDB connection (an agent (re)start), recording
        every ovs-ofctl call."""
        db = OvsDb(self.tools.db_remote)
        self._closers.append(db.close)
        tools = self.tools
        rec = RecordingTools(tools.rundir, tools.db, tools.vswitchd_ctl)
        object.__setattr__(rec, "calls", [])
        filt = build_backend(SPEC, ovs_tools=rec, ovsdb=db)
        assert isinstance(filt, OvsFilter)
        self._closers.append(filt.close)  # its drop events' OpenFlow connection
        return filt

    def clean(self) -> list[str]:
        """`hostvlan agent --cleanup --backend ovs` in the host namespace."""
        with netns.inside(self.ns):
            return clean_host(SPEC, ovs_tools=self.tools, ovsdb=self.db)

    def calls(self, filt: Any) -> list[tuple[str, int]]:
        tools = filt._tools
        assert isinstance(tools, RecordingTools)
        out = [("txn" if args[:1] == ("bundle",) else args[0], lines) for args, lines in tools.calls]
        tools.calls.clear()
        return out

    def max_txn(self, elements: int, ports: bool) -> int:
        # a flow or two per element, plus the forwarding / port flows it touches, and the digest
        return 3 * elements + 4 if ports else 2 * elements + 2

    def boot(self, state: FilterState | None = None) -> OvsFilter:
        """Install the filter (fail closed: empty unless `state`), then bring links up."""
        filt = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        self.up()
        return filt

    start = boot  # the name the other tests of this back end use

    # ----- links -----------------------------------------------------------------------
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
        out = self.tools.ofctl("show", self.target)
        down = [p for p in ports if f"({p}):" not in out]
        return not down and "LINK_DOWN" not in out.split("LOCAL")[0]

    def add_vm_port(self, vm: Vm) -> None:
        """Create a VM's veth pair (links down) without adding it to the bridge."""
        with netns.iproute(self.ns) as ipr:
            add_vm_veth(ipr, vm)

    # ----- the model of this switch (see module doc) -------------------------------------
    def forward(self, state: FilterState, f: Sent, live: Mapping[PortName, str]) -> tuple[list[PortName], Counter[str]]:
        if f.src not in state.entries:
            return [], Counter({UNKNOWN: 1})  # the known-source check, before any copy
        uplinks = {p for p, b in state.bindings.items() if b.uplink}
        targets = _targets(state, f.dst)
        ports = [
            p
            for p in (targets if targets is not None else list(state.bindings))
            if p != f.port and not (p in uplinks and f.port in uplinks)
        ]
        return ports, Counter()

    # ----- read-back -------------------------------------------------------------------
    def dump_flows(self, stats: bool = False) -> list[str]:
        """hostvlan's flows as ovs-ofctl prints them (sorted; durations/counters only with stats)."""
        args = [] if stats else ["--no-stats"]
        out = self.tools.ofctl(*args, "dump-flows", self.target, f"cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}")
        return sorted(line.strip() for line in out.splitlines() if "cookie=" in line)

    def groups(self) -> list[str]:
        out = self.tools.ofctl("dump-groups", self.target)
        return [line.strip() for line in out.splitlines() if "group_id" in line]

    def installed(self) -> bool:
        return bool(self.dump_flows())

    def leftovers(self) -> list[str]:
        return self.dump_flows() + self.groups()

    def plant_foreign(self) -> None:
        self.tools.ofctl("add-flow", self.target, FOREIGN_FLOW)

    def foreign_intact(self) -> bool:
        return "cookie=0x1234" in self.tools.ofctl("dump-flows", self.target)

    def kernel_dump(self) -> object:
        return self.dump_flows(), self.groups()

    def objects(self) -> object:
        """Each flow (without its stats) → seconds since it was added."""
        out = {}
        for line in self.dump_flows(stats=True):
            d = re.search(r"duration=([0-9.]+)s", line)
            assert d is not None, line
            key = re.sub(r"(duration|n_packets|n_bytes|idle_age|hard_age)=[^,]*, ", "", line)
            out[key] = float(d.group(1))
        return out

    def same_objects(self, before: object, after: object) -> bool:
        """The same flows, none re-added (a re-added flow's duration restarts)."""
        assert isinstance(before, dict) and isinstance(after, dict)
        return bool(before) and set(before) == set(after) and all(after[k] >= before[k] for k in before)

    def table_handle(self) -> int | None:
        return None  # no table: the flows are the objects (`objects`)

    def plant_stale(self, case: str) -> None:
        assert case == self.STALE[0], case
        for flow in STALE_FLOWS:
            self.tools.ofctl("add-flow", self.target, flow)

    def stale_gone(self) -> bool:
        return not any("priority=999" in line for line in self.dump_flows())  # the one that would allow all

    def wipe(self) -> None:
        """A reset switch: flows AND groups gone, as after an ovs-vswitchd restart."""
        self.tools.ofctl("del-flows", self.target)
        self.tools.ofctl("del-groups", self.target)

    def break_next_apply(self, filt: Any) -> None:
        """The switch rejects the bundle (a flow referring to a group that does not exist)."""
        real = filt._tools.ofctl

        def failing(*args: str, stdin: str | None = None) -> str:
            if args[:1] == ("bundle",) and stdin:
                stdin += FAILING_FLOW
            return str(real(*args, stdin=stdin))

        object.__setattr__(filt._tools, "ofctl", failing)

    def mend(self, filt: Any) -> None:
        object.__delattr__(filt._tools, "ofctl")

    def worst_case_ports(self, macs: list[Mac]) -> list[PortName]:
        return [PortName(f"vnet{p}") for p in range(len(macs))]  # their facts are programmed all the same

    def layout_numbers(self, n_ports: int) -> dict[str, float]:
        return {"flows_installed": len(self.dump_flows())}


def _targets(state: FilterState, dst: Mac) -> list[PortName] | None:
    """Ports a frame to `dst` is copied to (None: every bound port, a flood)."""
    if is_group(dst):
        return None
    local = [p for p, b in state.bindings.items() if not b.uplink and b.mac == dst]
    if local:
        return local
    if dst in state.entries:
        return [p for p, b in state.bindings.items() if b.uplink]
    return None


@contextmanager
def ovs_host(prefix: str, n_vms: int, ports_on_bridge: int | None = None) -> Iterator[OvsHost]:
    """Build the host (links down, no filter yet); tear everything down on exit.

    `ports_on_bridge`: how many VM ports join the bridge (default all); the others exist
    as veth pairs only, so a test can add them later (`OvsDb.add_port`)."""
    vms = [Vm(i, f"{prefix}-v{i}", vm_mac(i), PortName(f"vnet{i}"), vm_tap_mac(i)) for i in range(n_vms)]
    with ExitStack() as stack:
        stack.callback(_sweep, prefix)
        host_ns, outside_ns = create_namespaces(prefix, vms)
        with netns.iproute(host_ns) as ipr:
            add_uplink(ipr, outside_ns)
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
