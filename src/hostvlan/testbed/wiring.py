"""The testbed's cabling: namespaces, bridges, veths and macvtaps, through netlink (pyroute2).

Free functions the builder (`build.Testbed`) calls with names from its plan (`plan.py`); each
makes one piece and knows nothing of processes or of the manager. An Open vSwitch host's ports
are added by a callback of the builder (it owns that host's private Open vSwitch).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hostvlan.model.ids import Mac
from hostvlan.testbed import ipv6, netns
from hostvlan.testbed.plan import BRIDGE, SUBNET, HostInfo

IFF_UP = 0x1
IFF_ALLMULTI = 0x200
MGMT_BRIDGE = "mg0"

OvsPort = Callable[[str, Mac | None, str | None], None]
"""Add port NAME to an OVS host's bridge (attached MAC and iface id for a vNIC's port)."""


def new_ns(name: str) -> None:
    """A namespace with IPv6 off (no stray router solicitations in the counts) and `lo` up."""
    netns.create(name)
    netns.sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
    with netns.iproute(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def switch(ns: str, name: str, address: str | None = None) -> None:
    """A namespace holding one plain bridge `name` (no STP), with `address`/16 on it if given."""
    new_ns(ns)
    with netns.iproute(ns) as ipr:
        ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_mcast_snooping=0)
        idx = ipr.link_lookup(ifname=name)[0]
        if address is not None:
            ipr.addr("add", index=idx, address=address, prefixlen=16)
        ipr.link("set", index=idx, state="up")


def host(h: HostInfo, index: int, switch_ns: str, switch_name: str, mgmt_ns: str, mgmt_ip: str,
         ovs: Callable[[], OvsPort] | None = None) -> None:  # fmt: skip
    """End host `h`: its uplink veth (peer `up<index>` on the physical switch), its virtual switch
    (a Linux bridge `br0` with the uplink's MAC; on a macvtap host the uplink alone; on an OVS host
    `ovs()` starts its Open vSwitch and gives the port adder), and `mgmt0` with `mgmt_ip`
    (peer `m<index>` on the management switch)."""
    new_ns(h.netns)
    with netns.iproute(h.netns) as ipr:
        peer = {"ifname": f"up{index}", "net_ns_fd": switch_ns}
        ipr.link("add", ifname=h.uplink, kind="veth", address=h.uplink_mac, peer=peer)
        up = ipr.link_lookup(ifname=h.uplink)[0]
        if h.switch == "macvtap":  # the macvtaps hang off the uplink itself: no bridge
            ipr.link("set", index=up, flags=IFF_UP | IFF_ALLMULTI, change=IFF_UP | IFF_ALLMULTI)
        elif h.switch == "ovs":  # an OVS bridge of a private Open vSwitch (fail-mode secure if filtered)
            assert ovs is not None, "an OVS host needs its Open vSwitch"
            ovs()(h.uplink, None, None)
            ipr.link("set", index=up, state="up")
        else:
            ipr.link("add", ifname=BRIDGE, kind="bridge", address=h.uplink_mac, br_stp_state=0, br_mcast_snooping=0)
            br = ipr.link_lookup(ifname=BRIDGE)[0]
            ipr.link("set", index=up, master=br, state="up")
            ipr.link("set", index=br, state="up")
        ipr.link("add", ifname="mgmt0", kind="veth", peer={"ifname": f"m{index}", "net_ns_fd": mgmt_ns})
        m = ipr.link_lookup(ifname="mgmt0")[0]
        ipr.addr("add", index=m, address=mgmt_ip, prefixlen=16)
        ipr.link("set", index=m, state="up")
    for ns, port, bridge in ((switch_ns, f"up{index}", switch_name), (mgmt_ns, f"m{index}", MGMT_BRIDGE)):
        with netns.iproute(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=ipr.link_lookup(ifname=bridge)[0], state="up")


def endpoint(ns: str, mac: Mac, ip: str, parent_ns: str, port: str, bridge: str, port_mac: Mac | None,
             ovs_port: OvsPort | None = None, ip6: str = "") -> None:  # fmt: skip
    """An endpoint namespace with `eth0`, cabled to `bridge` in `parent_ns` through port `port`
    (a Linux bridge, or with `ovs_port` the host's OVS bridge, the port tagged with the vNIC MAC);
    with `ip6`, IPv6 on on its eth0 (`testbed.ipv6`)."""
    new_ns(ns)
    with netns.iproute(parent_ns) as ipr:
        kw = {"address": port_mac} if port_mac else {}
        ipr.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ns, "address": mac}, **kw)
        idx = ipr.link_lookup(ifname=port)[0]
        if ovs_port is not None:
            ovs_port(port, mac, ns)
            ipr.link("set", index=idx, state="up")
        else:
            ipr.link("set", index=idx, master=ipr.link_lookup(ifname=bridge)[0], state="up")
    with netns.iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname="eth0")[0]
        ipr.addr("add", index=idx, address=ip, prefixlen=SUBNET.prefixlen)
    ipv6.enable(ns, ip6)
    with netns.iproute(ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")


def offloads_off(ns: str, dev: str = "eth0") -> None:
    """tx/TSO/GSO off (the OVS userspace datapath takes frames as AF_PACKET hands them)."""
    argv = ["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off"]
    subprocess.run(argv, check=True, capture_output=True, timeout=10)


def macvtap(h: HostInfo, port: str, mac: Mac) -> int:
    """A macvtap `port` (bridge mode on `h`'s uplink, MAC `mac`), created DOWN on a filtered host
    (its agent brings it up once bound) and up on the unfiltered baseline. Returns its ifindex."""
    with netns.iproute(h.netns) as ipr:
        lower = ipr.link_lookup(ifname=h.uplink)[0]
        ipr.link("add", ifname=port, kind="macvtap", link=lower, macvtap_mode="bridge", address=mac)
        idx: int = ipr.link_lookup(ifname=port)[0]
        if not h.filtered:  # the unfiltered baseline: nobody else brings it up
            ipr.link("set", index=idx, flags=IFF_UP | IFF_ALLMULTI, change=IFF_UP | IFF_ALLMULTI)
    return idx


def wait_up(ns: str, port: str, deadline: float, what: str) -> None:
    """Wait until `port` in `ns` is up (flags and operstate) or raise TimeoutError at `deadline`."""
    while True:
        with netns.iproute(ns) as ipr:
            link = ipr.get_links(ipr.link_lookup(ifname=port)[0])[0]
        if link["flags"] & IFF_UP and link.get("operstate") in ("UP", "UNKNOWN"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


def add_idle_ports(ns: str, ports: Iterable[str] | Mapping[str, Mac]) -> None:
    """Idle bridge ports: veths on br0, up, their peers `<name>p` up beside them (this kernel
    has no `dummy`; those already there are kept); a mapping gives each new port its MAC."""
    macs = ports if isinstance(ports, Mapping) else {}
    with netns.iproute(ns) as ipr:
        br = ipr.link_lookup(ifname=BRIDGE)[0]
        for name in ports:
            if not ipr.link_lookup(ifname=name):
                kw: dict[str, Any] = {"address": macs[name]} if name in macs else {}
                ipr.link("add", ifname=name, kind="veth", peer=f"{name}p", **kw)
                ipr.link("set", index=ipr.link_lookup(ifname=f"{name}p")[0], state="up")
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], master=br, state="up")
