"""Build a Topology from real kernel parts, and always tear it down.

Layout (every namespace named `<prefix>-…`, so parallel runs never collide):

  <prefix>-sw            the physical switch: plain Linux bridge `sw0`
  <prefix>-h-<host>      an end host: bridge `br0` (its MAC = the uplink's), uplink veth
                         `uplink0` (its "physical NIC", `global`) whose peer `up<i>` is a
                         port of sw0, and one libvirt-style port `vnet<k>` per VM
                         (host-side MAC = guest MAC with first octet fe)
  <prefix>-v-<vm>        a VM: `eth0` with the VM's MAC and an IP
  <prefix>-x-<name>      an external endpoint (router, client) on sw0

The tenant filter of a `bridge` host is installed EMPTY (fail closed) before any port
comes up, then fed the host's view through the same back-end contract the control
daemon uses (`TenantFilter.sync` + `apply`).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hostvlan.datapath.base import PortCounters, TenantFilter
from hostvlan.datapath.nft_bridge import NftBridgeFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.model.hostview import Location, filter_state, host_view
from hostvlan.model.ids import HostId, Lnid, Mac, PortName, int_to_mac, tap_mac
from hostvlan.model.ports import FilterState
from hostvlan.model.table import LnidTable
from hostvlan.testbed import netns
from hostvlan.testbed.topology import Endpoint, Topology

STATE_DIR = Path(os.environ.get("HOSTVLAN_TESTBED_DIR", "/run/hostvlan/testbeds"))
SUBNET = ipaddress.ip_network("10.200.0.0/16")
UPLINK = PortName("uplink0")
BRIDGE = "br0"
SWITCH = "sw0"


@dataclass(frozen=True)
class VmInfo:
    name: str
    netns: str
    ifname: str
    mac: Mac
    ip: str
    host: str
    port: PortName


@dataclass(frozen=True)
class ExternalInfo:
    name: str
    netns: str
    ifname: str
    mac: Mac
    ip: str


@dataclass(frozen=True)
class HostInfo:
    name: str
    netns: str
    backend: str
    bridge: str
    uplink: PortName
    uplink_mac: Mac


class Testbed:
    """One emulated data center. `with Testbed(topo) as tb:` builds it and always removes it."""

    def __init__(self, topology: Topology, prefix: str | None = None, *, record: bool = False) -> None:
        self.topology = topology
        self.prefix = prefix or netns.new_prefix()
        self.record = record  # keep a state file so `hostvlan testbed down` can find it
        self.switch_ns = f"{self.prefix}-sw"
        self.hosts: dict[str, HostInfo] = {}
        self.vms: dict[str, VmInfo] = {}
        self.external: dict[str, ExternalInfo] = {}
        self.table = LnidTable()
        self.locations: dict[Mac, Location] = {}
        self._filters: dict[str, TenantFilter] = {}
        self._plan()

    # ----- plan (pure) ---------------------------------------------------------------
    def _plan(self) -> None:
        hosts_used = set()
        ips = iter(SUBNET.hosts())
        taken = {e.mac for e in self.topology.endpoints()}
        for i, h in enumerate(self.topology.hosts):
            uplink_mac = self._uplink_mac(i, taken)
            self.hosts[h.name] = HostInfo(h.name, f"{self.prefix}-h-{h.name}", h.backend, BRIDGE, UPLINK, uplink_mac)
            hosts_used.add(h.name)
            for k, vm in enumerate(h.vms):
                self.vms[vm.name] = VmInfo(
                    vm.name, f"{self.prefix}-v-{vm.name}", "eth0", vm.mac, str(next(ips)), h.name, PortName(f"vnet{k}")
                )
        for e in self.topology.external:
            self.external[e.name] = ExternalInfo(e.name, f"{self.prefix}-x-{e.name}", "eth0", e.mac, str(next(ips)))
        for e in self.topology.endpoints():
            for lnid in e.lnids:
                self.table.add(e.mac, lnid)
            if e.lnids:
                self.locations[e.mac] = Location(HostId(e.host) if e.host else None, None)

    @staticmethod
    def _uplink_mac(index: int, taken: set[Mac]) -> Mac:
        base = 0x0E_48_56_00_00_00  # locally administered, unicast
        n = index + 1
        while int_to_mac(base + n) in taken:
            n += 0x1000
        return int_to_mac(base + n)

    # ----- views (what the control plane would send) ------------------------------------
    def filter_state(self, host: str) -> FilterState:
        """The model's state of one host's tenant filter, from the current table."""
        info = self.hosts[host]
        view = host_view(self.table, self.locations, HostId(host))
        ports = {vm.mac: vm.port for vm in self.vms.values() if vm.host == host}
        return filter_state(view, ports, {info.uplink: info.uplink_mac})

    def states(self) -> dict[str, FilterState | None]:
        """Per host: the model state its filter enforces, None for an unfiltered (`none`) host."""
        return {h: (self.filter_state(h) if i.backend != "none" else None) for h, i in self.hosts.items()}

    def endpoint(self, name: str) -> Endpoint:
        for e in self.topology.endpoints():
            if e.name == name:
                return e
        raise KeyError(name)

    def set_lnids(self, name: str, lnids: Iterable[Lnid]) -> None:
        """Change an endpoint's LNIDs (the paper's "VM1-1 joins LNID 3") and push every host's view."""
        mac = self.endpoint(name).mac
        host = self.vms[name].host if name in self.vms else None
        self.table.drop(mac)
        for lnid in lnids:
            self.table.add(mac, lnid)
        if mac in self.table:
            self.locations[mac] = Location(HostId(host) if host else None, None)
        else:
            self.locations.pop(mac, None)
        self.program()

    def fill(self, host: str, macs: int, lnids: int, ports: int, *, first_lnid: int = 1) -> None:
        """Grow `host`'s table to the paper's worst case without building VMs.

        Adds `macs` remote MACs spread round-robin over LNIDs first_lnid…first_lnid+lnids-1
        (VMs of other hosts that need not exist) and `ports` idle bound ports (names
        `idle<k>`, no interface behind them) in those LNIDs. Call `program()` after.
        """
        remote = HostId(f"{host}-remote")
        for i in range(macs):
            mac = int_to_mac(0x02_FE_00_00_00_00 + i)
            self.table.add(mac, Lnid(first_lnid + i % lnids))
            self.locations[mac] = Location(remote, None)
        for k in range(ports):
            mac = int_to_mac(0x02_FD_00_00_00_00 + k)
            self.table.add(mac, Lnid(first_lnid + k % lnids))
            self.locations[mac] = Location(HostId(host), PortName(f"idle{k}"))

    def program(self) -> None:
        for host, f in self._filters.items():
            f.sync(self.filter_state(host))
            f.apply()

    def counters(self, host: str) -> dict[str, PortCounters]:
        f = self._filters.get(host)
        return f.counters() if f else {}

    # ----- build / teardown -------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        if self.record:
            self._write_state({"prefix": self.prefix, "status": "building"})
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        if self.record:
            self._write_state(self.to_json())

    def down(self) -> None:
        for f in self._filters.values():
            close = getattr(f, "close", None)
            if close:
                close()
        self._filters.clear()
        netns.sweep(self.prefix)
        if self.record:
            (STATE_DIR / f"{self.prefix}.json").unlink(missing_ok=True)

    def _write_state(self, data: dict[str, Any]) -> None:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = STATE_DIR / f".{self.prefix}.json.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(STATE_DIR / f"{self.prefix}.json")

    def _new_ns(self, name: str) -> None:
        netns.create(name)
        netns.sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
        netns.sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
        with netns.iproute(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    def _build(self) -> None:
        self._new_ns(self.switch_ns)
        with netns.iproute(self.switch_ns) as sw:
            sw.link("add", ifname=SWITCH, kind="bridge", br_stp_state=0, br_mcast_snooping=0)
            sw.link("set", index=sw.link_lookup(ifname=SWITCH)[0], state="up")
        for i, h in enumerate(self.hosts.values()):
            self._build_host(i, h)
        for j, e in enumerate(self.external.values()):
            self._build_endpoint(e.netns, e.mac, e.ip, self.switch_ns, f"ex{j}", SWITCH, None)
        for vm in self.vms.values():
            self._build_endpoint(vm.netns, vm.mac, vm.ip, self.hosts[vm.host].netns, vm.port, BRIDGE, tap_mac(vm.mac))
        self.program()
        netns.wait_operstate_up(netns.owned(self.prefix))

    def _build_host(self, index: int, h: HostInfo) -> None:
        self._new_ns(h.netns)
        if h.backend == "bridge":
            with netns.inside(h.netns):
                nft = Nft()
            f = NftBridgeFilter(nft)
            f.apply()  # empty: fail closed before any port exists
            self._filters[h.name] = f
        with netns.iproute(h.netns) as ipr:
            ipr.link("add", ifname=BRIDGE, kind="bridge", address=h.uplink_mac, br_stp_state=0, br_mcast_snooping=0)
            br = ipr.link_lookup(ifname=BRIDGE)[0]
            ipr.link(
                "add",
                ifname=h.uplink,
                kind="veth",
                address=h.uplink_mac,
                peer={"ifname": f"up{index}", "net_ns_fd": self.switch_ns},
            )
            ipr.link("set", index=ipr.link_lookup(ifname=h.uplink)[0], master=br, state="up")
            ipr.link("set", index=br, state="up")
        with netns.iproute(self.switch_ns) as sw:
            sw.link(
                "set", index=sw.link_lookup(ifname=f"up{index}")[0], master=sw.link_lookup(ifname=SWITCH)[0], state="up"
            )

    def _build_endpoint(
        self, ns: str, mac: Mac, ip: str, parent_ns: str, port: str, bridge: str, port_mac: Mac | None
    ) -> None:
        """An endpoint namespace with `eth0`, cabled to `bridge` in `parent_ns` through port `port`."""
        self._new_ns(ns)
        with netns.iproute(parent_ns) as ipr:
            kw: dict[str, Any] = {"address": port_mac} if port_mac else {}
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns, "address": mac}, **kw)
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=ipr.link_lookup(ifname=bridge)[0], state="up")
        with netns.iproute(ns) as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=ip, prefixlen=SUBNET.prefixlen)
            ipr.link("set", index=idx, state="up")

    # ----- output -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "vms": {n: {k: v for k, v in asdict(vm).items()} for n, vm in self.vms.items()},
            "external": {n: asdict(e) for n, e in self.external.items()},
            "hosts": {n: asdict(h) for n, h in self.hosts.items()},
            "switch": {"netns": self.switch_ns, "bridge": SWITCH},
            "topology": self.topology.to_dict(),
        }


