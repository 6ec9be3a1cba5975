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

IPv6 is disabled in every namespace so no stray frame (RS, MLD, DAD) perturbs counters.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, Probe, Received, frame

UPLINK = PortName("uplink0")
UPLINK_MAC = Mac("02:00:00:00:0f:01")  # the host's physical NIC
OUTSIDE_MAC = Mac("02:00:00:00:0f:02")  # the far end of the wire
OUTSIDE = "outside"  # probe endpoint name of the wire
OUTSIDE_IP = "10.66.0.254"
UNBOUND = "(unbound)"
IFF_UP = 0x1
IFF_ALLMULTI = 0x200
NODE_ROOT = Path("/run/hostvlan-tests")
READY_TIMEOUT = 15.0


def vm_mac(i: int) -> Mac:
    return Mac(f"52:54:00:00:00:{i + 1:02x}")


@dataclass(frozen=True)
class Vm:
    index: int
    ns: str
    mac: Mac  # the vNIC MAC = the macvtap's MAC: what the binding uses
    port: PortName  # macvtap<i> in the host namespace

    @property
    def name(self) -> str:
        return f"vm{self.index}"

    @property
    def ip(self) -> str:
        return f"10.66.0.{self.index + 1}"


@dataclass
class StandIn:
    proc: subprocess.Popen[str]
    log: Path


