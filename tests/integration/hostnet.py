"""A throw-away end host in network namespaces, for the integration tier.

Every test builds a throw-away "host" inside network namespaces whose names carry a
per-run random prefix (`hostvlan.testbed.netns.new_prefix()`), and the `prefix` fixture
removes every one of them in a `finally`, whatever the test did. Nothing here touches
the root namespace.

Topology built by `make_host(n)`:

    <prefix>-h   bridge br0 (stp off, multicast snooping off, MAC = uplink0's MAC)
                 ports vnet0 … vnet<n-1> (MAC fe:54:00:00:00:0i, libvirt-style tap MACs)
                 and uplink0 (the host's "physical NIC")
    <prefix>-v<i> eth0, the guest vNIC, MAC 52:54:00:00:00:0i, peer of vnet<i>
    <prefix>-x   eth0, peer of uplink0: the wire / the outside world

IPv6 is disabled in every namespace so no stray frame (RS, MLD, DAD) perturbs counters.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hostvlan.datapath.nft_bridge import NftBridgeFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, Probe, Received, frame

BRIDGE = "br0"
UPLINK = PortName("uplink0")
UPLINK_MAC = Mac("02:00:00:00:0f:01")  # the host's physical NIC, also br0's MAC
OUTSIDE_MAC = Mac("02:00:00:00:0f:02")  # the far end of the wire
OUTSIDE = "outside"  # probe endpoint name of the wire
BRPORT_FORWARDING = 3
UNBOUND = "(unbound)"  # counters() bucket of frames at ports without a binding
HOST = "(host)"  # counters() bucket of copies kept from the host's own stack


def vm_mac(i: int) -> Mac:
    return Mac(f"52:54:00:00:00:{i + 1:02x}")


def vm_tap_mac(i: int) -> Mac:
    return Mac(f"fe:54:00:00:00:{i + 1:02x}")


@dataclass(frozen=True)
class Vm:
    index: int
    ns: str
    mac: Mac  # the guest vNIC's MAC: what the binding uses
    port: PortName  # vnet<i> in the host namespace
    tap_mac: Mac

    @property
    def name(self) -> str:
        return f"vm{self.index}"


@dataclass
class Host:
    prefix: str
    ns: str
    outside_ns: str
    vms: list[Vm]
    _closers: list[Callable[[], None]] = field(default_factory=list)

    # ----- data path -----------------------------------------------------------------
    def new_filter(self) -> NftBridgeFilter:
        """A fresh NftBridgeFilter bound to the host namespace (an agent (re)start)."""
        with netns.inside(self.ns):
            nft = Nft()
        filt = NftBridgeFilter(nft)
        self._closers.append(filt.close)
        return filt

    def nft_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", *args], capture_output=True, text=True, check=check, timeout=30
        )

    def kernel_table(self) -> list[dict[str, Any]] | None:
        """`nft -j list table bridge hostvlan` in the host namespace, None when absent."""
        got = self.nft_cli("-j", "list", "table", "bridge", "hostvlan", check=False)
        if got.returncode != 0:
            assert "No such file or directory" in got.stderr, got.stderr
            return None
        items: list[dict[str, Any]] = json.loads(got.stdout)["nftables"]
        return items

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

    def start(self, state: FilterState | None = None) -> NftBridgeFilter:
        """Install the filter (fail closed: empty unless `state`), then bring links up."""
        filt = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        self.up()
        return filt

    def probe(self, *names: str) -> Probe:
        """A Probe attached to the named endpoints: `vm<i>` (a VM's eth0) and `outside`
        (the wire); all of them when no name is given. Closed with the host."""
        where = {vm.name: vm.ns for vm in self.vms} | {OUTSIDE: self.outside_ns}
        probe = Probe()
        self._closers.append(probe.close)
        for name in names or tuple(where):
            probe.attach(name, where[name])
        return probe

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()


def _forwarding(ipr: Any, ifname: str) -> bool:
    msg = ipr.link("get", index=ipr.link_lookup(ifname=ifname)[0])[0]
    if msg.get_attr("IFLA_OPERSTATE") != "UP":
        return False
    info = msg.get_attr("IFLA_LINKINFO")
    slave = info.get_attr("IFLA_INFO_SLAVE_DATA") if info is not None else None
    return slave is not None and slave.get_attr("IFLA_BRPORT_STATE") == BRPORT_FORWARDING


def _no_ipv6(ns: str) -> None:
    netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")


def build_host(prefix: str, n_vms: int) -> Host:
    """Create the namespaces and links of one host, every link still down."""
    host_ns, outside_ns = f"{prefix}-h", f"{prefix}-x"
    vms = [Vm(i, f"{prefix}-v{i}", vm_mac(i), PortName(f"vnet{i}"), vm_tap_mac(i)) for i in range(n_vms)]
    for ns in [host_ns, outside_ns, *(vm.ns for vm in vms)]:
        netns.create(ns)
        _no_ipv6(ns)
    with netns.iproute(host_ns) as ipr:
        ipr.link("add", ifname=BRIDGE, kind="bridge", br_stp_state=0, br_mcast_snooping=0, address=UPLINK_MAC)
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        ipr.link(
            "add",
            ifname=UPLINK,
            kind="veth",
            address=UPLINK_MAC,
            peer={"ifname": "eth0", "net_ns_fd": outside_ns, "address": OUTSIDE_MAC},
        )
        ipr.link("set", index=ipr.link_lookup(ifname=UPLINK)[0], master=br)
        for vm in vms:
            ipr.link(
                "add",
                ifname=vm.port,
                kind="veth",
                address=vm.tap_mac,
                peer={"ifname": "eth0", "net_ns_fd": vm.ns, "address": vm.mac},
            )
            ipr.link("set", index=ipr.link_lookup(ifname=vm.port)[0], master=br)
        # the bridge keeps the uplink's MAC whatever ports join (set explicitly once more)
        ipr.link("set", index=br, address=UPLINK_MAC)
    return Host(prefix, host_ns, outside_ns, vms)


# ----- states ----------------------------------------------------------------------------
def host_state(
    entries: Mapping[Mac, Iterable[int]],
    bindings: Mapping[PortName, Mac],
) -> FilterState:
    """A host's FilterState: `entries`, the VM `bindings` (port → guest MAC), and the uplink
    bound to the physical NIC's MAC, which is `global` (SPEC §4.1)."""
    all_entries: dict[Mac, frozenset[Lnid]] = {m: frozenset(Lnid(x) for x in ls) for m, ls in entries.items()}
    all_entries[UPLINK_MAC] = frozenset({GLOBAL})
    b = {UPLINK: PortBinding(UPLINK, UPLINK_MAC, uplink=True)}
    for port, mac in bindings.items():
        b[port] = PortBinding(port, mac)
    return FilterState(entries=all_entries, bindings=b)


# ----- what the model says a frame does ----------------------------------------------------
@dataclass(frozen=True)
class Sent:
    """One flooded frame (broadcast / multicast / tagged broadcast) put on the wire."""

    sender: str  # probe endpoint that sent it
    port: PortName  # the bridge port it enters by
    src: Mac
    tag: str


@dataclass
class Expectation:
    delivered: dict[str, list[str]]  # endpoint → sorted tags it must receive
    rx_dropped: Counter[str]  # counter bucket → copies the receive filter must drop
    tx_dropped: Counter[str]  # counter bucket → frames the send check must drop


def expect(state: FilterState, host: Host, frames: Iterable[Sent]) -> Expectation:
    """Deliveries and drop counts the model (`hostvlan.model.verdict`) predicts for floods."""
    endpoints = {vm.port: vm.name for vm in host.vms}
    endpoints[UPLINK] = OUTSIDE
    delivered: dict[str, list[str]] = {name: [] for name in endpoints.values()}
    rx: Counter[str] = Counter()
    tx: Counter[str] = Counter()
    for f in frames:
        if not verdict.send(state, f.port, f.src).allow:
            tx[f.port if f.port in state.bindings else UNBOUND] += 1
            continue
        for port, name in endpoints.items():
            if port == f.port:
                continue  # a bridge never floods back out of the ingress port
            if verdict.receive(state, f.src, port).allow:
                delivered[name].append(f.tag)
            else:
                rx[port if port in state.bindings else UNBOUND] += 1
        if f.src not in state.entries:
            rx[HOST] += 1  # the copy to the host's own stack (input hook)
    return Expectation({n: sorted(t) for n, t in delivered.items()}, rx, tx)


def received(got: Mapping[str, Iterable[Received]]) -> dict[str, list[str]]:
    return {name: sorted(r.tag for r in rs) for name, rs in got.items()}


def drops(filt: NftBridgeFilter) -> tuple[Counter[str], Counter[str]]:
    """(rx_dropped, tx_dropped) per counter bucket, as Counters."""
    rx: Counter[str] = Counter()
    tx: Counter[str] = Counter()
    for name, c in filt.counters().items():
        rx[name] = c.rx_dropped
        tx[name] = c.tx_dropped
    return rx, tx


def counter_delta(before: Counter[str], after: Counter[str]) -> Counter[str]:
    out: Counter[str] = Counter()
    for k in set(before) | set(after):
        if after[k] != before[k]:
            out[k] = after[k] - before[k]
    return out


def flood_set(sender: str, port: PortName, src: Mac, label: str) -> list[tuple[Sent, bytes]]:
    """Broadcast, multicast and 802.1Q-tagged broadcast frames from `src`."""
    out = []
    for kind, dst, vlan in (("bc", BROADCAST, None), ("mc", MULTICAST, None), ("q", BROADCAST, 100)):
        tag = f"{label}/{kind}/{sender}/{src}"
        out.append((Sent(sender, port, src, tag), frame(dst, src, tag, vlan=vlan)))
    return out


def send_all(probe: Probe, frames: Iterable[tuple[Sent, bytes]]) -> list[Sent]:
    sent = []
    for meta, data in frames:
        probe.send(meta.sender, data)
        sent.append(meta)
    return sent
