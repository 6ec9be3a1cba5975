"""A throw-away end host on a Linux bridge, for the integration tier: `Host` runs the default
flavour (send check by the bridge's locked ports, receive filter in tc/eBPF), `LockedHost`
the locked ports with the receive filter in nftables, `NftSendHost` the send check in
nftables too, counted per port (all built by `datapath.factory.build_backend`).

Topology built by `make(n)` of `bridge_hosts` (see `switchhost` for what all back ends share):

    <prefix>-h   bridge br0 (stp off, multicast snooping off, MAC = uplink0's MAC)
                 ports vnet0 … vnet<n-1> (MAC fe:54:00:00:00:0i, libvirt-style tap MACs)
                 and uplink0 (the host's "physical NIC")
    <prefix>-v<i> eth0, the guest vNIC, MAC 52:54:00:00:00:0i, peer of vnet<i>
    <prefix>-x   eth0, peer of uplink0: the wire / the outside world

Where the bridge differs: it floods every group frame to every other port (also to an
unbound one, whose copy the filter drops) and to the host's own stack, whose input hook
drops what no entry knows (bucket "(host)"). Its unicast follows what its FDB learned,
which the model does not know: `expect` covers floods only here.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from hostvlan.datapath.bridge.backend import BridgeFilter
from hostvlan.datapath.bridge.tc import BPFFS
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.testbed import netns

from .switchhost import (
    UPLINK,
    UPLINK_MAC,
    NftHost,
    RecordingNft,
    Sent,
    Vm,
    add_uplink,
    add_vm_veth,
    create_namespaces,
    is_group,
    one_host_per_test,
    vm_mac,
    vm_tap_mac,
)
from .switchhost import host_state as host_state  # the API the other tests of this back end import

BRIDGE = "br0"
BRPORT_FORWARDING = 3
HOST = "(host)"  # counters() bucket of copies kept from the host's own stack

STALE = {
    "empty chain": ["add chain bridge hostvlan leftover"],
    "accepting base chain": [
        "add chain bridge hostvlan leftover { type filter hook forward priority 0 ; policy accept ; }",
        "add set bridge hostvlan known { type ether_addr ; elements = { 02:cc:00:00:00:01 } ; }",
    ],
}


@dataclass
class Host(NftHost):
    KIND: ClassVar[str] = "bridge"
    FAMILY: ClassVar[str] = "bridge"
    SPEC: ClassVar[BackendSpec] = BackendSpec(kind="bridge", send_check="locked", receive_filter="tc")
    OPTIONS: ClassVar[dict[str, Any]] = {"closing": False}  # the tc filter alone (ClosedHost: the default)
    MODELS_UNICAST: ClassVar[bool] = False  # unicast follows the FDB the bridge learned
    COUNTS_SEND: ClassVar[bool] = False  # locked ports drop forged frames uncounted
    WORST_CASE_LIMITS: ClassVar[tuple[float, float]] = (2.0, 0.050)
    STALE: ClassVar[tuple[str, ...]] = tuple(STALE)

    def spec(self) -> BackendSpec:
        """The flavour, with pins of the tc filter's that survive a restart (a new filter), not the host."""
        return dataclasses.replace(self.SPEC, bpf_pins=BPFFS / f"test-{self.ns}")

    def new_filter(self) -> Any:
        """A fresh filter bound to the host namespace (an agent (re)start): new nftables and
        netlink contexts."""
        spec = self.spec()
        if spec.send_check == "locked" and not any(getattr(c, "pins", None) == spec.bpf_pins for c in self._closers):
            self._closers.insert(0, _PinsRemover(spec.bpf_pins))
        with netns.inside(self.ns):
            filt = build_backend(spec, nft=RecordingNft(), **self.OPTIONS)
        self._closers.append(filt.close)
        return filt

    # ----- links ---------------------------------------------------------------------
    def up(self, timeout: float = 10.0) -> None:
        """Bring every link up and wait until each bridge port forwards."""
        for vm in self.vms:
            with netns.iproute(vm.ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
        with netns.iproute(self.outside_ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
        ports = [vm.port for vm in self.vms] + [UPLINK]
        with netns.iproute(self.ns) as ipr:
            for name in [BRIDGE, *ports]:
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            end = time.monotonic() + timeout
            while True:
                pending = [p for p in ports if not _forwarding(ipr, p)]
                if not pending:
                    break
                if time.monotonic() > end:
                    raise AssertionError(f"bridge ports not forwarding after {timeout}s: {pending}")
                time.sleep(0.02)

    def boot(self, state: FilterState | None = None) -> BridgeFilter:
        """Install the filter (fail closed: empty unless `state`), then bring links up."""
        filt: BridgeFilter = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        self.up()
        return filt

    # ----- the model of this switch ------------------------------------------------------
    def forward(self, state: FilterState, f: Sent, live: Mapping[PortName, str]) -> tuple[list[PortName], Counter[str]]:
        """A flood goes to every other port and to the host's stack (input hook: known sources only)."""
        assert is_group(f.dst), f"the bridge's unicast follows its FDB, not the model: {f.tag}"
        own_stack = Counter({HOST: 1}) if f.src not in state.entries else Counter()
        return [p for p in live if p != f.port], own_stack

    # ----- read-back -------------------------------------------------------------------
    def plant_stale(self, case: str) -> None:
        self.nft_cli("add", "table", "bridge", "hostvlan")
        for cmd in STALE[case]:
            self.nft_cli(*cmd.split())
        assert "leftover" in self.chains()

    def worst_case_ports(self, macs: list[Mac]) -> list[PortName]:
        return [PortName(f"vnet{p}") for p in range(len(macs))]  # need not exist: names are matched

    def layout_numbers(self, n_ports: int) -> dict[str, float]:
        hooks = self.hooked_chains()
        # [prerouting,] forward, output, input: none per port (tc: the input chain alone)
        assert hooks == len(self.new_filter().hooks()), hooks
        return {"hooked_chains": hooks}


def _forwarding(ipr: Any, ifname: str) -> bool:
    msg = ipr.link("get", index=ipr.link_lookup(ifname=ifname)[0])[0]
    if msg.get_attr("IFLA_OPERSTATE") != "UP":
        return False
    info = msg.get_attr("IFLA_LINKINFO")
    slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    return slave is not None and slave.get_attr("IFLA_BRPORT_STATE") == BRPORT_FORWARDING


@dataclass
class _PinsRemover:
    """Removes a test host's BPF pins when the host goes (the maps die with their last user)."""

    pins: Any

    def __call__(self) -> None:
        shutil.rmtree(self.pins, ignore_errors=True)
        shutil.rmtree(f"{self.pins}-guard", ignore_errors=True)  # the address guard's (bridge.guard)


@dataclass
class LockedHost(Host):
    KIND: ClassVar[str] = "bridge-locked"
    SPEC: ClassVar[BackendSpec] = BackendSpec(kind="bridge", send_check="locked", receive_filter="nft")


@dataclass
class ClosedHost(Host):
    KIND: ClassVar[str] = "bridge-closed"
    OPTIONS: ClassVar[dict[str, Any]] = {}  # the agent's default: no port open until bound (bridge.closing)
    COUNTS_SEND: ClassVar[bool] = True  # hv_fwd counts forged sources, prerouting the unbound ports' frames


@dataclass
class NftSendHost(Host):
    KIND: ClassVar[str] = "bridge-nft"
    SPEC: ClassVar[BackendSpec] = BackendSpec(kind="bridge", send_check="nft", receive_filter="nft")
    COUNTS_SEND: ClassVar[bool] = True


def build_host(prefix: str, n_vms: int, cls: type[Host] = Host) -> Host:
    """Create the namespaces and links of one host, every link still down."""
    vms = [Vm(i, f"{prefix}-v{i}", vm_mac(i), PortName(f"vnet{i}"), vm_tap_mac(i)) for i in range(n_vms)]
    host_ns, outside_ns = create_namespaces(prefix, vms)
    with netns.iproute(host_ns) as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge", br_stp_state=0, br_mcast_snooping=0, address=UPLINK_MAC)
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        add_uplink(ipr, outside_ns)
        ipr.link("set", index=ipr.link_lookup(ifname=UPLINK)[0], master=br)
        for vm in vms:
            add_vm_veth(ipr, vm)
            ipr.link("set", index=ipr.link_lookup(ifname=vm.port)[0], master=br)
        # the bridge keeps the uplink's MAC whatever ports join (set explicitly once more)
        ipr.link("set", index=br, address=UPLINK_MAC)
    return cls(prefix, host_ns, outside_ns, vms)


@contextmanager
def bridge_hosts(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Factory: `make(n)` builds a host with n VMs (links down, no filter yet)."""
    yield from one_host_per_test(prefix, build_host)


@contextmanager
def closed_hosts(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Factory of hosts whose bridge filter closes every unbound port (the agent's default)."""
    yield from one_host_per_test(prefix, lambda p, n: build_host(p, n, ClosedHost))


@contextmanager
def locked_hosts(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Factory of hosts whose bridge filter receives in nftables (locked ports send-check)."""
    yield from one_host_per_test(prefix, lambda p, n: build_host(p, n, LockedHost))


@contextmanager
def nft_send_hosts(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Factory of hosts whose bridge filter does the send check in nftables."""
    yield from one_host_per_test(prefix, lambda p, n: build_host(p, n, NftSendHost))
