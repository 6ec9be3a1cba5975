"""Build a Topology from real kernel parts, and always tear it down.

Layout (every namespace named `<prefix>-…`, so parallel runs never collide):

  <prefix>-sw            the physical switch: plain Linux bridge `sw0`
  <prefix>-h-<host>      an end host: bridge `br0` (its MAC = the uplink's), uplink veth
                         `uplink0` (its "physical NIC", `global`) whose peer `up<i>` is a
                         port of sw0, and one libvirt-style port `vnet<k>` per VM
                         (host-side MAC = guest MAC with first octet fe)
  <prefix>-v-<vm>        a VM: `eth0` with the VM's MAC and an IP
  <prefix>-x-<name>      an external endpoint (router, client) on sw0
  <prefix>-mg            the management network (bridge `mg0`, 10.201.0.1): each host's
                         `mgmt0` (10.201.0.<i+2>) reaches the manager here

The control plane is real (see `control.py`): a manager process, and an agent process
in each `bridge` host's namespace, started before any VM port exists so that the host's
filter is installed closed first; then the topology's VMs are registered through the
management API and `up` returns once every agent enforces them.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hostvlan.client import Client
from hostvlan.datapath.base import PortCounters, TenantFilter
from hostvlan.datapath.brports import BridgePorts
from hostvlan.datapath.macvtap import MacvtapFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.datapath.ovs import OvsFilter
from hostvlan.datapath.ovsdb import OvsDb
from hostvlan.datapath.tc_bridge import BPFFS, TcBridgeFilter
from hostvlan.model.hostview import Location, filter_state, host_view
from hostvlan.model.ids import GLOBAL, HostId, Lnid, Mac, PortName, int_to_mac, parse_lnid, tap_mac
from hostvlan.model.ports import FilterState
from hostvlan.model.table import LnidTable
from hostvlan.testbed import control, guestvms, netns
from hostvlan.testbed.ovsd import OvsDaemons
from hostvlan.testbed.topology import Endpoint, Topology, parse_topology
from hostvlan.testbed.vmtap import private_tap_node

STATE_DIR = Path(os.environ.get("HOSTVLAN_TESTBED_DIR", "/run/hostvlan/testbeds"))
SUBNET = ipaddress.ip_network("10.200.0.0/16")
UPLINK = PortName("uplink0")
BRIDGE = "br0"
SWITCH = "sw0"
FILTERED = ("bridge", "ovs", "macvtap")
IFF_UP = 0x1
IFF_ALLMULTI = 0x200
OVS_DATAPATH = os.environ.get("HOSTVLAN_OVS_DATAPATH", "netdev")  # this kernel has no openvswitch module
SNAPSHOT_LOG = "snapshot enforced"  # what an agent logs once its first snapshot is in the kernel


@dataclass(frozen=True)
class VmInfo:
    name: str
    netns: str
    ifname: str
    mac: Mac
    ip: str
    host: str
    port: PortName
    domain: str | None = None  # a libvirt guest (`guests: libvirt`): its domain, its daemon
    libvirt_uri: str | None = None


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


class Testbed:
    """One emulated data center. `with Testbed(topo) as tb:` builds it and always removes it.

    The control plane is real: a `hostvlan manager` process holds the table, one
    `hostvlan agent` process per `bridge` host programs that host's filter, and every
    registration goes through the management API, as an administrator's would.
    `table`/`locations` mirror the manager's table (see `refresh`) for the model oracle.
    """

    __test__ = False  # not a pytest test class, whatever imports it

    def __init__(
        self, topology: Topology, prefix: str | None = None, *, record: bool = False, workdir: Path | None = None
    ) -> None:
        self.topology = topology
        self.prefix = prefix or netns.new_prefix()
        self.record = record  # keep a state file so `hostvlan testbed down` can find it
        self.workdir = workdir or STATE_DIR / self.prefix
        self.switch_ns = f"{self.prefix}-sw"
        self.mgmt_ns = f"{self.prefix}-mg"
        self.hosts: dict[str, HostInfo] = {}
        self.vms: dict[str, VmInfo] = {}
        self.external: dict[str, ExternalInfo] = {}
        self.table = LnidTable()
        self.locations: dict[Mac, Location] = {}
        self.manager_url = ""
        self.manager_token = ""
        self.api: Client | None = None
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen[bytes]] = []  # kept until reaped (else ResourceWarning)
        self._readers: dict[str, TenantFilter] = {}
        self._ovs: dict[str, OvsDaemons] = {}  # the private Open vSwitch of each `ovs` host
        self.guests = guestvms.GuestFleet(self.prefix, self.workdir)  # `guests: libvirt` hosts
        self._plan()

    # ----- plan (pure) ---------------------------------------------------------------
    def _plan(self) -> None:
        ips = iter(SUBNET.hosts())
        taken = {e.mac for e in self.topology.endpoints()}
        for i, h in enumerate(self.topology.hosts):
            uplink_mac = self._uplink_mac(i, taken)
            self.hosts[h.name] = HostInfo(
                h.name, f"{self.prefix}-h-{h.name}", h.backend, BRIDGE, UPLINK, uplink_mac, h.guests
            )
            for k, vm in enumerate(h.vms):
                port = PortName(f"macvtap{k}" if h.backend.startswith("macvtap") else f"vnet{k}")
                if h.guests == "libvirt":  # libvirt's own names, in creation order (guestvms)
                    uri = guestvms.uri_for(guestvms.daemon_dir(self.workdir, i))
                    self.vms[vm.name] = VmInfo(
                        vm.name, "", "eth0", vm.mac, str(next(ips)), h.name, port, f"{self.prefix}-{vm.name}", uri
                    )
                    continue
                self.vms[vm.name] = VmInfo(
                    vm.name, f"{self.prefix}-v-{vm.name}", "eth0", vm.mac, str(next(ips)), h.name, port
                )
        for e in self.topology.external:
            self.external[e.name] = ExternalInfo(e.name, f"{self.prefix}-x-{e.name}", "eth0", e.mac, str(next(ips)))

    @staticmethod
    def _uplink_mac(index: int, taken: set[Mac]) -> Mac:
        base = 0x0E_48_56_00_00_00  # locally administered, unicast
        n = index + 1
        while int_to_mac(base + n) in taken:
            n += 0x1000
        return int_to_mac(base + n)

    def filtered_hosts(self) -> list[str]:
        return [h for h, i in self.hosts.items() if i.filtered]

    # ----- the model's view of what hosts should enforce --------------------------------------
    def refresh(self) -> None:
        """Mirror the manager's table (it may have been changed with `hostvlan reg` …)."""
        assert self.api is not None
        table = LnidTable()
        locations: dict[Mac, Location] = {}
        for row in self.api.macs():
            mac = Mac(row["mac"])
            for lnid in row["lnids"]:
                table.add(mac, parse_lnid(lnid))
            locations[mac] = Location(
                HostId(row["host"]) if row["host"] else None, PortName(row["port"]) if row["port"] else None
            )
        self.table, self.locations = table, locations

    def filter_state(self, host: str) -> FilterState:
        """The model's state of one host's tenant filter, from the mirrored table."""
        info = self.hosts[host]
        view = host_view(self.table, self.locations, HostId(host))
        ports = {vm.mac: vm.port for vm in self.vms.values() if vm.host == host}
        return filter_state(view, ports, {info.uplink: info.uplink_mac})

    def states(self) -> dict[str, FilterState | None]:
        """Per host: the model state its filter enforces, None for an unfiltered (`none`) host."""
        return {h: (self.filter_state(h) if i.filtered else None) for h, i in self.hosts.items()}

    def endpoint(self, name: str) -> Endpoint:
        for e in self.topology.endpoints():
            if e.name == name:
                return e
        raise KeyError(name)

    # ----- administering (through the manager's API) ------------------------------------------
    def _ops(self, ops: list[dict[str, Any]]) -> int:
        assert self.api is not None
        rev = 0
        for i in range(0, len(ops), 20000):
            rev = int(self.api.batch(ops[i : i + 20000])["revision"])
        return rev

    def set_lnids(self, name: str, lnids: Iterable[Lnid]) -> None:
        """Change an endpoint's LNIDs through the API (the paper's "VM1-1 joins LNID 3"); wait until enforced."""
        mac = self.endpoint(name).mac
        want = set(lnids)
        have = set(self.table.lnids(mac))
        host = self.vms[name].host if name in self.vms else None
        ops: list[dict[str, Any]] = [
            {"op": "reg", "lnid": _lnid_json(x), "mac": mac, "host": host, "external": host is None}
            for x in sorted(want - have)
        ]
        ops += [{"op": "unreg", "lnid": _lnid_json(x), "mac": mac} for x in sorted(have - want)]
        if ops:
            self._ops(ops)
        self.program()

    def fill(
        self,
        host: str,
        macs: int,
        lnids: int,
        ports: int,
        *,
        first_lnid: int = 1,
        base: int = 0,
        port_lnids: int = 1,
    ) -> None:
        """Grow `host`'s table to the paper's worst case without building VMs (through the API).

        Registers `macs` remote MACs spread round-robin over LNIDs first_lnid…first_lnid+lnids-1
        on a phantom host `<host>-fill` (VMs that need not exist), and `ports` idle ports
        (`idle<k>`) of `host` in those LNIDs, each in `port_lnids` of them (port k: the k-th
        LNID and the next ones, round-robin). On a Linux bridge each idle port is a real
        port, a veth on br0 whose peer (`<port>p`) stays in the host (it takes its copy of
        every flood, and the filter holds its entries, as on a full host); elsewhere it is a
        name alone. Call `program()` after.
        `base` keeps the MACs of several filled hosts apart.
        """
        assert self.api is not None
        if self.hosts[host].switch == "bridge":
            add_idle_ports(self.hosts[host].netns, [f"idle{k}" for k in range(ports)])
        phantom = f"{host}-fill"
        if phantom not in {h["name"] for h in self.api.hosts()}:
            self.api.add_host(phantom)
        ops: list[dict[str, Any]] = []
        for i in range(macs):
            mac = int_to_mac(0x02_FE_00_00_00_00 + (base << 24) + i)
            ops.append({"op": "reg", "lnid": first_lnid + i % lnids, "mac": mac, "host": phantom})
        for k in range(ports):
            mac = int_to_mac(0x02_FD_00_00_00_00 + (base << 24) + k)
            for j in range(port_lnids):
                lnid = first_lnid + (k + j) % lnids
                ops.append({"op": "reg", "lnid": lnid, "mac": mac, "host": host, "port": f"idle{k}"})
        self._ops(ops)

    def program(self, timeout: float = 30.0) -> float:
        """Wait until every agent enforces the manager's current table; mirror it. Returns the wait."""
        assert self.api is not None
        waited = control.wait_synced(self.api, self.filtered_hosts(), timeout)
        self.refresh()
        return waited

    def counters(self, host: str) -> dict[str, PortCounters]:
        h = self.hosts[host]
        if not h.filtered:
            return {}
        if host not in self._readers:
            if h.backend == "ovs":
                tools = self._ovs[host].tools
                self._readers[host] = OvsFilter(BRIDGE, tools, OvsDb(tools.db_remote))
            elif h.backend == "macvtap":
                with netns.inside(h.netns):
                    nft = Nft()
                self._readers[host] = MacvtapFilter(nft)
            else:
                self._readers[host] = self.bridge_filter(host)
        return self._readers[host].counters()

    def bpf_pins(self, host: str) -> Path:
        """Where `host`'s agent pins its tc receive filter (removed by `down`)."""
        return BPFFS / f"{self.prefix}-{host}"

    def bridge_filter(self, host: str) -> TcBridgeFilter:
        """A filter object on the kernel state `host`'s agent programs (to read it back; the
        caller closes it)."""
        with netns.inside(self.hosts[host].netns):
            nft, ports = Nft(), BridgePorts()
        return TcBridgeFilter(nft, ports, self.bpf_pins(host))

    # ----- build / teardown -------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._save(status="building")
        try:
            self._build()
        except Exception as exc:
            logs = self._log_tails()
            self.down()
            raise RuntimeError(f"testbed {self.prefix} failed to come up: {exc}{logs}") from exc
        except BaseException:
            self.down()
            raise
        self._save(status="up")

    def _log_tails(self, lines: int = 15) -> str:
        out = []
        for log in sorted(self.workdir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            if tail:
                out.append(f"\n--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
        return "".join(out)

    def down(self) -> None:
        for reader in self._readers.values():
            close = getattr(reader, "close", None)
            if close is not None:
                close()
        self._readers.clear()
        if self.api is not None:
            self.api.close()
            self.api = None
        try:  # domains first (libvirt removes their ports), then the daemons
            self.guests.stop()
        except guestvms.LibvirtdError:
            pass  # what is left is killed below, inside the namespaces
        control.stop_pids(list(self.pids.values()))
        for daemons in self._ovs.values():
            daemons.stop(remove_dir=False)
        self._ovs.clear()
        control.stop_pids(control.pids_in_netns(netns.owned(self.prefix)))
        for proc in self._procs:
            proc.poll()  # reap (stop_pids may have already)
        self._procs.clear()
        self.pids.clear()
        netns.sweep(self.prefix)
        sweep_pins(self.prefix)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.record:
            (STATE_DIR / f"{self.prefix}.json").unlink(missing_ok=True)

    def _save(self, status: str) -> None:
        if not self.record:
            return
        data = self.to_json()
        data["status"] = status
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
        self._start_manager()
        self._new_ns(self.switch_ns)
        with netns.iproute(self.switch_ns) as sw:
            sw.link("add", ifname=SWITCH, kind="bridge", br_stp_state=0, br_mcast_snooping=0)
            sw.link("set", index=sw.link_lookup(ifname=SWITCH)[0], state="up")
        for i, h in enumerate(self.hosts.values()):
            self._build_host(i, h)
            if h.guests == "libvirt":  # its libvirtd probes QEMU (~8 s) while the rest is built
                ovs_rundir = self._ovs[h.name].tools.rundir if h.switch == "ovs" else None
                source = h.uplink if h.switch == "macvtap" else BRIDGE
                self.pids[f"libvirtd:{h.name}"] = self.guests.spawn(h.name, i, h.netns, h.switch, source, ovs_rundir)
        self._start_agents()
        for j, e in enumerate(self.external.values()):
            self._build_endpoint(e.netns, e.mac, e.ip, self.switch_ns, f"ex{j}", SWITCH, None)
        guest_vms = [vm for vm in self.vms.values() if vm.domain]
        macvtap_vms = [vm for vm in self.vms.values() if self.hosts[vm.host].switch == "macvtap" and not vm.domain]
        for vm in self.vms.values():
            if vm not in macvtap_vms and vm not in guest_vms:
                self._build_endpoint(
                    vm.netns,
                    vm.mac,
                    vm.ip,
                    self.hosts[vm.host].netns,
                    vm.port,
                    BRIDGE,
                    tap_mac(vm.mac),
                    ovs=self.hosts[vm.host].switch == "ovs",
                )
        if self._ovs:  # the userspace datapath takes frames as AF_PACKET hands them: no offloads
            for ns in [vm.netns for vm in self.vms.values() if vm not in macvtap_vms and not vm.domain] + [
                e.netns for e in self.external.values()
            ]:
                subprocess.run(
                    ["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"],
                    check=True,
                    capture_output=True,
                    timeout=10,
                )
        self._register()
        for i, spec in enumerate(self.topology.hosts):
            if spec.fill is not None:
                # each filled host gets LNIDs of its own: its view holds its fill, not the others'
                first = 1 + sum(s.fill.lnids for s in self.topology.hosts[:i] if s.fill)
                f = spec.fill
                self.fill(spec.name, f.macs, f.lnids, f.ports, first_lnid=first, base=i, port_lnids=f.port_lnids)
        # a big fill takes its agents a while to install (~1 min per million (port, LNID) facts)
        filled = sum(s.fill.macs + s.fill.ports * s.fill.port_lnids for s in self.topology.hosts if s.fill)
        self.program(timeout=30.0 + filled / 10_000)
        for vm in macvtap_vms:  # the macvtap contract: the port is bound before the device comes up
            self._build_macvtap_vm(vm)
        self._wait_macvtaps(macvtap_vms)
        if guest_vms:
            self._start_guests(guest_vms)
        netns.wait_operstate_up(netns.owned(self.prefix))

    def _start_guests(self, vms: list[VmInfo]) -> None:
        """Boot the libvirt guests (their ports registered already where the macvtap contract
        needs it), then wait until each agent has found its guests' ports."""
        self.guests.wait()
        for vm in vms:
            dom = self.guests.start(vm.name, vm.host, vm.mac, f"{vm.ip}/{SUBNET.prefixlen}")
            self.vms[vm.name] = replace(vm, port=dom.port, domain=dom.domain, libvirt_uri=dom.uri)
        self._save(status="building")
        self.guests.wait_booted([vm.name for vm in vms])
        self.wait_guest_ports([vm.name for vm in vms])

    def wait_guest_ports(self, vms: list[str], timeout: float = 60.0) -> None:
        """Wait until each filtered host's agent has bound the ports libvirt made (its log)."""
        end = time.monotonic() + timeout
        for name in vms:
            vm = self.vms[name]
            if not self.hosts[vm.host].filtered or not self.endpoint(name).lnids:
                continue
            log = self.workdir / f"{vm.host}.agent.log"
            want = f"'{vm.mac}': '{vm.port}'"
            while want not in _read_from(log, 0).rsplit("ports now:", 1)[-1]:
                if time.monotonic() > end:
                    raise TimeoutError(f"the agent of {vm.host} did not bind {vm.port} of guest {name}")
                time.sleep(0.05)

    def migrate_guest(self, name: str, host: str) -> VmInfo:
        """Live-less migration as an operator does it: destroy the domain, `move` its MAC to
        `host` (with the port libvirt will make there when the macvtap contract needs it),
        start it on `host`'s libvirtd; returns once it booted and the agent bound its port."""
        assert self.api is not None
        vm = self.vms[name]
        self.guests.destroy(name)
        dst = self.hosts[host]
        port = self.guests.predict_port(host) if dst.switch == "macvtap" else None
        self.api.move(vm.mac, host, port)
        self.program()
        dom = self.guests.start(name, host, vm.mac, f"{vm.ip}/{SUBNET.prefixlen}")
        self.vms[name] = replace(vm, host=host, port=dom.port, domain=dom.domain, libvirt_uri=dom.uri)
        self._save(status="up")
        self.guests.wait_booted([name])
        self.wait_guest_ports([name])
        return self.vms[name]

    def _start_manager(self) -> None:
        self._new_ns(self.mgmt_ns)
        with netns.iproute(self.mgmt_ns) as ipr:
            ipr.link("add", ifname="mg0", kind="bridge", br_stp_state=0)
            idx = ipr.link_lookup(ifname="mg0")[0]
            ipr.addr("add", index=idx, address=f"{control.MGMT_NET}.1", prefixlen=16)
            ipr.link("set", index=idx, state="up")
        self._run_manager()

    def _run_manager(self, status: str = "building") -> None:
        """Start the manager process on the testbed's database and wait until it serves."""
        ready = self.workdir / "manager.ready"
        ready.unlink(missing_ok=True)
        proc = control.start(
            control.hostvlan_argv(
                "manager",
                "--db",
                str(self.workdir / "manager.db"),
                "--listen",
                "127.0.0.1:0",
                "--listen",
                f"{self.mgmt_ns}/{control.MGMT_NET}.1:{control.MGMT_PORT}",
                "--ready-file",
                str(ready),
            ),
            self.workdir / "manager.log",
        )
        self.pids["manager"] = proc.pid
        self._procs.append(proc)
        self._save(status=status)
        info = control.wait_file(ready, proc, "the manager")
        self.manager_url = str(info["listen"][0]["url"])
        self.manager_token = Path(info["token_file"]).read_text().strip()
        if self.api is not None:
            self.api.close()
        self.api = Client(self.manager_url, self.manager_token)

    def restart_manager(self, timeout: float = 30.0) -> float:
        """Start the manager again on the same database, exactly as `up` did (after a crash or
        `kill("manager")`; a running manager is stopped first), then wait until every agent
        has reconnected and applied its snapshot. The root-namespace URL (`manager_url`)
        changes; agents find it at the same management address. Returns the wait for the agents."""
        old = self.pids.pop("manager", None)
        if old is not None:
            control.stop_pids([old])
        if self.api is not None:
            self.api.close()
            self.api = None
        self._run_manager(status="up")
        return self.program(timeout)

    def kill(self, name: str, timeout: float = 10.0) -> None:
        """SIGKILL a control-plane process (`manager` or `agent:<host>`, a key of `pids`) and
        its process group, as a crash would; return once it is gone. Its kernel state stays."""
        pid = self.pids[name]
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        mine = [p for p in self._procs if p.pid == pid]
        for proc in mine:
            proc.wait(timeout)
        end = time.monotonic() + timeout
        while not mine and control.running(pid):  # a re-attached testbed (`from_record`) has no Popen
            if time.monotonic() > end:
                raise TimeoutError(f"{name} (pid {pid}) still alive {timeout}s after SIGKILL")
            time.sleep(0.01)

    def _build_host(self, index: int, h: HostInfo) -> None:
        self._new_ns(h.netns)
        with netns.iproute(h.netns) as ipr:
            ipr.link(
                "add",
                ifname=h.uplink,
                kind="veth",
                address=h.uplink_mac,
                peer={"ifname": f"up{index}", "net_ns_fd": self.switch_ns},
            )
            up = ipr.link_lookup(ifname=h.uplink)[0]
            if h.switch == "macvtap":  # the macvtaps hang off the uplink itself: no bridge
                ipr.link("set", index=up, flags=IFF_UP | IFF_ALLMULTI, change=IFF_UP | IFF_ALLMULTI)
            elif h.switch == "ovs":  # an OVS bridge of a private Open vSwitch (fail-mode secure if filtered)
                self._start_ovs(index, h)
                with self._ovsdb(h.name) as db:
                    db.add_port(BRIDGE, h.uplink)
                ipr.link("set", index=up, state="up")
            else:
                ipr.link("add", ifname=BRIDGE, kind="bridge", address=h.uplink_mac, br_stp_state=0, br_mcast_snooping=0)
                br = ipr.link_lookup(ifname=BRIDGE)[0]
                ipr.link("set", index=up, master=br, state="up")
                ipr.link("set", index=br, state="up")
            ipr.link("add", ifname="mgmt0", kind="veth", peer={"ifname": f"m{index}", "net_ns_fd": self.mgmt_ns})
            m = ipr.link_lookup(ifname="mgmt0")[0]
            ipr.addr("add", index=m, address=f"{control.MGMT_NET}.{index + 2}", prefixlen=16)
            ipr.link("set", index=m, state="up")
        with netns.iproute(self.switch_ns) as sw:
            sw.link(
                "set", index=sw.link_lookup(ifname=f"up{index}")[0], master=sw.link_lookup(ifname=SWITCH)[0], state="up"
            )
        with netns.iproute(self.mgmt_ns) as mg:
            mg.link(
                "set", index=mg.link_lookup(ifname=f"m{index}")[0], master=mg.link_lookup(ifname="mg0")[0], state="up"
            )

    def _start_ovs(self, index: int, h: HostInfo) -> None:
        daemons = OvsDaemons(h.netns, self.workdir / f"ovs{index}")
        self._ovs[h.name] = daemons
        try:
            daemons.start()
        finally:
            for i, proc in enumerate(daemons.procs):
                self.pids[f"ovs{i}:{h.name}"] = proc.pid
        if h.filtered:
            with self._ovsdb(h.name) as db:
                db.ensure_bridge(BRIDGE, datapath_type=OVS_DATAPATH)
        else:  # the baseline: a plain learning switch (fail-mode standalone: the NORMAL action)
            daemons.tools.vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, f"datapath_type={OVS_DATAPATH}")

    @contextmanager
    def _ovsdb(self, host: str) -> Iterator[OvsDb]:
        db = OvsDb(self._ovs[host].tools.db_remote)
        try:
            yield db
        finally:
            db.close()

    def _start_agents(self) -> None:
        """Register every host; start an agent per filtered host; wait until each installed its filter
        (closed) — before any VM port exists."""
        assert self.api is not None
        procs = []
        for h in self.hosts.values():
            token = self.api.add_host(h.name)["token"]
            if not h.filtered:
                continue
            token_file = self.workdir / f"{h.name}.token"
            token_file.write_text(token)
            token_file.chmod(0o600)
            procs.append((h, *self._run_agent(h)))
        self._save(status="building")
        for h, proc, ready in procs:
            control.wait_file(ready, proc, f"the agent of {h.name}")

    def _run_agent(self, h: HostInfo) -> tuple[subprocess.Popen[bytes], Path]:
        """Start `h`'s agent inside its namespace (its token file is in the workdir)."""
        ready = self.workdir / f"{h.name}.agent.ready"
        ready.unlink(missing_ok=True)
        proc = control.start(
            control.hostvlan_argv(
                "agent",
                "--manager",
                f"http://{control.MGMT_NET}.1:{control.MGMT_PORT}",
                "--host",
                h.name,
                "--token-file",
                str(self.workdir / f"{h.name}.token"),
                "--uplink",
                f"{h.uplink}={h.uplink_mac}",
                "--backend",
                h.backend,
                *(self._ovs_agent_args(h.name) if h.backend == "ovs" else []),
                *(["--bpf-pins", str(self.bpf_pins(h.name))] if h.backend == "bridge" else []),
                "--ready-file",
                str(ready),
                "-v",
            ),
            self.workdir / f"{h.name}.agent.log",
            netns=h.netns,
        )
        self.pids[f"agent:{h.name}"] = proc.pid
        self._procs.append(proc)
        return proc, ready

    def _ovs_agent_args(self, host: str) -> list[str]:
        tools = self._ovs[host].tools
        return ["--ovs-db", tools.db_remote, "--ovs-rundir", tools.rundir, "--bridge", BRIDGE]

    def restart_agent(self, host: str, timeout: float = 15.0) -> float:
        """Start `host`'s agent again exactly as `up` does (after a crash or `kill`; a running
        agent is stopped first). Returns once the new agent has enforced its first snapshot
        and the manager sees the host in sync; the value is the time that took."""
        h = self.hosts[host]
        if not h.filtered:
            raise ValueError(f"host {host} runs no agent (backend {h.backend})")
        old = self.pids.pop(f"agent:{host}", None)
        if old is not None:
            control.stop_pids([old])
        log = self.workdir / f"{host}.agent.log"
        start = log.stat().st_size if log.exists() else 0
        t0 = time.monotonic()
        proc, ready = self._run_agent(h)
        self._save(status="up")
        control.wait_file(ready, proc, f"the agent of {host}", timeout)
        while SNAPSHOT_LOG not in _read_from(log, start):
            if proc.poll() is not None:
                raise RuntimeError(f"the agent of {host} exited with status {proc.returncode}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the agent of {host} enforced no snapshot after {timeout}s")
            time.sleep(0.01)
        assert self.api is not None
        control.wait_synced(self.api, [host], max(0.1, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0

    def _register(self) -> None:
        """Register the topology's VMs and external endpoints, as an administrator would."""
        ops: list[dict[str, Any]] = []
        for e in self.topology.endpoints():
            # a macvtap VM is registered with its port, so its filter exists before its device does
            port = self.vms[e.name].port if e.host and self.hosts[e.host].switch == "macvtap" else None
            for lnid in sorted(e.lnids):
                ops.append(
                    {
                        "op": "reg",
                        "lnid": _lnid_json(lnid),
                        "mac": e.mac,
                        "host": e.host,
                        "port": port,
                        "external": e.host is None,
                    }
                )
        if ops:
            self._ops(ops)

    def _build_macvtap_vm(self, vm: VmInfo) -> None:
        """A macvtap VM: the macvtap (bridge mode on the uplink, MAC = vNIC MAC) stays in the host
        namespace beside its filter; a QEMU stand-in (`testbed.vmtap`) carries its frames to the
        VM namespace's eth0. The device is created DOWN: the host's agent brings it up once its
        port is bound, and keeps it down otherwise (the macvtap contract)."""
        h = self.hosts[vm.host]
        self._new_ns(vm.netns)
        with netns.iproute(h.netns) as ipr:
            lower = ipr.link_lookup(ifname=h.uplink)[0]
            ipr.link("add", ifname=vm.port, kind="macvtap", link=lower, macvtap_mode="bridge", address=vm.mac)
            idx = ipr.link_lookup(ifname=vm.port)[0]
            if not h.filtered:  # the unfiltered baseline: nobody else brings it up
                ipr.link("set", index=idx, flags=IFF_UP | IFF_ALLMULTI, change=IFF_UP | IFF_ALLMULTI)
        dev = (self.workdir / "dev").resolve()
        dev.mkdir(exist_ok=True)
        # /dev/tapN collides across namespaces: a private node
        node = private_tap_node(h.netns, vm.port, idx, dev / f"{h.name}-{vm.port}")
        log = self.workdir / f"{vm.name}.vmtap.log"
        proc = control.start(
            [
                sys.executable,
                "-m",
                "hostvlan.testbed.vmtap",
                "--tap",
                str(node),
                "--netns",
                vm.netns,
                "--ifname",
                vm.ifname,
                "--ip",
                f"{vm.ip}/{SUBNET.prefixlen}",
            ],
            log,
        )
        self.pids[f"vmtap:{vm.name}"] = proc.pid
        self._procs.append(proc)
        control.wait_log(log, f"ready {vm.port} {vm.ifname} {vm.mac}", proc, f"the stand-in of {vm.name}")

    def _wait_macvtaps(self, vms: list[VmInfo], timeout: float = 10.0) -> None:
        """Wait until the agents brought up the macvtap of every registered VM."""
        end = time.monotonic() + timeout
        for vm in vms:
            if not self.endpoint(vm.name).lnids and self.hosts[vm.host].filtered:
                continue  # unregistered: its agent keeps it down
            while True:
                with netns.iproute(self.hosts[vm.host].netns) as ipr:
                    link = ipr.get_links(ipr.link_lookup(ifname=vm.port)[0])[0]
                if link["flags"] & IFF_UP and link.get("operstate") in ("UP", "UNKNOWN"):
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"the agent of {vm.host} did not bring up {vm.port} of {vm.name}")
                time.sleep(0.01)

    def _build_endpoint(
        self,
        ns: str,
        mac: Mac,
        ip: str,
        parent_ns: str,
        port: str,
        bridge: str,
        port_mac: Mac | None,
        ovs: bool = False,
    ) -> None:
        """An endpoint namespace with `eth0`, cabled to `bridge` in `parent_ns` through port `port`
        (a Linux bridge, or with `ovs` the host's OVS bridge, the port tagged with the vNIC MAC)."""
        self._new_ns(ns)
        with netns.iproute(parent_ns) as ipr:
            kw: dict[str, Any] = {"address": port_mac} if port_mac else {}
            ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns, "address": mac}, **kw)
            idx = ipr.link_lookup(ifname=port)[0]
            if ovs:
                host = next(h for h in self.hosts.values() if h.netns == parent_ns)
                with self._ovsdb(host.name) as db:
                    db.add_port(BRIDGE, port, attached_mac=mac, iface_id=ns)
                ipr.link("set", index=idx, state="up")
            else:
                ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0], state="up")
        with netns.iproute(ns) as ipr:
            idx = ipr.link_lookup(ifname="eth0")[0]
            ipr.addr("add", index=idx, address=ip, prefixlen=SUBNET.prefixlen)
            ipr.link("set", index=idx, state="up")

    # ----- output -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "vms": {n: asdict(vm) for n, vm in self.vms.items()},
            "external": {n: asdict(e) for n, e in self.external.items()},
            "hosts": {n: asdict(h) for n, h in self.hosts.items()},
            "switch": {"netns": self.switch_ns, "bridge": SWITCH},
            "manager": {
                "url": self.manager_url,
                "token": self.manager_token,
                "netns_url": f"http://{control.MGMT_NET}.1:{control.MGMT_PORT}",
            },
            "pids": dict(self.pids),
            "workdir": str(self.workdir),
            "topology": self.topology.to_dict(),
        }


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _lnid_json(lnid: Lnid) -> int | str:
    return "global" if lnid == GLOBAL else int(lnid)


