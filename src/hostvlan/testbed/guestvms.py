"""The testbed's libvirt side: hosts with `guests: libvirt` run their VMs as QEMU domains.

One private `Libvirtd` per such host, inside the host's namespace (`libvirtd.py`); one
domain per VM, its NIC defined as an operator would (`guests.domain_xml`). The testbed
gives the agents no hint: libvirt makes the ports and the agents find them (a bridge's
`vnetN` by its MAC fe:…, an OVS port by `external_ids:attached-mac`, a macvtap by name,
since the macvtap contract needs its port bound before libvirt brings it up: the VM is
registered with the `macvtapN` libvirt will give it, see `predict_port`).

libvirt's names: each daemon counts `vnetN` and `macvtapN` from 0 in the order it
creates them and never reuses a number while it runs (checked: a destroyed and restarted
domain gets the next one). The fleet keeps the same counters, so the testbed's plan
(`vnet<k>`/`macvtap<k>` for the k-th VM of a host, domains created in that order) is
libvirt's, and `start` checks what libvirt chose (`virsh domiflist`).

/dev/tapN: libvirt opens the macvtap's character device by its ifindex N, which is per
network namespace, while devtmpfs is global: a macvtap of another namespace with the same
ifindex would own /dev/tapN (see `vmtap.py`). When a macvtap host's daemon is started
(before its agent and any domain), `spread_ifindex` moves that namespace's next ifindex
to a random value in 200..1200 (veths made, then deleted in one call), far from the small
numbers every other namespace uses; `start` then checks that /dev/tapN is this
macvtap's device. (libvirt creates the macvtap DOWN and brings it up ~0.7 s later, when
the guest's CPUs start; the VM's port is bound before either.)
"""

from __future__ import annotations

import os
import random
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from hostvlan.model.ids import Mac, PortName
from hostvlan.testbed.guests import GuestError, GuestImage, GuestSpec, domain_xml, guest_exec, wait_ready
from hostvlan.testbed.libvirtd import Libvirtd, LibvirtdError, destroy_all, virsh

__all__ = [
    "GUEST_KINDS",
    "GuestError",
    "GuestFleet",
    "LibvirtdError",
    "NoSuchTarget",
    "destroy_recorded",
    "exec_in",
    "uri_for",
    "wait_ports_bound",
]

GUEST_KINDS = ("namespaces", "libvirt")
BOOT_TIMEOUT = float(os.environ.get("HOSTVLAN_GUEST_BOOT_TIMEOUT", "120"))
_SPREAD_GROUP = 0x4856  # the link group of the throw-away veths of `spread_ifindex`


@dataclass
class GuestHost:
    name: str
    netns: str
    switch: str  # bridge | ovs | macvtap
    source: str  # the bridge or the uplink
    daemon: Libvirtd
    next_index: dict[str, int] = field(default_factory=lambda: {"vnet": 0, "macvtap": 0})


@dataclass(frozen=True)
class Domain:
    vm: str
    host: str
    domain: str
    uri: str
    port: PortName
    channel: Path
    console: Path


def channel_path(workdir: Path, vm: str) -> Path:
    return workdir / "g" / f"{vm}.sock"


def daemon_dir(workdir: Path, index: int) -> Path:
    return workdir / f"lv{index}"


def uri_for(directory: Path) -> str:
    """The URI of the daemon whose directory this is (`Libvirtd.uri`)."""
    return Libvirtd("", directory).uri


