"""The send check done by the Linux bridge itself: locked ports and sticky static FDB entries.

A *locked* bridge port (kernel ≥ 5.18, `bridge link set dev P locked on`) forwards a frame
only if the bridge's FDB holds the frame's source MAC on that very port; learning is off on
it, so nothing it sends moves the FDB. One static *sticky* entry per bound vNIC MAC on its
port therefore IS the model's send check (`Facts.bound`): a forged source is either unknown
(dropped) or known elsewhere (dropped, never roams). Sticky keeps learning on the uplink
from moving a local vNIC's entry away (FDB poisoning from outside). The bridge does this in
the lookup it does anyway for learning: no netfilter hook, nothing added per frame.

`BridgePorts` programs that state over netlink (pyroute2, one socket, one message per
changed port or entry; no process per rule):
- every bridge port of the namespace that is not an uplink is locked, bound or not (an
  unbound port sends nothing: fail closed);
- uplinks are unlocked and learn (the other hosts' MACs live behind them);
- each bound (port, MAC) has its static sticky entry; an entry whose binding is gone is deleted.

What it does not give: a per-port count of forged frames (the bridge drops them uncounted;
`--send-check nft` keeps the nftables send check, counted per port, at the price of one more
netfilter hook per frame). Netlink has no transaction spanning these messages and the
nftables batch; the back end orders them so the send check is never looser than the facts
in force (see `bridge.locked.LockedPorts`).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_STICKY, NUD_NOARP

from hostvlan.datapath.base import DatapathError
from hostvlan.model.ids import Mac, PortName

Binding = tuple[PortName, Mac]
T = TypeVar("T")


@dataclass(frozen=True)
class Enforced:
    messages: int  # netlink messages it took (0: all was so already)
    added: frozenset[Binding]  # sticky entries it created (what a rollback deletes)
    ports: Mapping[PortName, int] = field(default_factory=dict)  # `enforce`: every bridge port read, by ifindex


@dataclass(frozen=True)
class BrPort:
    index: int
    locked: bool
    learning: bool


class BridgePorts:
    """Locks, learning flags and sticky FDB entries of every bridge port in the namespace it
    was created in (its netlink socket stays bound to it, like the filter's nftables context).

    pyroute2's synchronous socket runs an event loop of its own, which cannot nest in the
    agent's: every netlink call runs on one worker thread of this object's (started here, so
    in this namespace), and the public methods block until it is done.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="hostvlan-brports")
        self._ipr: Any = self._pool.submit(IPRoute).result()

    def _nl(self) -> Any:
        if self._ipr is None:
            raise DatapathError("bridge ports: closed")
        return self._ipr

    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return self._pool.submit(fn, *args).result()

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on this object's thread, inside its namespace (for calls that name devices by
        ifindex, like tcx attach), and wait for it."""
        return self._run(fn, *args)

    def close(self) -> None:
        if self._ipr is not None:
            self._run(self._ipr.close)
            self._ipr = None
        self._pool.shutdown(wait=True)

    def ports(self) -> dict[PortName, BrPort]:
        """Every port of every bridge in the namespace, by name."""
        return self._run(self._ports)

    def sticky(self, ports: dict[PortName, BrPort]) -> set[Binding]:
        """The static sticky entries (ours by construction) on those ports."""
        return self._run(self._sticky, ports)

    def drift(self, bound: Iterable[Binding], uplinks: Iterable[PortName]) -> set[Binding]:
        """Bindings whose send check the bridge does not enforce (port not locked, learning on,
        or its entry missing); a port not attached to a bridge, or an uplink, needs nothing."""
        return self._run(self._drift, set(bound), set(uplinks))

    def enforce(self, bound: Iterable[Binding], uplinks: Iterable[PortName]) -> Enforced:
        """Lock every non-uplink port, add the entries of `bound`, delete any sticky entry of ours
        no binding wants, open the uplinks."""
        return self._run(self._enforce, set(bound), set(uplinks))

    def change(
        self,
        add: Iterable[Binding],
        remove: Iterable[Binding],
        up_add: Iterable[PortName],
        up_remove: Iterable[PortName],
    ) -> Enforced:
        """`enforce` for a change of a few bindings, touching only their ports (one netlink
        request per port, no dump of every link and FDB entry): entries of `remove` deleted,
        ports of `add` locked with their entries added, uplinks opened or closed. A port not
        attached to a bridge is skipped (the link event's full `enforce` catches it up)."""
        return self._run(self._change, set(add), set(remove), set(up_add), set(up_remove))

    def link_indexes(self) -> list[int]:
        """The ifindex of every link of the namespace, bridge port or not."""
        return self._run(lambda: [int(msg["index"]) for msg in self._nl().get_links()])

    def indexes(self, names: Iterable[PortName]) -> dict[PortName, int]:
        """The ifindex of each named bridge port that exists (one request per name)."""
        return self._run(lambda: {n: p.index for n in names if (p := self._port(n)) is not None})

    def release(self) -> None:
        """Undo `enforce`: every port unlocked and learning, our sticky entries deleted."""
        self._run(self._release)

    # ----- read ----------------------------------------------------------------------------
    def _ports(self) -> dict[PortName, BrPort]:
        out: dict[PortName, BrPort] = {}
        for msg in self._nl().get_links():
            p = _brport(msg)
            if p is not None:
                out[PortName(msg.get_attr("IFLA_IFNAME"))] = p
        return out

    def _port(self, name: PortName) -> BrPort | None:
        try:
            (msg,) = self._nl().link("get", ifname=name)
        except NetlinkError as exc:
            if exc.code in (errno.ENODEV, errno.EINVAL, errno.ERANGE):  # not there (yet); no such name can be
                return None
            raise
        return _brport(msg)

    def _sticky(self, ports: dict[PortName, BrPort]) -> set[Binding]:
        names = {p.index: name for name, p in ports.items()}
        out: set[Binding] = set()
        for n in self._nl().fdb("dump"):
            name = names.get(n["ifindex"])
            mac = n.get_attr("NDA_LLADDR")
            if name is None or mac is None or n.get_attr("NDA_VLAN"):
                continue
            if n["state"] & NUD_NOARP and n["flags"] & NTF_STICKY:
                out.add((name, Mac(str(mac).lower())))
        return out

    def _drift(self, bound: set[Binding], up: set[PortName]) -> set[Binding]:
        ports = self._ports()
        entries = self._sticky(ports)
        bad: set[Binding] = set()
        for port, mac in bound:
            p = ports.get(port)
            if p is None or port in up:
                continue  # not attached (yet): nothing enters by it
            if not p.locked or p.learning or (port, mac) not in entries:
                bad.add((port, mac))
        return bad

    # ----- write ---------------------------------------------------------------------------
    def _enforce(self, want: set[Binding], up: set[PortName]) -> Enforced:
        try:
            ports = self._ports()
            have = self._sticky(ports)
            sent = 0
            added: set[Binding] = set()
            for name, p in ports.items():
                if name in up:
                    if p.locked or not p.learning:
                        self._nl().brport("set", index=p.index, locked=0, learning=1)
                        sent += 1
                elif not p.locked or p.learning:
                    self._nl().brport("set", index=p.index, locked=1, learning=0)
                    sent += 1
            for port, mac in sorted(want - have):
                if port in ports and port not in up:
                    self._fdb("replace", ports[port].index, mac)
                    added.add((port, mac))
                    sent += 1
            for port, mac in sorted(have - want):
                if port in ports:
                    self._fdb("del", ports[port].index, mac)
                    sent += 1
            return Enforced(sent, frozenset(added), {name: p.index for name, p in ports.items()})
        except NetlinkError as exc:
            raise DatapathError(f"bridge port programming failed: {exc}", errno=exc.code) from exc

    def _change(self, add: set[Binding], remove: set[Binding], up_add: set[PortName], up_rm: set[PortName]) -> Enforced:
        try:
            names = {p for p, _ in add | remove} | up_add | up_rm
            ports = {n: p for n in names if (p := self._port(n)) is not None}
            sent = 0
            added: set[Binding] = set()
            for port, mac in sorted(remove - add):
                if port in ports:
                    self._fdb("del", ports[port].index, mac)
                    sent += 1
            for name, p in ports.items():
                if name in up_add:
                    if p.locked or not p.learning:
                        self._nl().brport("set", index=p.index, locked=0, learning=1)
                        sent += 1
                elif (name in up_rm or any(b == name for b, _ in add)) and (not p.locked or p.learning):
                    self._nl().brport("set", index=p.index, locked=1, learning=0)
                    sent += 1
            for port, mac in sorted(add):
                if port in ports and port not in up_add:
                    self._fdb("replace", ports[port].index, mac)
                    added.add((port, mac))
                    sent += 1
            return Enforced(sent, frozenset(added))
        except NetlinkError as exc:
            raise DatapathError(f"bridge port programming failed: {exc}", errno=exc.code) from exc

    def _release(self) -> None:
        try:
            ports = self._ports()
            for port, mac in self._sticky(ports):
                self._fdb("del", ports[port].index, mac)
            for p in ports.values():
                if p.locked or not p.learning:
                    self._nl().brport("set", index=p.index, locked=0, learning=1)
        except NetlinkError as exc:
            raise DatapathError(f"bridge port release failed: {exc}", errno=exc.code) from exc

    def _fdb(self, op: str, index: int, mac: Mac) -> None:
        if op == "del":
            try:
                self._nl().fdb("del", ifindex=index, lladdr=mac, flags=NTF_MASTER)
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:  # already gone
                    raise
            return
        self._nl().fdb(op, ifindex=index, lladdr=mac, state=NUD_NOARP, flags=NTF_MASTER | NTF_STICKY)


def _brport(msg: Any) -> BrPort | None:
    """The bridge-port state of one RTM_NEWLINK message; None when the link is no bridge port."""
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_SLAVE_KIND") != "bridge":
        return None
    data = info.get_attr("IFLA_INFO_SLAVE_DATA")
    if data is None:
        return None
    locked, learning = data.get_attr("IFLA_BRPORT_LOCKED"), data.get_attr("IFLA_BRPORT_LEARNING")
    return BrPort(msg["index"], bool(locked), bool(learning))
