"""What a testbed builds, decided from its topology alone (pure: no I/O, no processes).

`make_plan(topology, prefix)` names every namespace and port, and gives every host its uplink
MAC and every endpoint its IP; `registration_ops` / `fill_ops` / `lnid_change_ops` are the
batch operations the builder sends to the manager. The builder (`build.Testbed`) instantiates
a plan, the way mininet's `buildFromTopo` instantiates a `Topo`; the state record
(`record.py`) writes it down so that `from_record` can re-attach to a running testbed
(planning is deterministic). May import `hostvlan.model` and `hostvlan.testbed.topology` only.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName, int_to_mac, tap_mac
from hostvlan.testbed.topology import Endpoint, Topology

SUBNET = ipaddress.ip_network("10.200.0.0/16")
UPLINK = PortName("uplink0")
BRIDGE = "br0"
SWITCH = "sw0"
FILTERED = ("bridge", "ovs", "macvtap")
BPFFS = Path("/run/hostvlan/bpf")  # where the tc filter pins (datapath.bridge.tc.BPFFS; the plan imports no data path)
_UPLINK_BASE = 0x0E_48_56_00_00_00  # locally administered, unicast
_FILL_REMOTE = 0x02_FE_00_00_00_00  # a fill's remote MACs (on the phantom host)
_FILL_PORT = 0x02_FD_00_00_00_00  # a fill's idle ports' MACs
BATCH = 20_000  # operations per batch call


@dataclass(frozen=True)
class VmInfo:
    name: str
    netns: str
    ifname: str
    mac: Mac
    ip: str
    host: str
    port: PortName
    domain: str | None = None  # a libvirt guest (`guests: libvirt`): its domain, its daemon's URI
    libvirt_uri: str | None = None  # (set by the builder: the daemon's socket is in the work dir)
    ip6: str = ""  # its IPv6 address in the run's /64 (`subnet6`)


@dataclass(frozen=True)
class ExternalInfo:
    name: str
    netns: str
    ifname: str
    mac: Mac
    ip: str
    ip6: str = ""


@dataclass(frozen=True)
class HostInfo:
    name: str
    netns: str
    backend: str
    bridge: str
    uplink: PortName
    uplink_mac: Mac
    guests: str = "namespaces"  # or libvirt: its VMs are QEMU domains of its own libvirtd

    @property
    def switch(self) -> str:
        """The virtual switch: bridge, ovs or macvtap (`none` is a plain Linux bridge)."""
        kind = self.backend.removesuffix("-none")
        return "bridge" if kind == "none" else kind

    @property
    def filtered(self) -> bool:
        """HostVLAN's filter and an agent run here (not a `none`, `ovs-none`, `macvtap-none` baseline)."""
        return self.backend in FILTERED


@dataclass(frozen=True)
class Plan:
    """Every name, MAC, IP and port of one testbed (see `build.py`'s module doc for the layout)."""

    prefix: str
    hosts: dict[str, HostInfo]
    vms: dict[str, VmInfo]
    external: dict[str, ExternalInfo]

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    @property
    def mgmt_ns(self) -> str:
        return f"{self.prefix}-mg"

    def bpf_pins(self, host: str) -> Path:
        """Where `host`'s agent pins its tc receive filter."""
        return BPFFS / f"{self.prefix}-{host}"


def make_plan(topology: Topology, prefix: str) -> Plan:
    """Names `<prefix>-h-<host>`, `<prefix>-v-<vm>`, `<prefix>-x-<external>`; IPs from SUBNET in
    topology order (VMs host by host, then external endpoints); VM ports `vnet<k>` (`macvtap<k>`
    on a macvtap host; a libvirt guest's are what libvirt will name them, see testbed.guestvms);
    uplink MACs that collide with no endpoint's. A libvirt guest has no namespace (netns "")
    but a domain `<prefix>-<vm>`."""
    ips = iter(SUBNET.hosts())
    six = subnet6(prefix)
    n6 = iter(range(1, 1 << 32))
    taken = {e.mac for e in topology.endpoints()}
    hosts: dict[str, HostInfo] = {}
    vms: dict[str, VmInfo] = {}
    external: dict[str, ExternalInfo] = {}
    for i, h in enumerate(topology.hosts):
        hosts[h.name] = HostInfo(
            h.name, f"{prefix}-h-{h.name}", h.backend, BRIDGE, UPLINK, uplink_mac(i, taken), h.guests
        )
        for k, vm in enumerate(h.vms):
            port = PortName(f"macvtap{k}" if h.backend.startswith("macvtap") else f"vnet{k}")
            if h.guests == "libvirt":
                vms[vm.name] = VmInfo(vm.name, "", "eth0", vm.mac, str(next(ips)), h.name, port, f"{prefix}-{vm.name}",
                                      ip6=str(six[next(n6)]))  # fmt: skip
                continue
            vms[vm.name] = VmInfo(vm.name, f"{prefix}-v-{vm.name}", "eth0", vm.mac, str(next(ips)), h.name, port,
                                  ip6=str(six[next(n6)]))  # fmt: skip
    for e in topology.external:
        external[e.name] = ExternalInfo(
            e.name, f"{prefix}-x-{e.name}", "eth0", e.mac, str(next(ips)), str(six[next(n6)])
        )
    return Plan(prefix, hosts, vms, external)


