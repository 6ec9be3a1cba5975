"""The host under test, as every data-path back end's tests see it; the model's predictions.

"Same contract, same tests": the shared tests (`test_backend_*.py`) run the same frames
against the Linux bridge (`hostnet`), Open vSwitch (`ovsnet`) and macvtap (`macvtapnet`)
through this interface, and compare what arrives with what the model
(`hostvlan.model.verdict`) says. Each back end's host subclasses `SwitchHost` and says,
in a few documented class attributes and methods, where its switch differs:

- `forward`: which ports the switch copies a frame to (the bridge floods, OVS forwards
  by the table's facts, macvtap by macvlan's rules) and the drops it counts itself;
- `UNBOUND_UP`: whether an unbound VM's port is up (bridge, OVS: the filter alone guards
  it) or down (macvtap: the contract keeps it down, so its frames never enter);
- `MODELS_UNICAST`: whether `expect` covers unicast (not on the learning bridge);
- `COUNTS_SEND`: whether the send check counts what it drops (not when the Linux bridge's
  locked ports do the send check: the bridge drops forged frames uncounted);
- the switch's read-back (`installed`, `kernel_dump`, `objects`, …) and the size of its
  transactions (`calls`, `max_txn`).

Every namespace carries the per-test prefix; the `prefix` fixture removes them all.
Topology, in every back end (names alike so the same frames and the same model apply):

    <prefix>-h    the switch, its VM ports and uplink0 (the host's "physical NIC",
                  MAC 02:00:00:00:0f:01, bound as the uplink, `global`)
    <prefix>-v<i> eth0, the guest vNIC, MAC 52:54:00:00:00:0i
    <prefix>-x    eth0, peer of uplink0: the wire (MAC 02:00:00:00:0f:02)

IPv6 is disabled in every namespace so no stray frame (RS, MLD, DAD) perturbs counters.
"""

from __future__ import annotations

import abc
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hostvlan.datapath.base import TenantFilter
from hostvlan.datapath.cleanup import clean_host
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel.nfnl import FAMILIES, Nfnl
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.datapath.macvtap_guard import GUARD_TABLE
from hostvlan.model import verdict
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding
from hostvlan.testbed import netns
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, Probe, Received, frame

UPLINK = PortName("uplink0")
UPLINK_MAC = Mac("02:00:00:00:0f:01")  # the host's physical NIC
OUTSIDE_MAC = Mac("02:00:00:00:0f:02")  # the far end of the wire
OUTSIDE = "outside"  # probe endpoint name of the wire
UNBOUND = "(unbound)"  # counters() bucket of frames at ports without a binding
H = TypeVar("H", bound="SwitchHost")


def vm_mac(i: int) -> Mac:
    return Mac(f"52:54:00:00:00:{i + 1:02x}")


def vm_tap_mac(i: int) -> Mac:
    return Mac(f"fe:54:00:00:00:{i + 1:02x}")


@dataclass(frozen=True)
class Vm:
    index: int
    ns: str
    mac: Mac  # the guest vNIC's MAC: what the binding uses
    port: PortName  # its port on the switch, in the host namespace
    tap_mac: Mac | None = None  # the port's own MAC, where it has one (a tap / veth)

    @property
    def name(self) -> str:
        return f"vm{self.index}"

    @property
    def ip(self) -> str:
        return f"10.66.0.{self.index + 1}"


def no_ipv6(ns: str) -> None:
    netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")


def create_namespaces(prefix: str, vms: Iterable[Vm]) -> tuple[str, str]:
    """The host's, the wire's and every VM's namespace (IPv6 off); returns (host, wire)."""
    host_ns, outside_ns = f"{prefix}-h", f"{prefix}-x"
    for ns in [host_ns, outside_ns, *(vm.ns for vm in vms)]:
        netns.create(ns)
        no_ipv6(ns)
    return host_ns, outside_ns


def add_vm_veth(ipr: Any, vm: Vm) -> None:
    """The VM's port in the host namespace (an IPRoute there), its peer eth0 the guest vNIC."""
    ipr.link(
        "add",
        ifname=vm.port,
        kind="veth",
        address=vm.tap_mac,
        peer={"ifname": "eth0", "net_ns_fd": vm.ns, "address": vm.mac},
    )


