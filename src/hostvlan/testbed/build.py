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

The control plane is real (`control.py`): a manager, and an agent in each filtered host's
namespace, started before any VM port exists (the filter is installed closed first); then the
VMs are registered through the API and `up` returns once every agent enforces them.

The testbed's parts: `plan.py` decides every name, MAC, IP and port from the topology (pure);
this module builds it (`Testbed`, a context manager that always tears down) with the cabling
of `wiring.py`; `control.py` starts and stops processes; `record.py` keeps the state file of a
testbed left running by `hostvlan testbed up` (`from_record` re-attaches to one).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import yaml

from hostvlan.client import Client
from hostvlan.datapath.base import PortCounters, TenantFilter
from hostvlan.datapath.factory import BackendSpec, build_backend
from hostvlan.datapath.kernel.ovsdb import OvsDb
from hostvlan.model.hostview import Location, filter_state, host_view
from hostvlan.model.ids import HostId, Lnid, Mac, PortName, parse_lnid, tap_mac
from hostvlan.model.ports import FilterState
from hostvlan.model.table import LnidTable
from hostvlan.testbed import control, guestvms, ipv6, netns, record, wiring
from hostvlan.testbed import metrics as tbm
from hostvlan.testbed.ovsd import OvsDaemons
from hostvlan.testbed.plan import (
    BRIDGE,
    FILTERED,
    SUBNET,
    SWITCH,
    UPLINK,
    ExternalInfo,
    HostInfo,
    VmInfo,
    batches,
    fill_jobs,
    fill_ops,
    fill_phantom,
    idle_ports,
    lnid_change_ops,
    make_plan,
    program_timeout,
    registration_ops,
)
from hostvlan.testbed.record import STATE_DIR, PrefixInUse, down_recorded, recorded, sweep_pins
from hostvlan.testbed.replicas import Replicas
from hostvlan.testbed.topology import Endpoint, Topology, parse_topology
from hostvlan.testbed.vmtap import private_tap_node
from hostvlan.testbed.wiring import add_idle_ports

__all__ = [
    "BRIDGE", "FILTERED", "STATE_DIR", "SUBNET", "SWITCH", "UPLINK", "ExternalInfo", "HostInfo", "PrefixInUse",
    "Testbed", "VmInfo", "add_idle_ports", "down_recorded", "from_record", "recorded", "sweep_pins",
]  # fmt: skip