def from_record(data: dict[str, Any]) -> Testbed:
    """Re-attach to a running testbed from its state file (planning is deterministic)."""
    topo = parse_topology(yaml.safe_dump(data["topology"]), f"testbed {data['prefix']}")
    tb = Testbed(topo, prefix=str(data["prefix"]), record=True, workdir=Path(data["workdir"]))
    tb.manager_url = data["manager"]["url"]
    tb.manager_token = data["manager"]["token"]
    tb.api = Client(tb.manager_url, tb.manager_token)
    tb.pids = {k: int(v) for k, v in data.get("pids", {}).items()}
    if data.get("vms"):  # where the VMs are now (libvirt's ports, migrated guests)
        tb.vms = {n: VmInfo(**v) for n, v in data["vms"].items()}
    tb.refresh()
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
    """Remove recorded testbeds (all, or the one with `prefix`): stop their processes, remove their
    namespaces and files. Returns the namespaces removed. Idempotent."""
    gone: list[str] = []
    for st in recorded():
        p = str(st.get("prefix", ""))
        if not p or (prefix and p != prefix):
            continue
        if st.get("workdir"):  # libvirt guests: their domains, while their daemons still answer
            guestvms.destroy_recorded(Path(str(st["workdir"])))
        control.stop_pids([int(x) for x in st.get("pids", {}).values()])
        if st.get("workdir"):  # also what a killed `up` started but did not record
            control.stop_pids(control.pids_naming(str(st["workdir"])))
        control.stop_pids(control.pids_in_netns(netns.owned(p)))
        gone += netns.sweep(p)
        sweep_pins(p)
        if st.get("workdir"):
            shutil.rmtree(str(st["workdir"]), ignore_errors=True)
        (STATE_DIR / f"{p}.json").unlink(missing_ok=True)
    if prefix:
        control.stop_pids(control.pids_in_netns(netns.owned(prefix)))
        gone += netns.sweep(prefix)
        sweep_pins(prefix)
    return gone


def add_idle_ports(ns: str, names: list[str]) -> None:
    """Idle bridge ports: veths on br0, up, their peers `<name>p` up beside them (this kernel
    has no `dummy`; those already there are kept)."""
    with netns.iproute(ns) as ipr:
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        for name in names:
            if not ipr.link_lookup(ifname=name):
                ipr.link("add", ifname=name, kind="veth", peer=f"{name}p")
                ipr.link("set", index=ipr.link_lookup(ifname=f"{name}p")[0], state="up")
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=br, state="up")


def sweep_pins(prefix: str) -> None:
    """Remove the tc receive filter's pins of a testbed's hosts (their maps go with them)."""
    if BPFFS.is_dir():
        for d in BPFFS.glob(f"{prefix}-*"):
            shutil.rmtree(d, ignore_errors=True)