def add_uplink(ipr: Any, outside_ns: str) -> None:
    """uplink0 in the host namespace (an IPRoute there), its peer eth0 on the wire."""
    ipr.link(
        "add",
        ifname=UPLINK,
        kind="veth",
        address=UPLINK_MAC,
        peer={"ifname": "eth0", "net_ns_fd": outside_ns, "address": OUTSIDE_MAC},
    )


# ----- states ----------------------------------------------------------------------------
def host_state(entries: Mapping[Mac, Iterable[int]], bindings: Mapping[PortName, Mac]) -> FilterState:
    """A host's FilterState: `entries`, the VM `bindings` (port → guest MAC), and the uplink
    bound to the physical NIC's MAC, which is `global` (SPEC §4.1)."""
    all_entries: dict[Mac, frozenset[Lnid]] = {m: frozenset(Lnid(x) for x in ls) for m, ls in entries.items()}
    all_entries[UPLINK_MAC] = frozenset({GLOBAL})
    b = {UPLINK: PortBinding(UPLINK, UPLINK_MAC, uplink=True)}
    for port, mac in bindings.items():
        b[port] = PortBinding(port, mac)
    return FilterState(entries=all_entries, bindings=b)


# ----- frames ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    """One frame put on the wire."""

    sender: str  # probe endpoint that sent it
    port: PortName  # the port it enters the switch by (a VM's port, or the uplink for the wire)
    src: Mac
    dst: Mac
    tag: str


def is_group(mac: Mac) -> bool:
    return bool(int(mac[:2], 16) & 1)


def flood_set(sender: str, port: PortName, src: Mac, label: str) -> list[tuple[Sent, bytes]]:
    """Broadcast, multicast and 802.1Q-tagged broadcast frames from `src`."""
    out = []
    for kind, dst, vlan in (("bc", BROADCAST, None), ("mc", MULTICAST, None), ("q", BROADCAST, 100)):
        tag = f"{label}/{kind}/{sender}/{src}"
        out.append((Sent(sender, port, src, Mac(dst), tag), frame(dst, src, tag, vlan=vlan)))
    return out


def unicast(sender: str, port: PortName, src: Mac, dst: Mac, label: str, vlan: int | None = None) -> tuple[Sent, bytes]:
    tag = f"{label}/uc{'q' if vlan else ''}/{sender}/{src}>{dst}"
    return Sent(sender, port, src, dst, tag), frame(dst, src, tag, vlan=vlan)


def received(got: Mapping[str, Iterable[Received]]) -> dict[str, list[str]]:
    return {name: sorted(r.tag for r in rs) for name, rs in got.items()}


FORGED = Mac("02:de:ad:be:ef:01")  # a source no table knows


def closed_port_traffic(probe: Probe, a: Vm, b: Vm, c: Vm) -> dict[str, list[str]]:
    """The closed-port tests' round (issue 19): bound VMs `a` and `b` and the wire talk, `c` (whose
    port no binding names) is sent to and sends with a forged, its own and `a`'s source; what
    each endpoint received, by tag."""
    probe.send(a.name, frame(BROADCAST, a.mac, "a-bcast"))
    probe.send(a.name, frame(c.mac, a.mac, "a-to-c"))
    probe.send(OUTSIDE, frame(BROADCAST, OUTSIDE_MAC, "out-bcast"))
    probe.send(OUTSIDE, frame(c.mac, OUTSIDE_MAC, "out-to-c"))
    probe.send(a.name, frame(b.mac, a.mac, "a-to-b"))  # on the bridge: the fast path
    for src, tag in ((FORGED, "forged"), (c.mac, "own"), (a.mac, "spoof-a")):
        probe.send(c.name, frame(BROADCAST, src, f"c-bcast-{tag}"))
        probe.send(c.name, frame(b.mac, src, f"c-to-b-{tag}"))
        probe.send(c.name, frame(OUTSIDE_MAC, src, f"c-to-out-{tag}"))
    return received(probe.collect())


# ----- counters ----------------------------------------------------------------------------
def drops(filt: TenantFilter) -> tuple[Counter[str], Counter[str]]:
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


@dataclass
class Expectation:
    delivered: dict[str, list[str]]  # endpoint → sorted tags it must receive
    rx_dropped: Counter[str]  # counter bucket → copies the receive filter must drop
    tx_dropped: Counter[str]  # counter bucket → frames the send check must drop