OVS_DATAPATH = os.environ.get("HOSTVLAN_OVS_DATAPATH", "netdev")  # this kernel has no openvswitch module
SNAPSHOT_LOG = "snapshot enforced"  # what an agent logs once its first snapshot is in the kernel


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
        self.switch_ns = f"{self.prefix}-sw"  # the plan's names (see plan.Plan)
        self.mgmt_ns = f"{self.prefix}-mg"
        self.plan = make_plan(topology, self.prefix)
        self.hosts: dict[str, HostInfo] = self.plan.hosts
        self.vms: dict[str, VmInfo] = self.plan.vms
        self.external: dict[str, ExternalInfo] = self.plan.external
        for name, vm in self.vms.items():  # a libvirt guest's daemon: its socket is in the work dir
            if vm.domain:
                i = list(self.hosts).index(vm.host)
                self.vms[name] = replace(vm, libvirt_uri=guestvms.uri_for(guestvms.daemon_dir(self.workdir, i)))
        self.table = LnidTable()
        self.locations: dict[Mac, Location] = {}
        self.manager_url = ""
        self.manager_token = ""
        self.manager_metrics: dict[str, str] = {}  # metrics_url, metrics_netns_url (testbed.metrics)
        self.api: Client | None = None
        self.replicas: Replicas | None = None  # `control: {managers: N, store: etcd}`
        self.pids: dict[str, int] = {}
        self._procs: list[subprocess.Popen[bytes]] = []  # kept until reaped (else ResourceWarning)
        self._readers: dict[str, TenantFilter] = {}
        self._ovs: dict[str, OvsDaemons] = {}  # the private Open vSwitch of each `ovs` host
        self.guests = guestvms.GuestFleet(self.prefix, self.workdir)  # `guests: libvirt` hosts

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
        for batch in batches(ops):
            rev = int(self.api.batch(batch)["revision"])
        return rev

    def set_lnids(self, name: str, lnids: Iterable[Lnid]) -> None:
        """Change an endpoint's LNIDs through the API (the paper's "VM1-1 joins LNID 3"); wait until enforced."""
        mac = self.endpoint(name).mac
        want = set(lnids)
        have = set(self.table.lnids(mac))
        host = self.vms[name].host if name in self.vms else None
        ops = lnid_change_ops(mac, host, have, want)
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
        if self.hosts[host].switch == "bridge":  # each carries its vNIC's MAC as a tap does (the agent checks)
            add_idle_ports(self.hosts[host].netns, idle_ports(ports, base))
        phantom = fill_phantom(host)
        if phantom not in {h["name"] for h in self.api.hosts()}:
            self.api.add_host(phantom)
        self._ops(fill_ops(host, macs, lnids, ports, first_lnid=first_lnid, base=base, port_lnids=port_lnids))

    def program(self, timeout: float = 30.0) -> float:
        """Wait until every agent enforces the manager's current table; mirror it. Returns the wait."""
        assert self.api is not None
        waited = self._wait_synced(self.filtered_hosts(), timeout)
        self.refresh()
        return waited

    def counters(self, host: str) -> dict[str, PortCounters]:
        reader = self._reader(host)
        return reader.counters() if reader else {}

    def drops(self, host: str) -> dict[tuple[str, str], int]:
        """The kernel's drop counts of `host` per (port, reason code), as its agent reads them."""
        reader = self._reader(host)
        return reader.drops() if reader else {}

    def _reader(self, host: str) -> TenantFilter | None:
        h = self.hosts[host]
        if not h.filtered:
            return None
        if host not in self._readers:
            if h.backend == "ovs":
                tools = self._ovs[host].tools
                spec = BackendSpec(kind="ovs", ovs_bridge=BRIDGE, ovs_db=tools.db_remote, ovs_rundir=tools.rundir)
                self._readers[host] = build_backend(spec)
            elif h.backend == "macvtap":
                with netns.inside(h.netns):
                    self._readers[host] = build_backend(BackendSpec(kind="macvtap"))
            else:
                self._readers[host] = self.bridge_filter(host)
        return self._readers[host]

    def _wait_synced(self, hosts: list[str], timeout: float) -> float:
        assert self.api is not None
        return (
            self.replicas.wait_synced(hosts, timeout)
            if self.replicas
            else control.wait_synced(self.api, hosts, timeout)
        )

    def bpf_pins(self, host: str) -> Path:
        """Where `host`'s agent pins its tc receive filter (removed by `down`)."""
        return self.plan.bpf_pins(host)

    def bridge_filter(self, host: str) -> TenantFilter:
        """A filter object on the kernel state `host`'s agent programs (to read it back; the
        caller closes it): the agent's default bridge back end, built in the host's namespace."""
        with netns.inside(self.hosts[host].netns):
            return build_backend(BackendSpec(kind="bridge", bpf_pins=self.bpf_pins(host)))

    # ----- build / teardown -------------------------------------------------------------
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Build it; on any failure remove what was built. A prefix already in use (a recorded
        testbed, or namespaces of that prefix) raises `PrefixInUse` and touches nothing."""
        record.check_free(self.prefix)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._save(status="building")
        try:
            self._build()
        except Exception as exc:
            logs = control.log_tails(self.workdir)
            self.down()
            raise RuntimeError(f"testbed {self.prefix} failed to come up: {exc}{logs}") from exc
        except BaseException:
            self.down()
            raise
        self._save(status="up")

    def down(self) -> None:
        for reader in self._readers.values():
            close = getattr(reader, "close", None)
            if close is not None:
                close()
        self._readers.clear()
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.replicas is not None:
            self.replicas.close()
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
        record.sweep(self.prefix)
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.record:
            record.forget(self.prefix)

    def _save(self, status: str) -> None:
        if not self.record:
            return
        record.save(self.prefix, self.to_json() | {"status": status})

    def _build(self) -> None:
        self._start_manager()
        wiring.switch(self.switch_ns, SWITCH)
        for i, h in enumerate(self.hosts.values()):
            mgmt_ip = f"{control.MGMT_NET}.{i + 2}"
            ovs = functools.partial(self._start_ovs, i, h) if h.switch == "ovs" else None
            wiring.host(h, i, self.switch_ns, SWITCH, self.mgmt_ns, mgmt_ip, ovs)
            if h.guests == "libvirt":  # its libvirtd probes QEMU (~8 s) while the rest is built
                ovs_rundir = self._ovs[h.name].tools.rundir if h.switch == "ovs" else None
                source = h.uplink if h.switch == "macvtap" else BRIDGE
                self.pids[f"libvirtd:{h.name}"] = self.guests.spawn(h.name, i, h.netns, h.switch, source, ovs_rundir)
        self._start_agents()
        for j, e in enumerate(self.external.values()):
            wiring.endpoint(e.netns, e.mac, e.ip, self.switch_ns, f"ex{j}", SWITCH, None, ip6=e.ip6)
        guest_vms = [vm for vm in self.vms.values() if vm.domain]  # libvirt guests: booted last
        macvtap_vms = [vm for vm in self.vms.values() if self.hosts[vm.host].switch == "macvtap" and not vm.domain]
        cabled = [vm for vm in self.vms.values() if vm not in macvtap_vms and not vm.domain]
        for vm in cabled:
            h = self.hosts[vm.host]
            ovs_port = functools.partial(self._ovs_port, h.name) if h.switch == "ovs" else None
            wiring.endpoint(vm.netns, vm.mac, vm.ip, h.netns, vm.port, BRIDGE, tap_mac(vm.mac), ovs_port, vm.ip6)
        if self._ovs:  # the userspace datapath takes frames as AF_PACKET hands them: no offloads
            for ns in [vm.netns for vm in cabled] + [e.netns for e in self.external.values()]:
                wiring.offloads_off(ns)
        self._register()
        for job in fill_jobs(self.topology):
            self.fill(job.host, job.macs, job.lnids, job.ports, first_lnid=job.first_lnid, base=job.base,
                      port_lnids=job.port_lnids)  # fmt: skip
        self.program(timeout=program_timeout(self.topology))
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
            dom = self.guests.start(vm.name, vm.host, vm.mac, f"{vm.ip}/{SUBNET.prefixlen}", f"{vm.ip6}/64")
            self.vms[vm.name] = replace(vm, port=dom.port, domain=dom.domain, libvirt_uri=dom.uri)
        self._save(status="building")
        self.guests.wait_booted([vm.name for vm in vms])
        self.wait_guest_ports([vm.name for vm in vms])

    def wait_guest_ports(self, vms: list[str], timeout: float = 60.0) -> None:
        """Wait until each filtered host's agent reports the ports libvirt made bound."""
        assert self.api is not None
        want = {
            self.vms[n].mac: self.vms[n].port
            for n in vms
            if self.hosts[self.vms[n].host].filtered and self.endpoint(n).lnids
        }
        guestvms.wait_ports_bound(self.api.macs, want, timeout)

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
        dom = self.guests.start(name, host, vm.mac, f"{vm.ip}/{SUBNET.prefixlen}", f"{vm.ip6}/64")
        self.vms[name] = replace(vm, host=host, port=dom.port, domain=dom.domain, libvirt_uri=dom.uri)
        self._save(status="up")
        self.guests.wait_booted([name])
        self.wait_guest_ports([name])
        return self.vms[name]

    def _start_manager(self) -> None:
        wiring.switch(self.mgmt_ns, wiring.MGMT_BRIDGE, f"{control.MGMT_NET}.1")
        if self.topology.control is not None:  # replicas on an etcd cluster
            self.replicas = Replicas(self, self.topology.control.managers)
            self.replicas.start()
            return
        self._run_manager()

    def _run_manager(self, status: str = "building") -> None:
        """Start the manager process on the testbed's database and wait until it serves."""
        ready = self.workdir / "manager.ready"
        ready.unlink(missing_ok=True)
        proc = control.start(
            control.manager_argv(self.workdir / "manager.db", self.mgmt_ns, ready) + tbm.manager_args(self.mgmt_ns),
            self.workdir / "manager.log",
        )
        self.pids["manager"] = proc.pid
        self._procs.append(proc)
        self._save(status=status)
        info = control.wait_file(ready, proc, "the manager")
        self.manager_url, self.manager_metrics = str(info["listen"][0]["url"]), tbm.manager_urls(info)
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
        control.kill_group(self.pids[name], self._procs, name, timeout)

    def _start_ovs(self, index: int, h: HostInfo) -> wiring.OvsPort:
        """Start `h`'s private Open vSwitch and its bridge; returns the adder of its ports."""
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
        return functools.partial(self._ovs_port, h.name)

    def _ovs_port(self, host: str, port: str, mac: Mac | None, iface_id: str | None) -> None:
        with self._ovsdb(host) as db:
            if mac is None:
                db.add_port(BRIDGE, port)
            else:
                db.add_port(BRIDGE, port, attached_mac=mac, iface_id=iface_id)

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
        extra = self._ovs_agent_args(h.name) if h.backend == "ovs" else []
        extra += ["--bpf-pins", str(self.bpf_pins(h.name))] if h.backend == "bridge" else []
        extra += tbm.agent_args(self.hosts, h.name)
        managers = self.replicas.agent_managers(list(self.hosts).index(h.name)) if self.replicas else ""
        proc = control.start(
            control.agent_argv(
                h.name,
                h.backend,
                f"{h.uplink}={h.uplink_mac}",
                self.workdir / f"{h.name}.token",
                ready,
                extra,
                managers,
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
        while SNAPSHOT_LOG not in control.read_from(log, start):
            if proc.poll() is not None:
                raise RuntimeError(f"the agent of {host} exited with status {proc.returncode}")
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"the agent of {host} enforced no snapshot after {timeout}s")
            time.sleep(0.01)
        assert self.api is not None
        self._wait_synced([host], max(0.1, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0

    def _register(self) -> None:
        """Register the topology's VMs and external endpoints, as an administrator would."""
        ops = registration_ops(self.topology, self.plan)
        if ops:
            self._ops(ops)

    def _build_macvtap_vm(self, vm: VmInfo) -> None:
        """A macvtap VM: the macvtap (bridge mode on the uplink, MAC = vNIC MAC) stays in the host
        namespace beside its filter; a QEMU stand-in (`testbed.vmtap`) carries its frames to the
        VM namespace's eth0. The device is created DOWN: the host's agent brings it up once its
        port is bound, and keeps it down otherwise (the macvtap contract)."""
        h = self.hosts[vm.host]
        wiring.new_ns(vm.netns)
        idx = wiring.macvtap(h, vm.port, vm.mac)
        dev = (self.workdir / "dev").resolve()
        dev.mkdir(exist_ok=True)
        # /dev/tapN collides across namespaces: a private node
        node = private_tap_node(h.netns, vm.port, idx, dev / f"{h.name}-{vm.port}")
        log = self.workdir / f"{vm.name}.vmtap.log"
        vmtap = ["-m", "hostvlan.testbed.vmtap", "--tap", str(node), "--netns", vm.netns, "--ifname", vm.ifname]
        proc = control.start(
            [sys.executable, *vmtap, "--ip", f"{vm.ip}/{SUBNET.prefixlen}"],
            log,
        )
        self.pids[f"vmtap:{vm.name}"] = proc.pid
        self._procs.append(proc)
        control.wait_log(log, f"ready {vm.port} {vm.ifname} {vm.mac}", proc, f"the stand-in of {vm.name}")
        ipv6.enable(vm.netns, vm.ip6, vm.ifname)

    def _wait_macvtaps(self, vms: list[VmInfo], timeout: float = 10.0) -> None:
        """Wait until the agents brought up the macvtap of every registered VM."""
        end = time.monotonic() + timeout
        for vm in vms:
            if not self.endpoint(vm.name).lnids and self.hosts[vm.host].filtered:
                continue  # unregistered: its agent keeps it down
            what = f"the agent of {vm.host} did not bring up {vm.port} of {vm.name}"
            wiring.wait_up(self.hosts[vm.host].netns, vm.port, end, what)

    # ----- output -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "vms": {n: asdict(vm) for n, vm in self.vms.items()},
            "external": {n: asdict(e) for n, e in self.external.items()},
            "hosts": {n: asdict(h) | tbm.host_metrics(self.hosts, n) for n, h in self.hosts.items()},
            "switch": {"netns": self.switch_ns, "bridge": SWITCH},
            "manager": {
                "url": self.manager_url,
                "token": self.manager_token,
                "netns_url": f"http://{control.MGMT_NET}.1:{control.MGMT_PORT}",
                **self.manager_metrics,
            },
            "pids": dict(self.pids),
            "workdir": str(self.workdir),
            "topology": self.topology.to_dict(),
        } | (self.replicas.record() if self.replicas else {})


def from_record(data: dict[str, Any]) -> Testbed:
    """Re-attach to a running testbed from its state file (planning is deterministic)."""
    topo = parse_topology(yaml.safe_dump(data["topology"]), f"testbed {data['prefix']}")
    tb = Testbed(topo, prefix=str(data["prefix"]), record=True, workdir=Path(data["workdir"]))
    tb.manager_url = data["manager"]["url"]
    tb.manager_token = data["manager"]["token"]
    tb.manager_metrics = {k: str(v) for k, v in data["manager"].items() if k.startswith("metrics")}
    tb.pids = {k: int(v) for k, v in data.get("pids", {}).items()}
    if data.get("managers"):
        tb.replicas = Replicas.attach(tb, data)
    tb.api = Client(",".join(m["url"] for m in data.get("managers") or [data["manager"]]), tb.manager_token)
    if data.get("vms"):  # where the VMs are now (libvirt's ports, migrated guests)
        tb.vms = {n: VmInfo(**v) for n, v in data["vms"].items()}
    tb.refresh()
    return tb
