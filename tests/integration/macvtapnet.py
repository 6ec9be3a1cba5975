"""A throw-away macvtap host in network namespaces, for the integration tier.

Topology built by `build_host(prefix, n)` (every namespace `<prefix>-…`, removed by the
`prefix` fixture of conftest whatever happens; nothing touches the root namespace):

    <prefix>-h    uplink0: veth, the host's "physical NIC" (MAC 02:00:00:00:0f:01),
                  the lower device of macvtap0 … macvtap<n-1> (mode bridge, MAC
                  52:54:00:00:00:0i = the vNIC MAC, allmulticast on), created DOWN
    <prefix>-x    eth0, peer of uplink0: the wire (10.66.0.254/24)
    <prefix>-v<i> eth0: the guest NIC, a TAP device made by the QEMU stand-in
                  (`python -m hostvlan.testbed.vmtap`, one process per VM) that copies
                  frames to and from macvtap<i>'s character device (10.66.0.<i+1>/24)

The filter lives in `<prefix>-h`, on the macvtaps' and uplink0's hooks; the VM
namespaces hold nothing but the guest NIC. The fail-closed contract of the back end
(`hostvlan.datapath.macvtap`) is followed: a macvtap is brought up (and its stand-in
started) only once its port is bound; an unbound VM's macvtap stays down.

The character device: /dev/tapN is named after the macvtap's ifindex, which is per
namespace, so parallel namespaces may race for one devtmpfs node; each stand-in gets a
private node made from the (major, minor) the host namespace's sysfs gives.

Where macvtap differs (see `switchhost`): the forwarding is macvlan's (bridge mode): a
group frame goes to every other port that is up, a frame to a running VM's MAC to that
macvtap (even from that very macvtap: a hairpin the bridge and OVS never make), any
other unicast from a VM to the uplink and from the wire to nobody. An
unbound VM's macvtap is down (`boot`): its frames never enter, no copy goes to it, and a
down macvtap's MAC is no local port. An unbound uplink has no hook at all.

IPv6 is disabled in every namespace so no stray frame (RS, MLD, DAD) perturbs counters.
"""

from __future__ import annotations

import select
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hostvlan.datapath.factory import BackendSpec
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import Probe
from hostvlan.testbed.vmtap import private_tap_node

from .switchhost import OUTSIDE as OUTSIDE
from .switchhost import OUTSIDE_MAC as OUTSIDE_MAC
from .switchhost import UPLINK as UPLINK
from .switchhost import Churn, NftHost, Sent, Vm, add_uplink, create_namespaces, is_group, one_host_per_test, vm_mac
from .switchhost import host_state as host_state
from .switchhost import received as received

OUTSIDE_IP = "10.66.0.254"
IFF_UP = 0x1
IFF_ALLMULTI = 0x200
NODE_ROOT = Path("/run/hostvlan-tests")
READY_TIMEOUT = 15.0
STALE_CMDS = [
    ["add", "table", "netdev", "hostvlan"],
    ["add", "set", "netdev", "hostvlan", "known", "{ type ether_addr ; elements = { 02:cc:00:00:00:01 } ; }"],
    [
        "add",
        "chain",
        "netdev",
        "hostvlan",
        "leftover",
        "{ type filter hook ingress device uplink0 priority 0 ; policy accept ; }",
    ],
]


@dataclass
class StandIn:
    proc: subprocess.Popen[str]
    log: Path