@dataclass(frozen=True)
class Churn:
    """How hard the atomicity test may drive this host's traffic and applies."""

    applies: int
    pace: float  # seconds between two pairs of frames
    gap: float  # seconds between two applies: frames are in flight around every commit


# ----- the host under test ---------------------------------------------------------------
@dataclass
class SwitchHost(abc.ABC):
    """One throw-away host whose switch a back end's filter guards (see module doc)."""

    prefix: str
    ns: str
    outside_ns: str
    vms: list[Vm]
    _closers: list[Callable[[], None]] = field(default_factory=list, kw_only=True)

    KIND: ClassVar[str]
    UNBOUND_UP: ClassVar[bool] = True  # an unbound VM's port is up: the filter alone stops it
    MODELS_UNICAST: ClassVar[bool] = True  # `expect` knows where this switch sends unicast
    COUNTS_SEND: ClassVar[bool] = True  # the send check counts its drops per port
    FLOODS_UNKNOWN_UNICAST: ClassVar[bool] = True  # unicast to a MAC no port owns goes everywhere
    UNKNOWN_SOURCE: ClassVar[str | None] = None  # bucket of a frame dropped, before any copy, for its source
    PACE: ClassVar[float] = 0.0  # seconds between two frames of a burst
    CACHE_ROUNDS: ClassVar[int] = 1  # round trips that fill the switch's caches with a verdict
    CHURN: ClassVar[Churn] = Churn(240, 0.0002, 0.001)
    WORST_CASE_LIMITS: ClassVar[tuple[float, float]]  # seconds: full install, median single change
    STALE: ClassVar[tuple[str, ...]]  # names of the stale layouts `plant_stale` knows

    # ----- the filter ------------------------------------------------------------------
    @abc.abstractmethod
    def new_filter(self) -> Any:
        """A fresh filter on this switch (an agent (re)start) that records its calls (`calls`)."""

    @abc.abstractmethod
    def calls(self, filt: Any) -> list[tuple[str, int]]:
        """What `filt` asked of the switch since the last call, in order: ("txn", size) for a
        transaction (nft batch: commands; OpenFlow bundle: lines), (verb, 0) for the rest."""

    @abc.abstractmethod
    def max_txn(self, elements: int, ports: bool) -> int:
        """The largest transaction a change of `elements` may take (`ports`: bindings change)."""

    # ----- VMs, per the back end's contract ----------------------------------------------
    @abc.abstractmethod
    def boot(self, state: FilterState | None = None) -> Any:
        """Install the filter (fail closed: empty unless `state`), then run every VM, its
        port up where the switch allows it (`UNBOUND_UP`): the contract's order."""

    def bring_up(self, vm: Vm) -> None:  # noqa: B027 - most switches have nothing to do
        """What the agent does to a VM's port right after binding it."""

    def take_down(self, vm: Vm) -> None:  # noqa: B027
        """What the agent does to a VM's port right before unbinding it."""

    def running(self) -> list[Vm]:
        """VMs whose guest NIC exists (an endpoint to probe)."""
        return list(self.vms)

    def live_ports(self) -> dict[PortName, str]:
        """Ports that are up (frames enter and leave by them) → their endpoint."""
        return {vm.port: vm.name for vm in self.vms} | {UPLINK: OUTSIDE}

    # ----- frames ----------------------------------------------------------------------
    def probe(self, *names: str) -> Probe:
        """A Probe on the named endpoints (`vm<i>`, `outside`); every running one by
        default. Closed with the host."""
        where = {vm.name: vm.ns for vm in self.running()} | {OUTSIDE: self.outside_ns}
        probe = Probe()
        self._closers.append(probe.close)
        for name in names or tuple(where):
            probe.attach(name, where[name])
        return probe

    def send_all(self, probe: Probe, frames: Iterable[tuple[Sent, bytes]]) -> list[Sent]:
        sent = []
        for meta, data in frames:
            probe.send(meta.sender, data)
            sent.append(meta)
            if self.PACE:
                time.sleep(self.PACE)
        return sent

    def send_checked(self, state: FilterState, port: PortName) -> bool:
        """Whether what enters by `port` meets the send check (everywhere, on most switches)."""
        return True

    @abc.abstractmethod
    def forward(self, state: FilterState, f: Sent, live: Mapping[PortName, str]) -> tuple[list[PortName], Counter[str]]:
        """The ports this switch copies `f` (which passed the send check) to, and the drops
        it counts itself before or besides the receive filter of each copy."""

    def expect(self, state: FilterState, frames: Iterable[Sent]) -> Expectation:
        """Deliveries and drop counts the model (`hostvlan.model.verdict`) predicts: the send
        check at the ingress port, then this switch's forwarding, then the model's receive
        verdict on each copy. A port that is down sends and receives nothing."""
        live = self.live_ports()
        delivered: dict[str, list[str]] = {vm.name: [] for vm in self.running()} | {OUTSIDE: []}
        rx: Counter[str] = Counter()
        tx: Counter[str] = Counter()

        def bucket(port: PortName) -> str:
            return port if port in state.bindings else UNBOUND

        for f in frames:
            if f.port not in live:
                continue
            if self.send_checked(state, f.port) and not verdict.send(state, f.port, f.src).allow:
                if self.COUNTS_SEND:
                    tx[bucket(f.port)] += 1
                continue
            ports, dropped = self.forward(state, f, live)
            rx.update(dropped)
            for port in ports:
                if verdict.receive(state, f.src, port).allow:
                    if port in live:
                        delivered[live[port]].append(f.tag)
                else:
                    rx[bucket(port)] += 1
        return Expectation({n: sorted(t) for n, t in delivered.items()}, rx, tx)

    # ----- what the switch holds ---------------------------------------------------------
    @abc.abstractmethod
    def installed(self) -> bool:
        """Whether any object of hostvlan's is on the switch."""

    @abc.abstractmethod
    def clean(self) -> list[str]:
        """Remove hostvlan's kernel state from the host (`datapath.cleanup.clean_host`)."""

    @abc.abstractmethod
    def leftovers(self) -> list[str]:
        """Anything on the switch but the foreign objects of `plant_foreign`, after a removal."""

    @abc.abstractmethod
    def plant_foreign(self) -> None:
        """Someone else's objects on the same switch (a removal must not touch them)."""

    @abc.abstractmethod
    def foreign_intact(self) -> bool:
        """Whether the objects of `plant_foreign` are still there."""

    @abc.abstractmethod
    def kernel_dump(self) -> object:
        """Everything of hostvlan's the switch lists, comparable for equality (no traffic between)."""

    @abc.abstractmethod
    def objects(self) -> object:
        """hostvlan's objects as the switch lists them now, to tell a restart that kept them."""

    @abc.abstractmethod
    def same_objects(self, before: object, after: object) -> bool:
        """Whether `after` are the very objects of `before`, none re-created."""

    @abc.abstractmethod
    def table_handle(self) -> int | None:
        """The handle of hostvlan's table (a re-created table gets a new one); None where the
        switch has no container for them (OVS: the flows are the objects)."""

    @abc.abstractmethod
    def plant_stale(self, case: str) -> None:
        """Objects of hostvlan's name but not of its layout, as an older or foreign agent left them."""

    @abc.abstractmethod
    def stale_gone(self) -> bool:
        """Whether nothing of `plant_stale` is left."""

    @abc.abstractmethod
    def wipe(self) -> None:
        """Delete every object of hostvlan's behind the agent's back."""

    @abc.abstractmethod
    def break_next_apply(self, filt: Any) -> None:
        """Make the switch reject `filt`'s next transaction (it must change nothing)."""

    @abc.abstractmethod
    def mend(self, filt: Any) -> None:
        """Undo `break_next_apply`."""

    @abc.abstractmethod
    def worst_case_ports(self, macs: list[Mac]) -> list[PortName]:
        """Port names for the worst-case table's VMs (real devices where the back end needs them)."""

    @abc.abstractmethod
    def layout_numbers(self, n_ports: int) -> dict[str, float]:
        """After the worst-case install: the layout's size, checked against what `n_ports`
        bound VM ports need where the back end's layout grows with them."""

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()


