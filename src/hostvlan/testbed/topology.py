"""Topology files: the emulated data center as data (pure: parsing and validation only).

    hosts:
      - name: h1
        backend: bridge          # bridge = HostVLAN on a Linux bridge; ovs = on Open vSwitch;
                                 # macvtap = on macvtap devices; baselines without the filter:
                                 # none (plain Linux bridge), ovs-none (NORMAL), macvtap-none
        guests: namespaces       # optional: namespaces (default) or libvirt (QEMU domains)
        vms:
          - name: vm1-1
            mac: "52:54:00:00:01:01"
            lnids: [1]           # integers 1..2^63-1 and/or global; [] = present, unregistered
            addresses: auto      # optional: auto (default: its testbed IPv4 and IPv6), [] (MAC-only,
                                 # unguarded) or a list of addresses/prefixes to register
            router: true         # optional: may send RAs/redirects; dhcp_server: true likewise
    external:                    # optional: endpoints behind the physical switch
      - name: gw
        mac: "52:54:00:ff:00:01"
        lnids: [global]

A host may also carry `fill: {macs: 8192, lnids: 128, ports: 126, port_lnids: 1}`: its
table is filled to `macs` entries over `lnids` LNIDs of its own (the first filled host's
start at 1, the next one's follow; remote VMs that need not exist) plus `ports` idle bound
ports (the paper's Table 1 worst case), registered through the management API. Each idle
port is bound to `port_lnids` of those LNIDs (optional, default 1, at most `lnids`): port
k (counting from 0) to the host's (k+1)-th LNID and the next port_lnids-1, wrapping around,
so a host whose VMs are each in several tenants' networks can be measured too.

Every error names the file and line, and is raised before anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hostvlan.model.addresses import parse_net
from hostvlan.model.ids import InvalidValue, Lnid, Mac, parse_lnid, parse_mac

BACKENDS = ("bridge", "ovs", "macvtap", "none", "ovs-none", "macvtap-none")
GUESTS = ("namespaces", "libvirt")  # what a host's VMs are: network namespaces, or libvirt domains
_NAME_MAX = 40


class TopologyError(ValueError):
    """A topology file is invalid; the message names the line."""


@dataclass(frozen=True)
class Endpoint:
    """A VM (on a host) or an external endpoint (behind the physical switch)."""

    name: str
    mac: Mac
    lnids: frozenset[Lnid]
    host: str | None  # None: external
    line: int = field(default=0, compare=False)
    addresses: tuple[str, ...] | None = None  # None: auto (its testbed IPv4 and IPv6); (): MAC-only
    router: bool = False
    dhcp_server: bool = False


@dataclass(frozen=True)
class Fill:
    macs: int
    lnids: int
    ports: int
    port_lnids: int = 1


@dataclass(frozen=True)
class HostSpec:
    name: str
    backend: str
    vms: tuple[Endpoint, ...]
    line: int = field(default=0, compare=False)
    fill: Fill | None = None
    guests: str = "namespaces"


@dataclass(frozen=True)
class Control:
    """`control: {managers: N, store: etcd}`: N manager replicas on a 3-member etcd cluster."""

    managers: int = 1
    store: str = "etcd"


@dataclass(frozen=True)
class Topology:
    hosts: tuple[HostSpec, ...]
    external: tuple[Endpoint, ...] = ()
    control: Control | None = None

    def endpoints(self) -> list[Endpoint]:
        return [vm for h in self.hosts for vm in h.vms] + list(self.external)

    def to_dict(self) -> dict[str, Any]:
        def ep(e: Endpoint) -> dict[str, Any]:
            out = {"name": e.name, "mac": e.mac, "lnids": [_lnid_out(x) for x in sorted(e.lnids)]}
            if e.addresses is not None:
                out["addresses"] = list(e.addresses)
            return out | {k: True for k in ("router", "dhcp_server") if getattr(e, k)}

        return {
            "hosts": [
                {"name": h.name, "backend": h.backend, "vms": [ep(v) for v in h.vms]}
                | ({"fill": _fill_out(h.fill)} if h.fill else {})
                | ({"guests": h.guests} if h.guests != "namespaces" else {})
                for h in self.hosts
            ],
            "external": [ep(e) for e in self.external],
        } | ({"control": {"managers": self.control.managers, "store": self.control.store}} if self.control else {})


def _fill_out(fill: Fill) -> dict[str, int]:
    out = {"macs": fill.macs, "lnids": fill.lnids, "ports": fill.ports}
    return out | ({"port_lnids": fill.port_lnids} if fill.port_lnids != 1 else {})


def _lnid_out(lnid: Lnid) -> int | str:
    return "global" if lnid == 0 else int(lnid)


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, node: yaml.Node, msg: str) -> TopologyError:
        return TopologyError(f"{self.source}:{node.start_mark.line + 1}: {msg}")

    def mapping(self, node: yaml.Node, what: str, allowed: set[str], required: set[str]) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping")
        out: dict[str, yaml.Node] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else None
            if key not in allowed:
                raise self.fail(k, f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})")
            if key in out:
                raise self.fail(k, f"duplicate key {key!r} in {what}")
            out[key] = v
        for key in sorted(required - set(out)):
            raise self.fail(node, f"{what} lacks required key {key!r}")
        return out

    def seq(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} must be a list")
        return list(node.value)

    def scalar(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag.endswith(":null"):
            raise self.fail(node, f"{what} must be a plain value")
        return str(node.value)

    def name(self, node: yaml.Node, what: str) -> str:
        text = self.scalar(node, what)
        ok = 0 < len(text) <= _NAME_MAX and text[0].isalnum() and all(c.isalnum() or c in "-_." for c in text)
        if not ok:
            raise self.fail(node, f"{what} {text!r} must be 1-{_NAME_MAX} letters, digits, '-', '_', '.'")
        return text

    def count(self, node: yaml.Node, what: str, low: int, high: int) -> int:
        text = self.scalar(node, what)
        if not text.isdigit() or not low <= int(text) <= high:
            raise self.fail(node, f"{what} must be an integer {low}..{high}, got {text!r}")
        return int(text)

    def fill(self, node: yaml.Node, host: str) -> Fill:
        allowed = {"macs", "lnids", "ports", "port_lnids"}
        m = self.mapping(node, f"host {host}: fill", allowed, {"macs", "lnids"})
        macs = self.count(m["macs"], f"host {host}: fill.macs", 0, 1 << 24)
        lnids = self.count(m["lnids"], f"host {host}: fill.lnids", 1, 1 << 20)
        ports = self.count(m["ports"], f"host {host}: fill.ports", 0, 4096) if "ports" in m else 0
        per_port = 1
        if "port_lnids" in m:  # each idle port in this many of the filled LNIDs
            per_port = self.count(m["port_lnids"], f"host {host}: fill.port_lnids", 1, lnids)
        return Fill(macs, lnids, ports, per_port)

    def endpoint(self, node: yaml.Node, what: str, host: str | None) -> Endpoint:
        m = self.mapping(node, what, {"name", "mac", "lnids", "addresses", "router", "dhcp_server"}, {"name", "mac"})
        name = self.name(m["name"], f"{what} name")
        try:
            mac = parse_mac(self.scalar(m["mac"], f"{what} {name}: mac"), vm=True)
        except InvalidValue as exc:
            raise self.fail(m["mac"], f"{what} {name}: {exc}") from None
        lnids: set[Lnid] = set()
        for item in self.seq(m["lnids"], f"{what} {name}: lnids") if "lnids" in m else []:
            raw: object = self.scalar(item, "LNID")
            if item.tag.endswith(":int"):
                raw = int(str(raw), 0)
            try:
                lnids.add(parse_lnid(raw))
            except InvalidValue as exc:
                raise self.fail(item, f"{what} {name}: {exc}") from None
        addresses = self.addresses(m["addresses"], f"{what} {name}") if "addresses" in m else None
        roles = {k: self.flag(m[k], f"{what} {name}: {k}") for k in ("router", "dhcp_server") if k in m}
        return Endpoint(
            name=name, mac=mac, lnids=frozenset(lnids), host=host, line=node.start_mark.line + 1, addresses=addresses,
            **roles,
        )  # fmt: skip

    def addresses(self, node: yaml.Node, what: str) -> tuple[str, ...] | None:
        """`auto` (None), or a list of addresses the manager would take (checked here)."""
        if isinstance(node, yaml.ScalarNode) and node.value == "auto":
            return None
        out = []
        for item in self.seq(node, f"{what}: addresses"):
            text = self.scalar(item, "address")
            try:
                parse_net(text)
            except InvalidValue as exc:
                raise self.fail(item, f"{what}: {exc}") from None
            out.append(text)
        return tuple(out)

    def flag(self, node: yaml.Node, what: str) -> bool:
        if not isinstance(node, yaml.ScalarNode) or not node.tag.endswith(":bool"):
            raise self.fail(node, f"{what} must be true or false")
        return str(node.value).lower() in ("true", "yes", "on")


def parse_topology(text: str, source: str = "<topology>") -> Topology:
    r = _Reader(source)
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise TopologyError(f"{source}: not valid YAML: {exc}") from None
    if root is None:
        raise TopologyError(f"{source}: empty topology")
    top = r.mapping(root, "topology", {"hosts", "external", "control"}, {"hosts"})
    hosts: list[HostSpec] = []
    for hnode in r.seq(top["hosts"], "hosts"):
        hm = r.mapping(hnode, "host", {"name", "backend", "vms", "fill", "guests"}, {"name"})
        hname = r.name(hm["name"], "host name")
        backend = r.scalar(hm["backend"], "backend") if "backend" in hm else "bridge"
        if backend not in BACKENDS:
            raise r.fail(hm["backend"], f"host {hname}: unknown backend {backend!r} (supported: {', '.join(BACKENDS)})")
        vms = tuple(r.endpoint(v, "vm", hname) for v in (r.seq(hm["vms"], "vms") if "vms" in hm else []))
        fill = r.fill(hm["fill"], hname) if "fill" in hm else None
        guests = r.scalar(hm["guests"], "guests") if "guests" in hm else "namespaces"
        if guests not in GUESTS:
            raise r.fail(hm["guests"], f"host {hname}: unknown guests {guests!r} (supported: {', '.join(GUESTS)})")
        hosts.append(HostSpec(hname, backend, vms, line=hnode.start_mark.line + 1, fill=fill, guests=guests))
    external = tuple(
        r.endpoint(e, "external", None) for e in (r.seq(top["external"], "external") if "external" in top else [])
    )
    if not hosts:
        raise r.fail(top["hosts"], "a topology needs at least one host")
    _check_unique(r, root, hosts, external)
    control = None
    if "control" in top:
        cm = r.mapping(top["control"], "control", {"managers", "store"}, {"managers"})
        managers = r.count(cm["managers"], "control.managers", 1, 16)
        store = r.scalar(cm["store"], "control.store") if "store" in cm else "etcd"
        if store != "etcd":
            raise r.fail(cm["store"], f"control.store: unknown store {store!r} (supported: etcd)")
        control = Control(managers, store)
    return Topology(tuple(hosts), external, control)


def _check_unique(r: _Reader, root: yaml.Node, hosts: list[HostSpec], external: tuple[Endpoint, ...]) -> None:
    seen_host: dict[str, HostSpec] = {}
    for h in hosts:
        if h.name in seen_host:
            raise TopologyError(
                f"{r.source}:{h.line}: duplicate host name {h.name!r} (first on line {seen_host[h.name].line})"
            )
        seen_host[h.name] = h
    names: dict[str, Endpoint] = {}
    macs: dict[Mac, Endpoint] = {}
    for e in [vm for h in hosts for vm in h.vms] + list(external):
        if e.name in names:
            raise TopologyError(
                f"{r.source}:{e.line}: duplicate endpoint name {e.name!r} (first on line {names[e.name].line})"
            )
        names[e.name] = e
        if e.mac in macs:
            first = macs[e.mac]
            raise TopologyError(
                f"{r.source}:{e.line}: duplicate MAC {e.mac} ({e.name}; "
                f"already used by {first.name} on line {first.line})"
            )
        macs[e.mac] = e


def load_topology(path: str | Path) -> Topology:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError(f"{p}: cannot read: {exc.strerror}") from None
    return parse_topology(text, str(p))