def from_record(data: dict[str, Any]) -> Testbed:
    """Re-attach to a running testbed from its state file (planning is deterministic)."""
    import yaml

    from hostvlan.testbed.topology import parse_topology

    topo = parse_topology(yaml.safe_dump(data["topology"]), f"testbed {data['prefix']}")
    tb = Testbed(topo, prefix=str(data["prefix"]), record=True)
    for name, info in tb.hosts.items():
        if info.backend == "bridge":
            with netns.inside(info.netns):
                nft = Nft()
            tb._filters[name] = NftBridgeFilter(nft)
    return tb


def recorded() -> list[dict[str, Any]]:
    """State files of testbeds left running by `hostvlan testbed up`."""
    out = []
    for p in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.exists() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            out.append({"prefix": p.stem})
    return out


def down_recorded(prefix: str | None = None) -> list[str]:
    """Remove recorded testbeds (all, or the one with `prefix`); returns namespaces removed. Idempotent."""
    gone: list[str] = []
    for st in recorded():
        p = str(st.get("prefix", ""))
        if not p or (prefix and p != prefix):
            continue
        gone += netns.sweep(p)
        (STATE_DIR / f"{p}.json").unlink(missing_ok=True)
    if prefix:
        gone += netns.sweep(prefix)
    return gone