def one_host_per_test(
    prefix: str, build: Callable[[str, int], H], cleanup: Callable[[], None] = lambda: None
) -> Iterator[Callable[[int], H]]:
    """Body of a host factory: `make(n)` builds (`build(prefix, n)`) one host with n VMs;
    everything it started is stopped afterwards (its `close`, then `cleanup`), and the
    `prefix` fixture then removes the namespaces."""
    hosts: list[H] = []

    def make(n_vms: int) -> H:
        assert not hosts, "one host per test"
        try:
            host = build(prefix, n_vms)
        except BaseException:
            cleanup()
            netns.sweep(prefix)
            raise
        hosts.append(host)
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.close()  # processes, sockets and nft contexts first: they pin namespaces
        cleanup()


# ----- the nftables back ends (Linux bridge, macvtap) ------------------------------------
class RecordingNft(Nft):
    """A libnftables context that records each call: ("txn", commands) or ("list", 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, int]] = []

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls.append(("txn", len(commands)))
        return super().run(commands)

    def list_obj(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("list", 0))
        return super().list_obj(obj)


BAD_PORT = PortName("x" * 20)  # an interface name nft cannot hold: the kernel rejects the batch
FOREIGN = "foreign"  # someone else's table beside hostvlan's


@dataclass
class NftHost(SwitchHost):
    """What the two nftables back ends share: one table `<FAMILY> hostvlan`, read back by `nft`."""

    FAMILY: ClassVar[str]
    SPEC: ClassVar[BackendSpec]
    MAX_BATCH: ClassVar[int] = 20  # commands in the one batch of a small change
    OPTIONS: ClassVar[dict[str, Any]] = {}  # the factory's keyword options (the bridge's closing, the guard)

    def spec(self) -> BackendSpec:
        """The back end this host runs, as an agent's options name it."""
        return self.SPEC

    def new_filter(self) -> Any:
        """A fresh filter bound to the host namespace (an agent (re)start): a new nftables context."""
        with netns.inside(self.ns):
            filt = build_backend(self.spec(), nft=RecordingNft(), **self.OPTIONS)
        self._closers.append(filt.close)
        return filt

    def clean(self) -> list[str]:
        """`hostvlan agent --cleanup` in the host namespace."""
        with netns.inside(self.ns):
            return clean_host(self.spec())

    def calls(self, filt: Any) -> list[tuple[str, int]]:
        nft = filt.table.nft
        assert isinstance(nft, RecordingNft)
        out = list(nft.calls)
        nft.calls.clear()
        return out

    def max_txn(self, elements: int, ports: bool) -> int:
        return self.MAX_BATCH

    def nft_cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, "nft", *args], capture_output=True, text=True, check=check, timeout=30
        )

    def kernel_table(self) -> list[dict[str, Any]] | None:
        """`nft -j list table <FAMILY> hostvlan` in the host namespace, None when absent."""
        got = self.nft_cli("-j", "list", "table", self.FAMILY, "hostvlan", check=False)
        if got.returncode != 0:
            assert "No such file or directory" in got.stderr, got.stderr
            return None
        items: list[dict[str, Any]] = json.loads(got.stdout)["nftables"]
        return items

    def chains(self) -> dict[str, str | None]:
        """Chain name → hook (None for a regular chain) of table hostvlan."""
        items = self.kernel_table()
        assert items is not None, f"table {self.FAMILY} hostvlan is missing"
        return {str(i["chain"]["name"]): i["chain"].get("hook") for i in items if "chain" in i}

    def hooked_chains(self) -> int:
        return sum(1 for hook in self.chains().values() if hook)

    def installed(self) -> bool:
        return self.kernel_table() is not None

    def nfnl(self) -> Nfnl:
        """A raw nfnetlink socket in the host namespace (closed with the host): what reads while
        the macvtap guard's prefix chains exist, on which nft 1.0.6 hangs listing the ruleset."""
        with netns.inside(self.ns):
            nfnl = Nfnl()
        self._closers.append(nfnl.close)
        return nfnl

    def leftovers(self) -> list[str]:
        if ("netdev", GUARD_TABLE) in self.nfnl().tables():  # `nft list ruleset` would hang
            return [f"table netdev {GUARD_TABLE}"]
        items = json.loads(self.nft_cli("-j", "list", "ruleset").stdout or '{"nftables": []}')["nftables"]
        out = []
        for item in items:
            (kind, obj), *_ = item.items()
            table = obj["name"] if kind == "table" else obj.get("table")
            if kind != "metainfo" and table != FOREIGN:
                out.append(json.dumps(item))
        return out

    def plant_foreign(self) -> None:
        self.nft_cli("add", "table", self.FAMILY, FOREIGN)
        self.nft_cli("add", "counter", self.FAMILY, FOREIGN, "keep")

    def foreign_intact(self) -> bool:
        family = next(k for k, v in FAMILIES.items() if v == self.FAMILY)  # `nft list counter` hangs beside the guard
        return "keep" in self.nfnl().counters(family, FOREIGN)

    def kernel_dump(self) -> object:
        return self.kernel_table()

    def table_handle(self) -> int | None:
        items = self.kernel_table()
        return None if items is None else next(int(i["table"]["handle"]) for i in items if "table" in i)

    def objects(self) -> object:
        return self.table_handle()

    def same_objects(self, before: object, after: object) -> bool:
        return before is not None and after == before

    def stale_gone(self) -> bool:
        return "leftover" not in self.chains()

    def wipe(self) -> None:
        self.nft_cli("delete", "table", self.FAMILY, "hostvlan")

    def break_next_apply(self, filt: Any) -> None:
        filt.bind(PortBinding(BAD_PORT, Mac("02:dd:00:00:00:01")))

    def mend(self, filt: Any) -> None:
        filt.unbind(BAD_PORT)