@dataclass
class Host:
    prefix: str
    ns: str
    outside_ns: str
    vms: list[Vm]
    nodes: Path
    standins: dict[PortName, StandIn] = field(default_factory=dict)
    _closers: list[Callable[[], None]] = field(default_factory=list)

    # ----- data path -----------------------------------------------------------------
    def new_filter(self) -> MacvtapFilter:
        """A fresh MacvtapFilter bound to the host namespace (an agent (re)start)."""
        with netns.inside(self.ns):
            nft = Nft()
        filt = MacvtapFilter(nft)
        self._closers.append(filt.close)
        return filt

    def nft_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", *args], capture_output=True, text=True, check=check, timeout=30
        )

    def kernel_table(self) -> list[dict[str, Any]] | None:
        """`nft -j list table netdev hostvlan` in the host namespace, None when absent."""
        got = self.nft_cli("-j", "list", "table", "netdev", "hostvlan", check=False)
        if got.returncode != 0:
            assert "No such file or directory" in got.stderr, got.stderr
            return None
        items: list[dict[str, Any]] = json.loads(got.stdout)["nftables"]
        return items

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

    def set_up(self, port: str, up: bool = True) -> None:
        with netns.iproute(self.ns) as ipr:
            idx = ipr.link_lookup(ifname=port)[0]
            flags = IFF_ALLMULTI | (IFF_UP if up else 0)
            ipr.link("set", index=idx, flags=flags, change=IFF_UP | IFF_ALLMULTI)

    def tap_node(self, port: str) -> Path:
        """A private character-device node for the macvtap `port` (see module doc)."""
        with netns.iproute(self.ns) as ipr:
            ifindex = ipr.link_lookup(ifname=port)[0]
        got = subprocess.run(
            ["ip", "netns", "exec", self.ns, "cat", f"/sys/class/net/{port}/macvtap/tap{ifindex}/dev"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        major, minor = (int(x) for x in got.stdout.strip().split(":"))
        node = self.nodes / f"tap-{port}"
        if node.exists():
            node.unlink()
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        return node

    # ----- VMs ---------------------------------------------------------------------------
    def start_vm(self, vm: Vm, up: bool = True) -> None:
        """Bring the VM's macvtap up (unless `up` is False) and start its QEMU stand-in;
        returns once the guest's eth0 is up."""
        assert vm.port not in self.standins, f"{vm.name} already runs"
        self.set_up(vm.port, up)
        node = self.tap_node(vm.port)
        log = self.nodes / f"standin-{vm.port}.log"
        cmd = [sys.executable, "-m", "hostvlan.testbed.vmtap", "--tap", str(node), "--netns", vm.ns]
        cmd += ["--ifname", "eth0", "--ip", f"{vm.ip}/24"]
        with open(log, "w") as err:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.standins[vm.port] = StandIn(proc, log)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
        line = proc.stdout.readline().strip() if ready else ""
        assert line == f"ready {vm.port} eth0 {vm.mac}", f"stand-in of {vm.name}: {line!r} {log.read_text()!r}"

    def stop_vm(self, vm: Vm) -> str:
        """Stop the VM's stand-in (its eth0 disappears); returns the stand-in's log."""
        standin = self.standins.pop(vm.port)
        standin.proc.terminate()
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
        for vm in self.vms if vms is None else vms:
            self.start_vm(vm)

    def start(self, state: FilterState | None = None, vms: Iterable[Vm] | None = None) -> MacvtapFilter:
        """Install the filter (empty unless `state`), then bring `vms` (default: the bound
        ones) up: the contract's order."""
        filt = self.new_filter()
        filt.sync(state or FilterState())
        filt.apply()
        bound = (state or FilterState()).bindings
        self.up([vm for vm in self.vms if vm.port in bound] if vms is None else vms)
        return filt

    def probe(self, *names: str) -> Probe:
        """A Probe on the named endpoints (`vm<i>`, `outside`); all running ones by default."""
        where = {vm.name: vm.ns for vm in self.vms if vm.port in self.standins} | {OUTSIDE: self.outside_ns}
        probe = Probe()
        self._closers.append(probe.close)
        for name in names or tuple(where):
            probe.attach(name, where[name])
        return probe

    def vm(self, name: str) -> Vm:
        return next(vm for vm in self.vms if vm.name == name)

    def close(self) -> None:
        errors: list[BaseException] = []
        for port in list(self.standins):
            try:
                self.stop_vm(next(vm for vm in self.vms if vm.port == port))
            except BaseException as exc:  # keep stopping the others
                errors.append(exc)
        while self._closers:
            self._closers.pop()()
        shutil.rmtree(self.nodes, ignore_errors=True)
        if errors:
            raise errors[0]


def _no_ipv6(ns: str) -> None:
    netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")


def build_host(prefix: str, n_vms: int) -> Host:
    """Create the namespaces, the uplink (up) and the VMs' macvtaps (down, no stand-in)."""
    host_ns, outside_ns = f"{prefix}-h", f"{prefix}-x"
    vms = [Vm(i, f"{prefix}-v{i}", vm_mac(i), PortName(f"macvtap{i}")) for i in range(n_vms)]
    nodes = NODE_ROOT / prefix
    nodes.mkdir(parents=True, exist_ok=False)
    host = Host(prefix, host_ns, outside_ns, vms, nodes)
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
        ipr.link("set", index=ipr.link_lookup(ifname=UPLINK)[0], state="up")
    with netns.iproute(outside_ns) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=idx, address=OUTSIDE_IP, prefixlen=24)
        ipr.link("set", index=idx, state="up")
    for vm in vms:
        host.add_macvtap(vm.port, vm.mac)
    netns.wait_operstate_up([outside_ns])
    return host


def host_factory(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Body of a `make_host` fixture: `make(n)` builds a host with n VMs; everything it
    started is stopped afterwards (stand-ins, sockets, nft contexts, device nodes), and
    the `prefix` fixture then removes the namespaces."""
    hosts: list[Host] = []

    def make(n_vms: int) -> Host:
        assert not hosts, "one host per test"
        try:
            host = build_host(prefix, n_vms)
        except BaseException:
            shutil.rmtree(NODE_ROOT / prefix, ignore_errors=True)
            netns.sweep(prefix)
            raise
        hosts.append(host)
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.close()  # stand-ins, sockets and nft contexts first: they pin namespaces
        shutil.rmtree(NODE_ROOT / prefix, ignore_errors=True)
        if NODE_ROOT.exists() and not any(NODE_ROOT.iterdir()):
            NODE_ROOT.rmdir()


# ----- states ----------------------------------------------------------------------------
def host_state(entries: Mapping[Mac, Iterable[int]], bindings: Mapping[PortName, Mac]) -> FilterState:
    """A host's FilterState: `entries`, the VM `bindings` (macvtap → vNIC MAC), and the
    uplink bound to the physical NIC's MAC, which is `global` (SPEC §4)."""
    all_entries: dict[Mac, frozenset[Lnid]] = {m: frozenset(Lnid(x) for x in ls) for m, ls in entries.items()}
    all_entries[UPLINK_MAC] = frozenset({GLOBAL})
    b = {UPLINK: PortBinding(UPLINK, UPLINK_MAC, uplink=True)}
    for port, mac in bindings.items():
        b[port] = PortBinding(port, mac)
    return FilterState(entries=all_entries, bindings=b)


# ----- what the model says a frame does ----------------------------------------------------
@dataclass(frozen=True)
class Sent:
    sender: str  # probe endpoint that sent it
    port: PortName  # the port it enters by (a VM's macvtap, or the uplink for the wire)
    src: Mac
    dst: Mac
    tag: str


@dataclass
class Expectation:
    delivered: dict[str, list[str]]  # endpoint → sorted tags it must receive
    rx_dropped: Counter[str]  # counter bucket → copies the receive filter must drop
    tx_dropped: Counter[str]  # counter bucket → frames the send check must drop


def expect(state: FilterState, host: Host, frames: Iterable[Sent]) -> Expectation:
    """Deliveries and drop counts the model (`hostvlan.model.verdict`) predicts.

    The forwarding decision is macvlan's (bridge mode): a group address goes to every
    other port, a VM's MAC to that VM's macvtap, any other unicast from a VM to the
    uplink (the wire), and from the wire to nobody. The verdict on each copy is the
    model's. A VM whose port is unbound is down (the contract): it sends nothing and is
    no output port.
    """
    running = {vm.port: vm for vm in host.vms if vm.port in host.standins}
    endpoints = {p: vm.name for p, vm in running.items()} | {UPLINK: OUTSIDE}
    owner = {vm.mac: vm.port for vm in running.values()}
    delivered: dict[str, list[str]] = {name: [] for name in endpoints.values()}
    rx: Counter[str] = Counter()
    tx: Counter[str] = Counter()
    for f in frames:
        assert f.port in endpoints, f"{f.port} is not running"
        if not verdict.send(state, f.port, f.src).allow:
            tx[f.port] += 1
            continue
        if int(f.dst[:2], 16) & 1:
            outs = [p for p in endpoints if p != f.port]
        elif f.dst in owner:
            outs = [owner[f.dst]] if owner[f.dst] != f.port else []
        else:
            outs = [UPLINK] if f.port != UPLINK else []
        for port in outs:
            if verdict.receive(state, f.src, port).allow:
                delivered[endpoints[port]].append(f.tag)
            else:
                rx[port if port in state.bindings else UNBOUND] += 1
    return Expectation({n: sorted(t) for n, t in delivered.items()}, rx, tx)


def received(got: Mapping[str, Iterable[Received]]) -> dict[str, list[str]]:
    return {name: sorted(r.tag for r in rs) for name, rs in got.items()}


def drops(filt: MacvtapFilter) -> tuple[Counter[str], Counter[str]]:
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
        out.append((Sent(sender, port, src, dst, tag), frame(dst, src, tag, vlan=vlan)))
    return out


def unicast(sender: str, port: PortName, src: Mac, dst: Mac, label: str, vlan: int | None = None) -> tuple[Sent, bytes]:
    tag = f"{label}/uc{'q' if vlan else ''}/{sender}/{src}>{dst}"
    return Sent(sender, port, src, dst, tag), frame(dst, src, tag, vlan=vlan)


def send_all(probe: Probe, frames: Iterable[tuple[Sent, bytes]], pace: float = 0.0005) -> list[Sent]:
    """Send frames, paced so no stand-in queue overflows (the stand-ins are Python)."""
    sent = []
    for meta, data in frames:
        probe.send(meta.sender, data)
        sent.append(meta)
        time.sleep(pace)
    return sent