def subnet6(prefix: str) -> ipaddress.IPv6Network:
    """The run's IPv6 /64: a unique local prefix (RFC 4193, fd00::/8) whose 40-bit global ID
    is taken from the run's prefix, so that two testbeds never share one."""
    gid = int.from_bytes(hashlib.sha256(prefix.encode()).digest()[:5], "big")
    return ipaddress.IPv6Network(((0xFD << 120) | (gid << 80), 64))


def uplink_mac(index: int, taken: set[Mac]) -> Mac:
    """The uplink MAC of the `index`-th host (0-based), avoiding every MAC in `taken`."""
    n = index + 1
    while int_to_mac(_UPLINK_BASE + n) in taken:
        n += 0x1000
    return int_to_mac(_UPLINK_BASE + n)


def lnid_json(lnid: Lnid) -> int | str:
    return "global" if lnid == GLOBAL else int(lnid)


def registration_ops(topology: Topology, plan: Plan) -> list[dict[str, Any]]:
    """Register the topology's VMs and external endpoints, as an administrator would. A macvtap
    VM is registered with its port, so that its filter exists before its device does. Each
    with its addresses (`addresses: auto`: its IPv4 and IPv6; `[]`: none, MAC-only) and roles."""
    ops: list[dict[str, Any]] = []
    for e in topology.endpoints():
        port = plan.vms[e.name].port if e.host and plan.hosts[e.host].switch == "macvtap" else None
        extra = address_args(e, plan)
        for lnid in sorted(e.lnids):
            ops.append(
                {"op": "reg", "lnid": lnid_json(lnid), "mac": e.mac, "host": e.host, "port": port,
                 "external": e.host is None} | extra
            )  # fmt: skip
    return ops


def address_args(e: Endpoint, plan: Plan) -> dict[str, Any]:
    """The `ips`/`router`/`dhcp_server` of endpoint `e`'s registration (none for MAC-only)."""
    info = plan.vms.get(e.name) or plan.external[e.name]
    ips = [info.ip, info.ip6] if e.addresses is None else list(e.addresses)
    out: dict[str, Any] = {"ips": ips} if ips else {}
    return out | {k: True for k in ("router", "dhcp_server") if getattr(e, k)}


def lnid_change_ops(mac: Mac, host: str | None, have: set[Lnid], want: set[Lnid]) -> list[dict[str, Any]]:
    """Move an endpoint from LNIDs `have` to `want` (`host` None: an external endpoint)."""
    ops: list[dict[str, Any]] = [
        {"op": "reg", "lnid": lnid_json(x), "mac": mac, "host": host, "external": host is None}
        for x in sorted(want - have)
    ]
    return ops + [{"op": "unreg", "lnid": lnid_json(x), "mac": mac} for x in sorted(have - want)]


def fill_ops(
    host: str, macs: int, lnids: int, ports: int, *, first_lnid: int = 1, base: int = 0, port_lnids: int = 1
) -> list[dict[str, Any]]:
    """`macs` remote MACs on the phantom host `<host>-fill`, round-robin over LNIDs
    first_lnid…first_lnid+lnids-1, and `ports` idle ports `idle<k>` of `host`, port k in the
    k-th of those LNIDs and the next port_lnids-1 (wrapping). `base` keeps the MACs of several
    filled hosts apart."""
    phantom = fill_phantom(host)
    ops: list[dict[str, Any]] = []
    for i in range(macs):
        mac = int_to_mac(_FILL_REMOTE + (base << 24) + i)
        ops.append({"op": "reg", "lnid": first_lnid + i % lnids, "mac": mac, "host": phantom})
    for k in range(ports):
        mac = int_to_mac(_FILL_PORT + (base << 24) + k)
        for j in range(port_lnids):
            ops.append({"op": "reg", "lnid": first_lnid + (k + j) % lnids, "mac": mac, "host": host,
                        "port": f"idle{k}"})  # fmt: skip
    return ops


def fill_phantom(host: str) -> str:
    """The host that holds a fill's remote MACs (VMs that need not exist)."""
    return f"{host}-fill"


def idle_ports(ports: int, base: int = 0) -> dict[str, Mac]:
    """A fill's idle bridge ports, each with the host-side MAC of its vNIC (libvirt's tap MAC:
    the agent binds a given port only to the vNIC behind it)."""
    return {f"idle{k}": tap_mac(int_to_mac(_FILL_PORT + (base << 24) + k)) for k in range(ports)}


@dataclass(frozen=True)
class FillJob:
    """One host's `fill:` as the builder runs it: its own LNIDs, its own MAC range."""

    host: str
    macs: int
    lnids: int
    ports: int
    first_lnid: int
    base: int
    port_lnids: int


def fill_jobs(topology: Topology) -> list[FillJob]:
    """Each filled host gets LNIDs of its own (the first starts at 1, the next follow), so that its
    view holds its fill and not the others'; `base` is the host's index."""
    jobs, first = [], 1
    for i, spec in enumerate(topology.hosts):
        if spec.fill is not None:
            f = spec.fill
            jobs.append(FillJob(spec.name, f.macs, f.lnids, f.ports, first, i, f.port_lnids))
            first += f.lnids
    return jobs


def program_timeout(topology: Topology) -> float:
    """How long the agents may take to install the first table: a big fill takes a while
    (~1 min per million (port, LNID) facts)."""
    filled = sum(s.fill.macs + s.fill.ports * s.fill.port_lnids for s in topology.hosts if s.fill)
    return 30.0 + filled / 10_000


def batches(ops: list[dict[str, Any]], size: int = BATCH) -> list[list[dict[str, Any]]]:
    return [ops[i : i + size] for i in range(0, len(ops), size)]