@dataclass
class Host(NftHost):
    nodes: Path
    standins: dict[PortName, StandIn] = field(default_factory=dict)
    up_ports: set[PortName] = field(default_factory=set)  # macvtaps that are up
    wire_up: bool = False  # the wire's link is known to be up (`wait_wire`)

    KIND: ClassVar[str] = "macvtap"
    FAMILY: ClassVar[str] = "netdev"
    SPEC: ClassVar[BackendSpec] = BackendSpec(kind="macvtap")
    OPTIONS: ClassVar[dict[str, Any]] = {}  # the default: per-port chains and the guard on macvtap*
    UNBOUND_UP: ClassVar[bool] = False  # the contract: an unbound macvtap stays down
    FLOODS_UNKNOWN_UNICAST: ClassVar[bool] = False  # macvlan: unicast no macvtap owns goes to the wire
    PACE: ClassVar[float] = 0.0005  # the stand-ins are Python: no queue may overflow
    CHURN: ClassVar[Churn] = Churn(150, 0.0006, 0.002)  # stay well below the stand-ins' rate
    WORST_CASE_LIMITS: ClassVar[tuple[float, float]] = (3.0, 0.050)
    STALE: ClassVar[tuple[str, ...]] = ("accepting base chain",)

    def links(self) -> list[Any]:
        with netns.iproute(self.ns) as ipr:
            return list(ipr.get_links())

    # ----- devices ---------------------------------------------------------------------
    def add_macvtap(self, port: str, mac: Mac) -> None:
        """Create a macvtap on the uplink, DOWN (the contract: bind, then bring it up)."""
        with netns.iproute(self.ns) as ipr:
            lower = ipr.link_lookup(ifname=UPLINK)[0]
            ipr.link("add", ifname=port, kind="macvtap", link=lower, macvtap_mode="bridge", address=mac)

    def del_macvtap(self, port: str) -> None:
        with netns.iproute(self.ns) as ipr:
            ipr.link("del", index=ipr.link_lookup(ifname=port)[0])
        self.up_ports.discard(PortName(port))

    def set_up(self, port: str, up: bool = True) -> None:
        with netns.iproute(self.ns) as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            flags = IFF_ALLMULTI | (IFF_UP if up else 0)
            ipr.link("set", index=idx, flags=flags, change=IFF_UP | IFF_ALLMULTI)
        (self.up_ports.add if up else self.up_ports.discard)(PortName(port))

    def tap_node(self, port: str) -> Path:
        """A private character-device node for the macvtap `port` (see module doc)."""
        with netns.iproute(self.ns) as ipr:
            ifindex = ipr.link_lookup(ifname=port)[0]
        return private_tap_node(self.ns, port, ifindex, self.nodes / f"tap-{port}")

    # ----- VMs ---------------------------------------------------------------------------
    def start_vm(self, vm: Vm, up: bool = True) -> None:
        """Bring the VM's macvtap up (unless `up` is False) and start its QEMU stand-in;
        returns once the guest's eth0 is up."""
        self.run_vms([(vm, up)])

    def run_vms(self, vms: Iterable[tuple[Vm, bool]]) -> None:
        """`start_vm` for each (VM, up), the stand-ins starting side by side; returns once
        every guest's eth0 is up, and the wire too."""
        started = []
        for vm, up in vms:
            assert vm.port not in self.standins, f"{vm.name} already runs"
            self.set_up(vm.port, up)
            node = self.tap_node(vm.port)
            log = self.nodes / f"standin-{vm.port}.log"
            cmd = [sys.executable, "-m", "hostvlan.testbed.vmtap", "--tap", str(node), "--netns", vm.ns]
            cmd += ["--ifname", "eth0", "--ip", f"{vm.ip}/24"]
            with open(log, "w") as err:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            self.standins[vm.port] = StandIn(proc, log)
            started.append((vm, proc, log))
        for vm, proc, log in started:
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
            line = proc.stdout.readline().strip() if ready else ""
            assert line == f"ready {vm.port} eth0 {vm.mac}", f"stand-in of {vm.name}: {line!r} {log.read_text()!r}"
        self.wait_wire()

    def wait_wire(self) -> None:
        """Wait (once) until the wire's link is up: the kernel's linkwatch may take a second,
        which passes while the stand-ins start."""
        if not self.wire_up:
            netns.wait_operstate_up([self.outside_ns])
            self.wire_up = True

    def stop_vm(self, vm: Vm) -> str:
        """Stop the VM's stand-in (its eth0 disappears); returns the stand-in's log."""
        self.standins[vm.port].proc.terminate()
        return self._reap(vm)

    def _reap(self, vm: Vm) -> str:
        """Wait for a signalled stand-in to exit (0: it shut down cleanly); returns its log."""
        standin = self.standins.pop(vm.port)
        try:
            rc = standin.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            standin.proc.kill()
            rc = standin.proc.wait(timeout=10)
        if standin.proc.stdout is not None:
            standin.proc.stdout.close()
        text = standin.log.read_text()
        assert rc == 0, f"stand-in of {vm.name} exited {rc}: {text}"
        return text

    def up(self, vms: Iterable[Vm] | None = None) -> None:
        self.run_vms((vm, True) for vm in (self.vms if vms is None else vms))

    def start(self, state: FilterState | None = None, vms: Iterable[Vm] | None = None) -> MacvtapFilter:
        """Install the filter (empty unless `state`), then bring `vms` (default: the bound
        ones) up: the contract's order."""
        filt = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        bound = (state or FilterState()).bindings
        self.up([vm for vm in self.vms if vm.port in bound] if vms is None else vms)
        return filt

    def boot(self, state: FilterState | None = None) -> MacvtapFilter:
        """Install the filter (empty unless `state`), then start every VM's "QEMU", the
        bound ones' macvtaps up, the unbound ones' down (the contract)."""
        filt = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        bound = (state or FilterState()).bindings
        self.run_vms((vm, vm.port in bound) for vm in self.vms)
        assert filt.unguarded(self.links()) == []
        return filt

    def probe(self, *names: str) -> Probe:
        self.wait_wire()
        return super().probe(*names)

    def bring_up(self, vm: Vm) -> None:
        self.set_up(vm.port)

    def take_down(self, vm: Vm) -> None:
        self.set_up(vm.port, up=False)

    def running(self) -> list[Vm]:
        return [vm for vm in self.vms if vm.port in self.standins]

    def live_ports(self) -> dict[PortName, str]:
        return {vm.port: vm.name for vm in self.running() if vm.port in self.up_ports} | {UPLINK: OUTSIDE}

    # ----- the model of this switch (see module doc) -------------------------------------
    def send_checked(self, state: FilterState, port: PortName) -> bool:
        return port != UPLINK or port in state.bindings  # an unbound uplink has no hook

    def forward(self, state: FilterState, f: Sent, live: Mapping[PortName, str]) -> tuple[list[PortName], Counter[str]]:
        owner = {vm.mac: vm.port for vm in self.vms if vm.port in live}
        if is_group(f.dst):
            return [p for p in live if p != f.port], Counter()
        if f.dst in owner:  # also the sender's own: macvlan hands it back (a hairpin)
            return [owner[f.dst]], Counter()
        return ([UPLINK] if f.port != UPLINK else []), Counter()

    # ----- read-back -------------------------------------------------------------------
    def plant_stale(self, case: str) -> None:
        assert case == self.STALE[0], case
        for cmd in STALE_CMDS:
            self.nft_cli(*cmd)
        assert "leftover" in self.chains()

    def worst_case_ports(self, macs: list[Mac]) -> list[PortName]:
        ports = [PortName(f"macvtap{p}") for p in range(len(macs))]
        for port, mac in zip(ports, macs, strict=True):  # real devices: every bound port gets its two hooks
            self.add_macvtap(port, mac)
        return ports

    def layout_numbers(self, n_ports: int) -> dict[str, float]:
        hooks = self.hooked_chains()
        assert hooks == 2 * n_ports + 1, hooks  # two per VM port, one for the uplink
        return {"hooked_chains": hooks}

    def vm(self, name: str) -> Vm:
        return next(vm for vm in self.vms if vm.name == name)

    def close(self) -> None:
        errors: list[BaseException] = []
        for standin in self.standins.values():  # all at once, then reap each
            standin.proc.terminate()
        for port in list(self.standins):
            try:
                self._reap(next(vm for vm in self.vms if vm.port == port))
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        while self._closers:
            self._closers.pop()()
        shutil.rmtree(self.nodes, ignore_errors=True)
        if errors:
            raise errors[0]