class GuestFleet:
    """Every libvirtd and domain of one testbed."""

    def __init__(self, prefix: str, workdir: Path) -> None:
        self.prefix = prefix
        self.workdir = workdir
        self.hosts: dict[str, GuestHost] = {}
        self.domains: dict[str, Domain] = {}
        self._image: GuestImage | None = None

    # ----- daemons ---------------------------------------------------------------------------
    def spawn(self, host: str, index: int, ns: str, switch: str, source: str, ovs_rundir: str | None) -> int:
        """Start `host`'s libvirtd (returns its pid at once; `wait` for it)."""
        self._image = self._image or GuestImage.find()
        daemon = Libvirtd(ns, daemon_dir(self.workdir, index), ovs_rundir=ovs_rundir)
        self.hosts[host] = GuestHost(host, ns, switch, source, daemon)
        if switch == "macvtap":  # before its agent starts: no burst of link events for it
            spread_ifindex(ns)
        daemon.spawn()
        assert daemon.proc is not None
        return daemon.proc.pid

    def wait(self, timeout: float = 60.0) -> None:
        for h in self.hosts.values():
            h.daemon.wait(timeout)

    def uri(self, host: str) -> str:
        return self.hosts[host].daemon.uri

    # ----- domains ---------------------------------------------------------------------------
    def predict_port(self, host: str) -> PortName:
        """The name libvirt will give the NIC of the next domain started on `host`."""
        h = self.hosts[host]
        kind = "macvtap" if h.switch == "macvtap" else "vnet"
        return PortName(f"{kind}{h.next_index[kind]}")

    def start(self, vm: str, host: str, mac: Mac, ip: str, ip6: str | None = None) -> Domain:
        """Define nothing persistent: `virsh create` a transient domain for `vm` on `host`."""
        assert self._image is not None
        h = self.hosts[host]
        want = self.predict_port(host)
        gdir = self.workdir / "g"
        gdir.mkdir(exist_ok=True)
        channel = channel_path(self.workdir, vm)
        console = gdir / f"{vm}.console"
        for p in (channel, console):
            p.unlink(missing_ok=True)
        spec = GuestSpec(f"{self.prefix}-{vm}", mac, ip, h.switch, h.source, console, channel, ip6)
        xml = gdir / f"{vm}.{host}.xml"
        xml.write_text(domain_xml(spec, self._image))
        h.daemon.virsh("create", str(xml), timeout=120.0)
        kind = "macvtap" if h.switch == "macvtap" else "vnet"
        h.next_index[kind] += 1
        port = self._port_of(h, spec.domain)
        if port != want:
            raise GuestError(f"libvirt named the NIC of {vm} {port}, the testbed expected {want}")
        if h.switch == "macvtap":
            check_tap_node(h.netns, port)
        dom = Domain(vm, host, spec.domain, h.daemon.uri, port, channel, console)
        self.domains[vm] = dom
        return dom

    @staticmethod
    def _port_of(h: GuestHost, domain: str) -> PortName:
        rows = [r.split() for r in h.daemon.virsh("domiflist", domain).stdout.splitlines()]
        names = [r[0] for r in rows if r and r[0] not in ("Interface", "-") and not r[0].startswith("-")]
        if len(names) != 1:
            raise GuestError(f"domain {domain}: expected one interface, virsh domiflist says {rows}")
        return PortName(names[0])

    def wait_booted(self, vms: list[str], timeout: float = BOOT_TIMEOUT) -> None:
        end = time.monotonic() + timeout
        for vm in vms:
            try:
                wait_ready(self.domains[vm].console, max(1.0, end - time.monotonic()))
            except GuestError as exc:
                raise GuestError(f"{vm}: {exc}") from None

    def destroy(self, vm: str) -> None:
        dom = self.domains.pop(vm)
        virsh(dom.uri, "destroy", dom.domain)

    def running(self, vm: str) -> bool:
        dom = self.domains[vm]
        res = virsh(dom.uri, "domstate", dom.domain, check=False, timeout=15)
        return res.returncode == 0 and res.stdout.strip() == "running"

    def stop(self) -> None:
        """Destroy every domain and stop every daemon (each attempted whatever the others do)."""
        errors: list[str] = []
        for h in self.hosts.values():
            try:
                h.daemon.stop()
            except (LibvirtdError, OSError, subprocess.SubprocessError) as exc:
                errors.append(f"{h.name}: {exc}")
        self.hosts.clear()
        self.domains.clear()
        if errors:
            raise LibvirtdError("; ".join(errors))