# ----- checks more than one test makes ---------------------------------------------------
EXT = Mac("02:aa:00:00:00:01")  # registered behind the wire, LNID 1


def lifecycle_state(host: SwitchHost) -> FilterState:
    """Three VMs: a and b in LNID 1, c in LNID 2, a remote MAC in LNID 1; all bound."""
    a, b, c = host.vms
    return host_state({a.mac: [1], b.mac: [1], c.mac: [2], EXT: [1]}, {vm.port: vm.mac for vm in host.vms})


def check_isolated(host: SwitchHost) -> None:
    """Under `lifecycle_state`: a ↔ b (LNID 1) talk, c (LNID 2) hears neither; the wire hears all."""
    a, b, c = host.vms
    probe = host.probe()
    for vm in host.vms:
        probe.send(vm.name, frame(BROADCAST, vm.mac, f"iso-{vm.name}"))
    assert received(probe.collect()) == {
        a.name: [f"iso-{b.name}"],
        b.name: [f"iso-{a.name}"],
        c.name: [],
        OUTSIDE: sorted(f"iso-{vm.name}" for vm in host.vms),
    }


def check_model(
    host: SwitchHost, filt: TenantFilter, state: FilterState, probe: Probe, frames: Iterable[tuple[Sent, bytes]]
) -> tuple[dict[str, list[str]], Expectation]:
    """Send `frames`: what arrives, and the drop counters' change, are what the model
    predicts for `state` (`host.expect`); returns (what arrived, the expectation)."""
    rx0, tx0 = drops(filt)
    sent = host.send_all(probe, frames)
    got = received(probe.collect())
    want = host.expect(state, sent)
    assert got == want.delivered
    rx1, tx1 = drops(filt)
    assert counter_delta(rx0, rx1) == want.rx_dropped
    assert counter_delta(tx0, tx1) == want.tx_dropped
    return got, want


def check_empty_filter(host: SwitchHost, filt: TenantFilter) -> None:
    """An installed filter with no entries and no bindings passes nothing in any direction:
    every frame stops at the door (fail closed: no port is bound) or, where unbound ports
    are down, never enters."""
    assert filt.read() == filt.desired()
    frames = []
    for vm in host.vms:  # VM → VM and VM → outside
        frames += flood_set(vm.name, vm.port, vm.mac, "empty")
        frames.append(unicast(vm.name, vm.port, vm.mac, OUTSIDE_MAC, "empty"))
    frames += flood_set(OUTSIDE, UPLINK, EXT, "empty")  # outside → VM
    got, want = check_model(host, filt, FilterState(), host.probe(), frames)
    assert got == {vm.name: [] for vm in host.vms} | {OUTSIDE: []}
    assert want.tx_dropped == ({UNBOUND: len(frames)} if host.UNBOUND_UP and host.COUNTS_SEND else {})
    assert want.rx_dropped == {}