def build_host(prefix: str, n_vms: int) -> Host:
    """Create the namespaces, the uplink (brought up) and the VMs' macvtaps (down, no stand-in)."""
    vms = [Vm(i, f"{prefix}-v{i}", vm_mac(i), PortName(f"macvtap{i}")) for i in range(n_vms)]
    nodes = NODE_ROOT / prefix
    nodes.mkdir(parents=True, exist_ok=False)
    host_ns, outside_ns = create_namespaces(prefix, vms)
    host = Host(prefix, host_ns, outside_ns, vms, nodes)
    with netns.iproute(host_ns) as ipr:
        add_uplink(ipr, outside_ns)
        ipr.link("set", index=ipr.link_lookup(ifname=UPLINK)[0], state="up")
    with netns.iproute(outside_ns) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=idx, address=OUTSIDE_IP, prefixlen=24)
        ipr.link("set", index=idx, state="up")
    for vm in vms:
        host.add_macvtap(vm.port, vm.mac)
    return host  # the wire comes up meanwhile: see `wait_wire`


def host_factory(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Body of a `make_host` fixture: `make(n)` builds a host with n VMs; everything it
    started is stopped afterwards (stand-ins, sockets, nft contexts, device nodes), and
    the `prefix` fixture then removes the namespaces."""

    def cleanup() -> None:
        shutil.rmtree(NODE_ROOT / prefix, ignore_errors=True)
        if NODE_ROOT.exists() and not any(NODE_ROOT.iterdir()):
            NODE_ROOT.rmdir()

    yield from one_host_per_test(prefix, build_host, cleanup)


macvtap_hosts = contextmanager(host_factory)
