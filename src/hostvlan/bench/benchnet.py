"""The bench's data centers: the testbed topology of one measurement cell (built from the
topology module's data types, never from YAML text) and what the testbed lacks for it (a VXLAN
overlay, the same NIC offloads everywhere)."""

from __future__ import annotations

from hostvlan.bench.options import BACKEND, FILTERED, SHAPE
from hostvlan.bench.workloads import ip_in, run_argv
from hostvlan.model.ids import Lnid, Mac
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.topology import Endpoint, Fill, HostSpec, Topology


def topology(configs: list[str], macs: int, port_lnids: int, external: bool) -> Topology:
    """One host per configuration; the filtered ones filled to `macs` entries (Table 1: over 128
    LNIDs, 126 idle ports, each in `port_lnids` LNIDs); servers `<config>-2`, VM-to-VM clients
    `<config>-1`, all in the bench's LNID (plus port_lnids - 1 of their host's fill LNIDs)."""
    hosts: list[HostSpec] = []
    first = 1
    for i, cfg in enumerate(configs):
        fill, extra = None, []
        if cfg in FILTERED:
            fill = Fill(macs, SHAPE.fill_lnids, SHAPE.fill_ports, port_lnids)
            extra = [first + j for j in range(port_lnids - 1)]
            first += SHAPE.fill_lnids
        lnids = frozenset(Lnid(x) for x in [SHAPE.bench_lnid, *extra])
        vms = tuple(
            Endpoint(f"{cfg}-{k}", Mac(f"52:54:00:00:{i + 1:02x}:{k:02x}"), lnids, cfg)
            for k in ((1, 2) if cfg != "vxlan" else (2,))
        )
        hosts.append(HostSpec(cfg, BACKEND.get(cfg, cfg), vms, fill=fill))
    ext: list[Endpoint] = []
    if external:
        ext.append(Endpoint("ext", Mac("52:54:00:ff:00:01"), frozenset({Lnid(SHAPE.bench_lnid)}), None))
        if "vxlan" in configs:
            ext.append(Endpoint("vtep", Mac("52:54:00:ff:00:02"), frozenset(), None))
    return Topology(tuple(hosts), tuple(ext))


def setup_vxlan(tb: Testbed) -> None:
    """Make host `vxlan`'s uplink a VTEP and external endpoint `vtep` the far one (inside the
    testbed's namespaces only; they go with it). The client's overlay address is the
    endpoint's testbed IP, moved from its eth0 to its vxlan0."""
    host, far = tb.hosts["vxlan"], tb.external["vtep"]
    hosts = [h.name for h in tb.topology.hosts]
    exts = [e.name for e in tb.topology.external]
    for port in (f"up{hosts.index('vxlan')}", f"ex{exts.index('vtep')}"):
        ip_in(tb.switch_ns, "link", "set", port, "mtu", str(SHAPE.underlay_mtu))
    ip_in(host.netns, "link", "set", host.uplink, "nomaster")
    ip_in(host.netns, "link", "set", host.uplink, "mtu", str(SHAPE.underlay_mtu))
    ip_in(host.netns, "addr", "add", f"{SHAPE.underlay[0]}/24", "dev", host.uplink)
    ip_in(far.netns, "addr", "flush", "dev", far.ifname)
    ip_in(far.netns, "link", "set", far.ifname, "mtu", str(SHAPE.underlay_mtu))
    ip_in(far.netns, "addr", "add", f"{SHAPE.underlay[1]}/24", "dev", far.ifname)
    for ns, dev, local, remote in (
        (host.netns, host.uplink, SHAPE.underlay[0], SHAPE.underlay[1]),
        (far.netns, far.ifname, SHAPE.underlay[1], SHAPE.underlay[0]),
    ):
        vxlan = ["type", "vxlan", "id", str(SHAPE.vni), "local", local, "remote", remote, "dstport", "4789", "dev", dev]
        ip_in(ns, "link", "add", "vxlan0", *vxlan)
    ip_in(host.netns, "link", "set", "vxlan0", "master", host.bridge, "up")
    ip_in(far.netns, "addr", "add", f"{far.ip}/16", "dev", "vxlan0")
    ip_in(far.netns, "link", "set", "vxlan0", "up")
    # the client sends on vxlan0: the same offloads off as on every other client's eth0
    run_argv(["ip", "netns", "exec", far.netns, "ethtool", "-K", "vxlan0", "tx", "off", "tso", "off", "gso", "off"])


def offloads_off(tb: Testbed) -> None:
    """The same NIC settings in every testbed (the OVS userspace datapath needs them off)."""
    for ns in [vm.netns for vm in tb.vms.values()] + [e.netns for e in tb.external.values()]:
        run_argv(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"])
