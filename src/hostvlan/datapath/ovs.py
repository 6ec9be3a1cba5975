"""Tenant filter for Open vSwitch, programmed with OpenFlow (no NORMAL action).

The bridge must be fail-mode=secure (`OvsDb.ensure_bridge`): without flows nothing
forwards, so the switch fails closed before the first install and whenever hostvlan's
flows are absent. Every frame walks this pipeline (all flows carry a cookie of hostvlan's
range 0x4856 << 48; `pid` is a small per-port number hostvlan assigns, independent of the
OpenFlow port number, so facts about a port exist before the port does):

  table 0  classify   in_port=<ofport> → reg1:=pid, goto 1          (per bound, existing port)
                      else drop, counted "(unbound)"                 fail closed
  table 1  send       reg1=<uplink> → reg2[0]:=1 (from uplink), goto 2   fact `uplinks`
                      reg1=<pid>,dl_src=<MAC> → goto 2             fact `bound`
                      reg1=<pid> → drop, counted tx:<port>          fact `ports` (forged)
  table 2  known      dl_src=<MAC> → goto 3                         fact `known`
                      reg1=<uplink> → drop, counted per uplink       unknown source (fact `uplinks`)
                      else drop, counted "(unknown)"                 unknown source
  table 3  forward    dl_dst=<local MAC> → a copy to each port bound to it
                      dl_dst=<known MAC> → a copy to each uplink     (known, not local)
                      else (broadcast, multicast, unknown unicast) → a copy to every bound port
                      a copy = reg0:=pid, resubmit(,4): EVERY copy is filtered on its own
  table 4  receive    reg0=p,reg1=p → drop                          never back out the ingress port
                      reg0=<uplink>,reg2[0]=1 → drop                 never from an uplink to an uplink
                      reg0=<pid>,dl_src=<MAC> → goto 5              fact `pairs`
                      reg0=<pid> → goto 5                           fact `global_ports`
                      dl_src=<MAC> → goto 5                         fact `global_src`
                      reg0=<pid> → drop, counted rx:<port>
  table 5  output     reg0=<pid> → output:<ofport>                  (per bound, existing port)
  table 6  uplinks    a copy to each uplink
  tables 10-13        the address guard (`ovs_guard`), between `bound` and table 2
  table 200 digest    one flow whose note holds the layout version and the facts' digest

Table 2 checks `known` once per frame, and copies go only to bound ports, so table 4 is
exactly `Facts.receive`: (src, port) ∈ pairs ∨ port ∈ global_ports ∨ src ∈ global_src.
Flow count is linear in the facts: one flow per fact (a port has three, an uplink two),
one forwarding flow per known or bound MAC, two per existing port.

Reading back: every fact's flow carries the fact itself in a `note` action (kind, MAC,
port name), so `read()` rebuilds `Facts` exactly from one `dump-flows` of the cookie
range; the cookie holds the flow's kind and its port's pid.

Atomicity: install, every change and removal is ONE `ovs-ofctl bundle` (an OpenFlow 1.4
atomic, ordered bundle: all flow and group mods or none; the digest flow is rewritten in
the same bundle), read from stdin: one process per transaction. A rejected bundle leaves
the tables untouched. The digest flow outputs to an empty group hostvlan owns (never
executed: nothing jumps to table 200), so on a switch that lost its flows and groups
(ovs-vswitchd restarted, someone ran del-groups) the next bundle FAILS instead of adding
a few flows to an empty table: the apply raises, and the next one reinstalls. Any subset
of hostvlan's flows is at most as permissive as the whole (every allow is a flow, every
deny a default), so a switch that lost flows fails closed until `audit()` repairs it.

After each bundle the datapath's flow cache is purged (`revalidator/purge`, in-process
over unixctl): OVS revalidates cached datapath flows asynchronously after a table change,
and until then a frame may still get the old verdict (measured here: a few frames right
after the bundle returns). With the purge a change is in force when `apply()` returns.

Ports that do not exist yet are bound all the same: their facts are programmed against
their pid; only their classify/output flows (tables 0 and 5) wait for an OpenFlow port
number. Every `apply()` (and `refresh_ports()`, for an agent that watches OVSDB)
compares the OVSDB port numbers of the bound ports with those programmed and fixes the
difference in one bundle, so a port starts to send and receive when it appears and
stops when it goes. Limitations: rx drops of copies are counted per bound port only
(no copy is ever made for an unbound port); frames from an uplink are never copied to
another uplink; `audit()` repairs the facts and the port flows, and rewrites the
forwarding flows (tables 3 and 6) only through the changes that touch them.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from hostvlan.datapath import ovs_drops, ovs_guard
from hostvlan.datapath.base import ApplyReport, DatapathError, DropEvent, PortCounters, TenantFilter
from hostvlan.datapath.kernel.ovs_proc import OvsTools
from hostvlan.datapath.kernel.ovsdb import OvsDb
from hostvlan.datapath.ovs_drops import (  # the counted drop flows (port group 0x80-0x87)
    K_PORT,
    K_PORT_RX,
    K_UNBOUND_TX,
    K_UNKNOWN_IN,
    K_UNKNOWN_SRC,
)
from hostvlan.datapath.ovs_drops import UNBOUND as UNBOUND  # re-exported: counters()' buckets
from hostvlan.datapath.ovs_drops import UNKNOWN as UNKNOWN
from hostvlan.datapath.ovs_flows import (  # re-exported: the vocabulary (ovs_flows)
    ALL,
    COOKIE_BASE,
    COOKIE_MASK,
    T_CLASSIFY,
    T_FORWARD,
    T_GUARD,
    T_KNOWN,
    T_META,
    T_OUTPUT,
    T_RECEIVE,
    T_SEND,
    T_UPLINKS,
    Flow,
    cookie,
    note,
)
from hostvlan.model.facts import FACT_NAMES, Facts, FactsDelta
from hostvlan.model.ids import Mac, PortName

VERSION = "hostvlan-ovs-v2"  # v2: unknown sources counted per uplink

GUARD_GROUP = 0x4856  # an empty OpenFlow group that every bundle's digest flow refers to
_ALL = ALL

# flow kinds (cookie bits 32-47); the low 32 bits hold the port's pid where there is one
K_META = 0x01
K_DEFAULT = 0x02
K_KNOWN = 0x10
K_GLOBAL_SRC = 0x11
K_GLOBAL_PORT = 0x12
K_UPLINK = 0x13
K_BOUND = 0x14
K_PAIR = 0x15
K_HAIRPIN = 0x20
K_NO_UPLINK_HAIRPIN = 0x21
K_DST = 0x30
K_FLOOD = 0x31
K_TO_UPLINKS = 0x32
# the port group 0x80-0x87: the counted drops and the port flows, read in one dump
K_PORT_IN = 0x84
K_PORT_OUT = 0x85
_PORT_GROUP = (COOKIE_BASE | K_PORT << 32, (_ALL << 35) & _ALL)


_R_OUT, _R_IN = "NXM_NX_REG0[]", "NXM_NX_REG1[]"


def _is_group(mac: Mac) -> bool:
    return bool(int(mac[:2], 16) & 1)


# ----- flows of the facts -------------------------------------------------------------------
def fact_flows(name: str, item: object, pid: Callable[[PortName], int]) -> list[Flow]:
    """The flows that enforce one fact (`pid` gives a port's pid)."""
    if name == "known":
        m = Mac(str(item))
        return [Flow(T_KNOWN, 100, cookie(K_KNOWN), f"dl_src={m}", f"{note('k', m)},goto_table:{T_FORWARD}")]
    if name == "global_src":
        m = Mac(str(item))
        return [Flow(T_RECEIVE, 200, cookie(K_GLOBAL_SRC), f"dl_src={m}", f"{note('g', m)},goto_table:{T_OUTPUT}")]
    if name == "ports":
        port = PortName(str(item))
        p = pid(port)
        return [
            Flow(T_SEND, 100, cookie(K_PORT, p), f"reg1={p}", ovs_drops.sampled(note("p", port))),
            Flow(T_RECEIVE, 100, cookie(K_PORT_RX, p), f"reg0={p}", "drop"),  # a copy: never sampled
            Flow(T_RECEIVE, 300, cookie(K_HAIRPIN, p), f"reg0={p},reg1={p}", "drop"),
        ]
    if name == "global_ports":
        port = PortName(str(item))
        p = pid(port)
        return [Flow(T_RECEIVE, 200, cookie(K_GLOBAL_PORT, p), f"reg0={p}", f"{note('G', port)},goto_table:{T_OUTPUT}")]
    if name == "uplinks":
        port = PortName(str(item))
        p = pid(port)
        act = f"{note('u', port)},load:1->NXM_NX_REG2[0],goto_table:{T_KNOWN}"
        return [
            Flow(T_SEND, 200, cookie(K_UPLINK, p), f"reg1={p}", act),
            Flow(T_KNOWN, 50, cookie(K_UNKNOWN_IN, p), f"reg1={p}", ovs_drops.sampled()),
            Flow(T_RECEIVE, 300, cookie(K_NO_UPLINK_HAIRPIN, p), f"reg0={p},reg2=0x1/0x1", "drop"),
        ]
    if name == "bound":
        assert isinstance(item, tuple)
        port, m = PortName(item[0]), Mac(item[1])
        p = pid(port)
        act = f"{note('b', port, m)},goto_table:{T_GUARD}"
        return [Flow(T_SEND, 200, cookie(K_BOUND, p), f"reg1={p},dl_src={m}", act)]
    if name == "pairs":
        assert isinstance(item, tuple)
        m, port = Mac(item[0]), PortName(item[1])
        p = pid(port)
        act = f"{note('r', m, port)},goto_table:{T_OUTPUT}"
        return [Flow(T_RECEIVE, 200, cookie(K_PAIR, p), f"reg0={p},dl_src={m}", act)]
    raise ValueError(name)


# ----- derived flows: forwarding and ports ------------------------------------------------------
def _copies(pids: Iterable[int]) -> str:
    return ",".join(f"load:{p}->{_R_OUT},resubmit(,{T_RECEIVE})" for p in sorted(pids)) or "drop"


def dst_flow(mac: Mac, local_pids: Iterable[int] = (), known: bool = False) -> Flow:
    pids = sorted(local_pids)
    actions = _copies(pids) if pids else (f"resubmit(,{T_UPLINKS})" if known else "drop")
    return Flow(T_FORWARD, 100, cookie(K_DST), f"dl_dst={mac}", actions)


def flood_flow(pids: Iterable[int]) -> Flow:
    return Flow(T_FORWARD, 0, cookie(K_FLOOD), "", _copies(pids))


def to_uplinks_flow(pids: Iterable[int]) -> Flow:
    return Flow(T_UPLINKS, 0, cookie(K_TO_UPLINKS), "", _copies(pids))


def port_flows(port: PortName, p: int, ofport: int) -> list[Flow]:
    return [
        Flow(
            T_CLASSIFY,
            100,
            cookie(K_PORT_IN, p),
            f"in_port={ofport}",
            f"{note('i', port, str(ofport))},load:{p}->{_R_IN},goto_table:{T_SEND}",
        ),
        Flow(T_OUTPUT, 100, cookie(K_PORT_OUT, p), f"reg0={p}", f"{note('o', port, str(ofport))},output:{ofport}"),
    ]


def _delete_cookie(c: int) -> str:
    return f"delete cookie={c:#x}/{_ALL:#x}"


def meta_flow(digest: int) -> Flow:
    """The digest flow (never hit); its `group:` makes a bundle fail on a switch that lost the group."""
    return Flow(T_META, 0, cookie(K_META), "", f"{note('d', VERSION, f'{digest:015x}')},group:{GUARD_GROUP}")


STATIC = [
    Flow(T_CLASSIFY, 0, cookie(K_UNBOUND_TX), "", ovs_drops.sampled()),
    Flow(T_SEND, 0, cookie(K_DEFAULT), "", "drop"),
    Flow(T_KNOWN, 0, cookie(K_UNKNOWN_SRC), "", ovs_drops.sampled()),
    Flow(T_RECEIVE, 0, cookie(K_DEFAULT), "", "drop"),
    Flow(T_OUTPUT, 0, cookie(K_DEFAULT), "", "drop"),
]


# ----- what the switch holds ------------------------------------------------------------
@dataclass
class _Mirror:
    """What hostvlan's flows on the switch encode, for computing the next change."""

    known: set[Mac] = field(default_factory=set)
    ports: set[PortName] = field(default_factory=set)
    uplinks: set[PortName] = field(default_factory=set)
    macs_ports: dict[Mac, set[PortName]] = field(default_factory=dict)  # `bound`, by MAC
    pids: dict[PortName, int] = field(default_factory=dict)
    ofports: dict[PortName, int] = field(default_factory=dict)  # what tables 0 and 5 point at

    @classmethod
    def of(cls, facts: Facts, pids: dict[PortName, int], ofports: dict[PortName, int]) -> _Mirror:
        mirror = cls(set(facts.known), set(facts.ports), set(facts.uplinks), {}, pids, ofports)
        for port, mac in facts.bound:
            mirror.macs_ports.setdefault(mac, set()).add(port)
        return mirror


_COOKIE = re.compile(r"cookie=(0x[0-9a-f]+)")
_PACKETS = re.compile(r"n_packets=(\d+)")
_NOTE = re.compile(r"note:([0-9a-f.]+)")


class _Dumped(NamedTuple):
    kind: int
    pid: int
    packets: int
    fields: list[str]


def parse_dump(text: str) -> list[_Dumped]:
    """The flows of a `dump-flows` of hostvlan's cookie range: kind, pid, n_packets, note fields."""
    out = []
    for line in text.splitlines():
        head, sep, actions = line.partition(" actions=")
        m = _COOKIE.search(head)
        if not sep or m is None:
            continue
        c = int(m.group(1), 16)
        if c & COOKIE_MASK != COOKIE_BASE:
            continue
        k = _PACKETS.search(head)
        n = _NOTE.search(actions)
        fields = bytes.fromhex(n.group(1).replace(".", "")).rstrip(b"\0").decode().split("\0") if n else []
        out.append(_Dumped((c >> 32) & 0xFFFF, c & 0xFFFFFFFF, int(k.group(1)) if k else 0, fields))
    return out


class OvsFilter(TenantFilter):
    """HostVLAN on an Open vSwitch bridge (see module doc)."""

    def __init__(self, bridge: str, tools: OvsTools, db: OvsDb, *, own_db: bool = False) -> None:
        super().__init__()
        self.bridge = bridge
        self._tools = tools
        self._db = db
        self._own_db = own_db  # close the OVSDB connection with the filter (the factory's)
        self._target = tools.of_target(bridge)
        self._mirror: _Mirror | None = None
        self._events = ovs_drops.Sampler(self._target.removeprefix("unix:"))  # drop events (packet-ins)
        self._guard = ovs_guard.GuardFlows()

    # ----- process plumbing ---------------------------------------------------------
    def _bundle(self, lines: list[str]) -> None:
        """One OpenFlow bundle (flow and group mods, in order, all or nothing), then a cache purge."""
        text = "".join(line + "\n" if line.startswith("group ") else "flow " + line + "\n" for line in lines)
        self._tools.ofctl("bundle", self._target, "-", stdin=text)
        self._tools.flush_datapath_cache()

    def _dump(self, match: str, stats: bool = False) -> list[_Dumped]:
        args = [] if stats else ["--no-stats"]
        return parse_dump(self._tools.ofctl(*args, "dump-flows", self._target, match))

    # ----- apply ----------------------------------------------------------------------
    def apply(self) -> ApplyReport:
        reconciling = self._reconcile
        if reconciling:
            self._mirror = None  # re-learnt below, from a read-back or from the digest's word
            if self._guard.rev == -1:
                self._guard.load(self._dump)  # the guard's flows as the switch holds them
        report = super().apply()
        try:
            if self._mirror is None:
                # the digest matched: the switch holds exactly the desired facts, no read-back needed
                pids, ofports = self._port_maps()
                self._mirror = _Mirror.of(self.desired(), pids, ofports)
            self.refresh_ports()
            if self._guard.rev != self._guard_rev:  # an address change alone has no facts' delta
                guard = self._guard.plan(self.guard_facts(), self._mirror.pids, self._guard_rev)
                if guard:
                    self._bundle([*guard, meta_flow(self._digest).add()])
                self._guard.commit()
        except BaseException:
            self._guard.forget()
            self._reconcile = True
            self._mirror = None
            raise
        return report

    def audit(self) -> ApplyReport:
        report = super().audit()
        fixed = self.refresh_ports(reload=True)
        return ApplyReport(report.elements + fixed, full=True)

    def refresh_ports(self, reload: bool = False) -> int:
        """(Re)program the classify/output flows of bound ports whose OpenFlow port appeared,
        changed or vanished (one bundle; returns the number of ports fixed)."""
        mirror = self._mirror
        if mirror is None:
            return 0
        if reload:
            _, mirror.ofports = self._port_maps()
        lines, ofports, fixed = self._port_lines(mirror, mirror.ports, mirror.pids)
        if lines:
            self._bundle([*lines, meta_flow(self._digest).add()])  # the guard: fails on a reset switch
            mirror.ofports = ofports
        return fixed

    def _port_lines(
        self, mirror: _Mirror, ports: set[PortName], pids: dict[PortName, int]
    ) -> tuple[list[str], dict[PortName, int], int]:
        """Flow changes that make tables 0 and 5 match OVSDB's port numbers of `ports`."""
        now = self._db.ofports(self.bridge)
        want = {p: now[p] for p in ports if p in now}
        if want == mirror.ofports:
            return [], want, 0
        lines = []
        fixed = set()
        for port, ofport in mirror.ofports.items():
            if want.get(port) != ofport:
                p = mirror.pids[port]
                lines += [_delete_cookie(cookie(K_PORT_IN, p)), _delete_cookie(cookie(K_PORT_OUT, p))]
                fixed.add(port)
        for port, ofport in want.items():
            if mirror.ofports.get(port) != ofport:
                lines += [f.add() for f in port_flows(port, pids[port], ofport)]
                fixed.add(port)
        return lines, want, len(fixed)

    def _port_maps(self) -> tuple[dict[PortName, int], dict[PortName, int]]:
        """(pid, programmed OpenFlow port) of every port, from the switch's port flows."""
        pids: dict[PortName, int] = {}
        ins: dict[PortName, int] = {}
        outs: dict[PortName, int] = {}
        for f in self._dump(f"cookie={_PORT_GROUP[0]:#x}/{_PORT_GROUP[1]:#x}"):
            if f.kind == K_PORT and f.fields[:1] == ["p"]:
                pids[PortName(f.fields[1])] = f.pid
            elif f.kind in (K_PORT_IN, K_PORT_OUT) and len(f.fields) == 3:
                (ins if f.kind == K_PORT_IN else outs)[PortName(f.fields[1])] = int(f.fields[2])
        # a port whose two flows disagree (or lack one) counts as unprogrammed: refresh rewrites it
        ofports = {p: n for p, n in ins.items() if outs.get(p) == n and p in pids}
        return pids, ofports

    # ----- transactions -------------------------------------------------------------------
    def _plan(self, mirror: _Mirror, delta: FactsDelta, digest: int) -> tuple[list[str], _Mirror]:
        """The bundle that applies `delta` to a switch holding `mirror`, and the mirror after it."""
        dels: list[str] = []
        adds: list[str] = []
        pids = mirror.pids
        if delta.ports:
            pids = {p: n for p, n in pids.items() if p not in delta.ports.remove}
            used = set(mirror.pids.values())
            free = 1
            for port in sorted(delta.ports.add):
                while free in used:
                    free += 1
                pids[port] = free
                used.add(free)

        def old_pid(port: PortName) -> int:
            try:
                return mirror.pids[port]
            except KeyError:
                raise DatapathError(f"port {port} has no pid on bridge {self.bridge}") from None

        def new_pid(port: PortName) -> int:
            try:
                return pids[port]
            except KeyError:
                raise DatapathError(f"port {port} is not bound on bridge {self.bridge}") from None

        for name in FACT_NAMES:
            d = getattr(delta, name)
            for item in d.remove:
                dels += [f.delete() for f in fact_flows(name, item, old_pid)]
            for item in d.add:
                adds += [f.add() for f in fact_flows(name, item, new_pid)]

        after = _Mirror(mirror.known, mirror.ports, mirror.uplinks, mirror.macs_ports, pids, mirror.ofports)
        if delta.known:
            after.known = (mirror.known - delta.known.remove) | delta.known.add
        if delta.ports:
            after.ports = (mirror.ports - delta.ports.remove) | delta.ports.add
            adds.append(flood_flow(pids[p] for p in after.ports).add())
        if delta.uplinks:
            after.uplinks = (mirror.uplinks - delta.uplinks.remove) | delta.uplinks.add
            adds.append(to_uplinks_flow(pids[p] for p in after.uplinks).add())
        touched = set(delta.known.add) | delta.known.remove
        if delta.bound:
            after.macs_ports = {m: set(ps) for m, ps in mirror.macs_ports.items()}
            for port, mac in delta.bound.remove:
                ps = after.macs_ports.get(mac)
                if ps is not None:
                    ps.discard(port)
                    if not ps:
                        del after.macs_ports[mac]
                touched.add(mac)
            for port, mac in delta.bound.add:
                after.macs_ports.setdefault(mac, set()).add(port)
                touched.add(mac)
        for mac in touched:
            if _is_group(mac):
                continue
            local = after.macs_ports.get(mac)
            if local or mac in after.known:
                adds.append(dst_flow(mac, (pids[p] for p in local or ()), mac in after.known).add())
            elif mac in mirror.known or mac in mirror.macs_ports:
                dels.append(dst_flow(mac).delete())

        port_lines, after.ofports, _ = self._port_lines(mirror, after.ports, pids)
        adds += self._guard.plan(self.guard_facts(), pids, self._guard_rev)  # the same bundle
        adds.append(meta_flow(digest).add())
        return dels + port_lines + adds, after

    def check_bridge(self) -> None:
        """Raise a one-line DatapathError saying what to do unless the bridge exists fail-closed."""
        config = self._db.bridge_config(self.bridge)
        b = self.bridge
        if config is None:
            raise DatapathError(
                f"OVS bridge {b} does not exist in OVSDB at {self._db.remote}: create it fail-closed "
                f"(ovs-vsctl add-br {b} -- set-fail-mode {b} secure) or name another one",
                errno=errno.ENODEV,
            )
        if config["fail_mode"] != "secure":
            mode = config["fail_mode"] or "unset (standalone)"
            raise DatapathError(
                f"OVS bridge {b} has fail mode {mode}; hostvlan needs fail-mode=secure (without flows it "
                f"must forward nothing): ovs-vsctl set-fail-mode {b} secure",
                errno=errno.EINVAL,
            )

    def _install(self, delta: FactsDelta, digest: int) -> None:
        self.check_bridge()
        ovs_drops.ensure_meter(self._tools, self._target)  # the drop flows' rate limit: before them
        self._mirror = None
        self._guard.forget()  # the install deletes every flow: the guard's are all rewritten
        fresh = _Mirror()
        lines, after = self._plan(fresh, delta, digest)
        head = [f"group add_or_mod group_id={GUARD_GROUP},type=all", f"delete cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}"]
        head += [f.add() for f in STATIC]
        head.append(flood_flow(after.pids[p] for p in after.ports).add())
        head.append(to_uplinks_flow(after.pids[p] for p in after.uplinks).add())
        self._bundle(head + lines)
        self._guard.commit()
        self._mirror = after

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        mirror = self._mirror
        if mirror is None:
            self.read()  # sets the mirror
            mirror = self._mirror
            if mirror is None:
                raise DatapathError(f"hostvlan's flows are missing on bridge {self.bridge}")
        self._mirror = None  # unknown until the bundle succeeds
        lines, after = self._plan(mirror, delta, digest)
        self._bundle(lines)
        self._guard.commit()
        self._mirror = after

    def _kernel_digest(self) -> int | None:
        for f in self._dump(f"table={T_META},cookie={cookie(K_META):#x}/{_ALL:#x}"):
            if len(f.fields) == 3 and f.fields[:2] == ["d", VERSION]:
                return int(f.fields[2], 16)
        return None

    # ----- read-back ------------------------------------------------------------------
    def read(self) -> Facts | None:
        sets: dict[str, set[object]] = {name: set() for name in FACT_NAMES}
        pids: dict[PortName, int] = {}
        ins: dict[PortName, int] = {}
        outs: dict[PortName, int] = {}
        version = False
        for f in self._dump(f"cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}"):
            tag, args = (f.fields[0], f.fields[1:]) if f.fields else ("", [])
            if f.kind == K_META and tag == "d" and args[:1] == [VERSION]:
                version = True
            elif f.kind == K_KNOWN and tag == "k":
                sets["known"].add(Mac(args[0]))
            elif f.kind == K_GLOBAL_SRC and tag == "g":
                sets["global_src"].add(Mac(args[0]))
            elif f.kind == K_PORT and tag == "p":
                sets["ports"].add(PortName(args[0]))
                pids[PortName(args[0])] = f.pid
            elif f.kind == K_GLOBAL_PORT and tag == "G":
                sets["global_ports"].add(PortName(args[0]))
            elif f.kind == K_UPLINK and tag == "u":
                sets["uplinks"].add(PortName(args[0]))
            elif f.kind == K_BOUND and tag == "b":
                sets["bound"].add((PortName(args[0]), Mac(args[1])))
            elif f.kind == K_PAIR and tag == "r":
                sets["pairs"].add((Mac(args[0]), PortName(args[1])))
            elif f.kind in (K_PORT_IN, K_PORT_OUT) and len(args) == 2:
                (ins if f.kind == K_PORT_IN else outs)[PortName(args[0])] = int(args[1])
        if not version:
            self._mirror = None
            return None  # absent, or another layout: the next apply reinstalls atomically
        facts = Facts(**{name: frozenset(items) for name, items in sets.items()})  # type: ignore[arg-type]
        ofports = {p: n for p, n in ins.items() if outs.get(p) == n and p in pids}
        self._mirror = _Mirror.of(facts, pids, ofports)
        return facts

    def counters(self) -> dict[str, PortCounters]:
        """Drops per port, from the n_packets of the counted drop flows.

        OVS adds the packets of its cached datapath flows to the OpenFlow counters only when
        it revalidates them (asynchronously); purging the cache first pushes every pending
        count, so the numbers are exact at the time of the call (the price: every active flow
        takes one slow-path lookup again)."""
        self._tools.flush_datapath_cache()
        return ovs_drops.as_counters(ovs_drops.tally(self._counted(), with_zeros=True))

    def drops(self) -> dict[tuple[str, str], int]:
        """Drops per (port, reason) (`ovs_drops.tally`). Unlike `counters` it does not purge the
        datapath's flow cache (the agent reads this every few seconds): the frames of cached
        flows are added when the revalidators next dump them, within about a second."""
        counted = self._counted()
        guard = ovs_guard.counts(self._dump(f"cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}", stats=True), K_PORT)
        return ovs_guard.merge(ovs_drops.tally(counted, with_zeros=False), guard)

    def _counted(self) -> list[_Dumped]:
        return self._dump(f"cookie={_PORT_GROUP[0]:#x}/{_PORT_GROUP[1]:#x}", stats=True)

    def installed(self) -> bool:
        """Whether any flow of hostvlan's cookie range or its guard group is on the bridge."""
        if self._dump(f"cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}"):
            return True
        groups = self._tools.ofctl("dump-groups", self._target, str(GUARD_GROUP))
        return f"group_id={GUARD_GROUP}," in groups

    def _remove(self) -> None:
        self._guard.forget()
        self._mirror = None
        self._bundle([f"delete cookie={COOKIE_BASE:#x}/{COOKIE_MASK:#x}", f"group delete group_id={GUARD_GROUP}"])
        ovs_drops.remove_meter(self._tools, self._target)

    def drop_events(self, after: int = 0) -> list[DropEvent]:
        """The drop flows' packet-ins (`ovs_drops.Sampler`), at most 64 a second."""
        return self._events.read(after, self._mirror.pids if self._mirror else {})

    def poll_interval(self) -> float:
        return 0.2  # OVSDB's replica changes without a netlink event the agent would see

    def attached_ports(self) -> dict[Mac, PortName] | None:
        """vNIC MAC -> port, from OVSDB `external_ids:attached-mac` (as OpenStack and libvirt tag them)."""
        return self._db.ports_by_attached_mac(self.bridge)

    def close(self) -> None:
        """Close the OVSDB connection if the filter owns it (built by the factory); else it is its maker's."""
        self._events.close()
        if self._own_db:
            self._db.close()