def destroy_recorded(workdir: Path) -> list[str]:
    """After a crash: destroy the domains of every daemon whose socket is still in `workdir`."""
    gone: list[str] = []
    for sock in sorted(workdir.glob("lv*/run/libvirt-sock")):
        gone += destroy_all(f"qemu+unix:///system?socket={sock}")
    return gone


def spread_ifindex(ns: str) -> int:
    """Move namespace `ns`'s next ifindex to a random 200..1200 (see the module doc); returns it."""
    target = random.randint(200, 1200)
    with IPRoute(netns=ns) as ipr:
        ipr.link("add", ifname="hvsp", kind="veth", peer="hvsq", group=_SPREAD_GROUP)
        first = max(ipr.link_lookup(ifname="hvsp") + ipr.link_lookup(ifname="hvsq"))
        for n in range(max(0, (target - first) // 2)):  # each veth pair takes two numbers
            ipr.link("add", ifname=f"hvsp{n}", kind="veth", peer=f"hvsq{n}", group=_SPREAD_GROUP)
        ipr.link("del", group=_SPREAD_GROUP)
    return target


def check_tap_node(ns: str, port: str) -> None:
    """/dev/tapN (what libvirt opened) must be `port`'s own character device."""
    res = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "sh",
            "-c",
            f"cat /sys/class/net/{shlex.quote(port)}/macvtap/tap*/dev; "
            f"basename /sys/class/net/{shlex.quote(port)}/macvtap/tap*",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    lines = res.stdout.split()
    if res.returncode != 0 or len(lines) != 2:
        raise GuestError(f"cannot read the character device of {port} in {ns}: {res.stderr.strip()}")
    major, minor = (int(x) for x in lines[0].split(":"))
    st = os.stat(f"/dev/{lines[1]}")
    if (os.major(st.st_rdev), os.minor(st.st_rdev)) != (major, minor):
        raise GuestError(f"/dev/{lines[1]} is another namespace's macvtap, not {port} of {ns}")


class NoSuchTarget(LookupError):
    """`testbed exec` names nothing of the testbed."""


def exec_in(record: dict[str, Any], name: str, argv: list[str], timeout: float = 60.0) -> tuple[int, bytes, bytes]:
    """Run `argv` inside endpoint or host `name` of a recorded testbed (`Testbed.to_json()`):
    a libvirt guest through its exec channel, anything else in its network namespace.
    Returns (status, stdout, stderr)."""
    vm = record.get("vms", {}).get(name)
    if vm is not None and vm.get("domain"):
        res = guest_exec(channel_path(Path(record["workdir"]), name), argv, timeout)
        return res.status, res.stdout, res.stderr
    place = vm or record.get("external", {}).get(name) or record.get("hosts", {}).get(name)
    if place is None or not place.get("netns"):
        raise NoSuchTarget(f"testbed {record.get('prefix')} has no VM, external endpoint or host {name!r}")
    proc = subprocess.run(
        ["ip", "netns", "exec", place["netns"], *argv], capture_output=True, timeout=timeout, check=False
    )
    return proc.returncode, proc.stdout, proc.stderr


def wait_ports_bound(
    macs: Callable[[], Iterable[Mapping[str, Any]]], want: Mapping[Mac, str | None], timeout: float
) -> None:
    """Wait until the manager's rows (`macs()`, `GET /v1/macs`) say each MAC of `want` is bound
    to the port given there (state `bound`, `bound_port` = libvirt's name)."""
    end = time.monotonic() + timeout
    pending = dict(want)
    while pending:
        rows: dict[str, Mapping[str, Any]] = {str(r["mac"]): r for r in macs()}
        for mac, port in list(pending.items()):
            row = rows.get(mac) or {}
            if row.get("state") == "bound" and row.get("bound_port") == port:
                del pending[mac]
        if pending and time.monotonic() > end:
            late = {m: (rows.get(m) or {}).get("state") for m in pending}
            raise TimeoutError(f"guest ports not bound after {timeout}s: {late}")
        time.sleep(0.1)
