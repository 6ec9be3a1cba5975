"""Tenant filter for macvtap (SPEC §4.3), on nftables netdev hooks: no kernel patch.

VMs attach through macvtap devices in `bridge` mode on the host's uplink (its physical
NIC, the macvtaps' lower device). A macvtap is tap + bridge in one device, and its MAC is
the vNIC MAC, so there is no tap binding: the port IS the macvtap, bound to its MAC.

Which hook sees what (verified on Linux 6.18 with counters on every hook, see
tests/integration/test_macvtap_hooks.py):

  frame                                  hooks that see it
  VM writes a frame to /dev/tapN         the macvtap's EGRESS (QEMU's write is a
                                         dev_queue_xmit on the macvtap), once
  … broadcast/multicast from a VM        + the INGRESS of each sibling macvtap (one copy
                                         each) + the lower device's egress (to the wire)
  … unicast to a sibling VM              + the sibling's INGRESS (+ the lower's ingress:
                                         macvlan forwards it through the lower device)
  … unicast to the wire                  + the lower device's egress
  broadcast/multicast from the wire      the lower's ingress ONCE (before the fan-out), then
                                         the INGRESS of every macvtap (one copy each)
  unicast from the wire to a VM          the lower's ingress, then that macvtap's INGRESS

So a macvtap's ingress hook runs once per copy headed to its VM, whatever the copy came
from (wire, sibling broadcast, sibling unicast): that is the model's receive filter with
output port = that macvtap (`meta iifname`, the device whose ingress runs). Its egress
hook runs once per frame the VM sends: the send check (`meta oifname`). Hooks on the
lower device alone cannot do either: they see a broadcast once before the fan-out and
never see sibling broadcasts.

The uplink (a binding with `uplink=True`, port = the lower device) is `global`: its
send check is exempt, and its receive filter runs on the lower device's EGRESS (every
frame leaving for the wire, from any macvtap, passes there once, with `meta oifname` =
the uplink). It holds exactly the model's verdict for the uplink port: a frame that
passed its VM's send check reaches the wire iff its source is known (in the table).

Layout of the one table `netdev hostvlan` (sets, digest and counters as in every
nftables back end, `nft_table.NftTable`, which this back end holds):

  rx (regular; at a VM port's ingress)  the receive filter, output port = iifname
  wire_rx (regular; at the uplink's egress) the same on oifname, its `global_ports` rule first
  tx (regular; at a VM port's egress)   the send check, input port = oifname
  per bound VM port P:   chain rx_P  hook ingress device P policy drop { jump rx }
                         chain tx_P  hook egress  device P policy drop {
                             ether saddr <M> accept      (for each M with (P, M) in bound)
                             jump tx }
  per bound uplink U:    chain rx_U  hook egress  device U policy drop { jump wire_rx }

(Per-port chains start with `rx_`/`tx_`, shared ones never do: no port name collides.
Drop counters are named `rx:P`/`tx:P` as on the bridge, plus `ru:P`: `rx` and `wire_rx` drop
a frame whose source is not in `known` by a rule of its own before the per-port drop
(`receive_chain`), so `drops()` tells unknown_source (`ru:P`) from no_shared_lnid (`rx:P`);
forged_source is `tx:P`, unbound_port the guard's per macvtap and the unbound counters. Each
counted drop rule of `rx`, `wire_rx` and `tx` is preceded by a rate-limited log rule
(`nft_table.logged`): drop events, read over NFLOG by `drop_events`. Counters are
read over nfnetlink (`kernel.nfnl.Nfnl.counters`): nft 1.0.6 hangs listing counters while
the guard's prefix chains exist; the table and sets are listed by name, which does not.)

Per-frame cost. A frame from VM to VM passes two hooks: its port's egress, its peer's
ingress; each hook's tenant traffic is accepted by the first rule. The egress chain
compares the source with the port's own MAC (written into the chain, rewritten in the
transaction that changes the port's `bound` MACs, checked on read-back) instead of the
`oifname . ether saddr @bound` lookup, which had to load the 16-byte name and hash 24
bytes. Measured with a C loop writing frames into one macvtap and reading them from its
sibling (2-vCPU VM, kernel 6.18, table at 8,192 entries): ≈ 800 ns of CPU per frame
unfiltered; the filter adds ≈ 175 ns (≈ 225 ns with the lookup), of which ≈ 70 ns are
the two hooks themselves (chains holding only `accept`).

A netdev base chain is bound to ONE device, so the per-port base chains are created and
deleted in the same transaction as the binding's elements (`ports`/`uplinks`/`bound`):
a port is filtered from the commit that binds it. On this kernel (6.18) a netdev chain
may name a device that does not exist yet: the hook attaches when the device is
registered (before it can be brought up), stays when the device is deleted and
re-attaches when it comes back. So binding a port BEFORE its macvtap is created filters
it from birth. (Verified on 6.18 only. Older kernels, before the netdev-hook rework of
about 6.16, refuse a chain for a missing device and delete it with the device: there the
device must exist when its port is bound, and be re-bound when it is re-created.)

Fail closed. Every base chain has policy drop. A macvtap that is NOT bound has no chain of
its own, and nothing else of this table sees all of its frames (its broadcasts reach siblings
without passing any hook of the lower device). `macvtap_guard.MacvtapGuard`, which the
factory composes by default, closes such a macvtap with prefix-hook chains on `macvtap*`
(raw nfnetlink: nft 1.0.6 cannot express them), agent running or not. For a macvtap named
otherwise, or without the guard (`--no-macvtap-guard`), the contract the agent and the
testbed follow is:

  1. create the macvtap DOWN (the kernel's default) or bind its port first;
  2. bind its port (apply) before bringing it up and before QEMU opens /dev/tapN;
  3. bring it down (or delete it) before unbinding its port.

A macvtap that is down is out of macvlan's forwarding table (it receives no copy) and
cannot transmit, so an unbound device is isolated as long as the contract holds;
`unguarded()` lists the macvtaps that break it (up and unbound) so an agent can alarm
or bring them down.

Multicast: macvlan delivers a multicast copy only to macvtaps whose multicast filter
passes the group, so the macvtaps need `allmulticast on` (the testbed sets it; on a real
host the agent or the VM manager must); a broadcast always passes. `mode source`
macvtaps are no substitute for this filter (the project found they leak).

The host's own frames: what the host's stack sends through the lower device passes the
uplink's receive filter like any frame for the wire (the NIC's MAC is known, `global`;
any other source must be in the table). What it sends through a macvtap (IPv6 ND/MLD of
a host namespace with IPv6 on) carries the vNIC MAC and passes as the VM's own frame:
keep IPv6 off on the macvtaps (the testbed disables it in every namespace).

Differences from the model. Stricter: macvlan itself drops a wire broadcast whose
source MAC is a local bridge-mode macvtap's (it takes it for its own frame looped back),
and, as with every macvtap, VMs cannot reach the host's own stack on the lower device.
Looser: with the uplink UNBOUND there is no chain on the lower device, so frames that
passed a VM's send check reach the wire unchecked, and frames from the wire are checked
only at each VM port's ingress (by source); the model would drop both at the unbound
port. An agent always binds its uplink.

Atomicity: install, every change and removal is one libnftables JSON batch, which the
kernel commits as one transaction or not at all; chain hooks registered by a batch drop
(policy) until it commits and vanish if it aborts. Counters per port: `counters()`; per
(port, reason): `drops()`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

from hostvlan.datapath.base import UNBOUND_PORT_NAME, DropEvent, PortCounters, TenantFilter
from hostvlan.datapath.kernel.nfnl import NFPROTO_NETDEV, Nfnl
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.datapath.macvtap_guard import VERSION as GUARD_VERSION
from hostvlan.datapath.macvtap_guard import MacvtapGuard
from hostvlan.datapath.nft_events import NftEvents
from hostvlan.datapath.nft_table import (
    ACCEPT,
    IIF,
    OIF,
    PRIORITY,
    SADDR,
    TABLE,
    UNBOUND_RX,
    UNBOUND_TX,
    ChainCmds,
    Cmd,
    NftTable,
    Rule,
    jump,
    logged,
    receive_chain,
    send_rules,
)
from hostvlan.model.facts import Facts, FactsDelta
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import PortBinding
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

RX = "rx"  # receive filter at a VM port's ingress (output port = iifname)
RX_WIRE = "wire_rx"  # receive filter at the uplink's egress (output port = oifname)
TX = "tx"  # send check at a VM port's egress (input port = oifname)
_SHARED = (RX, RX_WIRE, TX)

Kind = Literal["vm", "uplink"]
# (chain name, hook, shared chain it jumps to) of each kind of bound port
_CHAINS: dict[str, list[tuple[str, str, str]]] = {
    "vm": [("rx_", "ingress", RX), ("tx_", "egress", TX)],
    "uplink": [("rx_", "egress", RX_WIRE)],
}


def port_chains(port: str, kind: Kind) -> dict[str, tuple[str, str]]:
    """The base chains of a bound port: chain name → (hook, shared chain it jumps to)."""
    return {prefix + port: (hook, target) for prefix, hook, target in _CHAINS[kind]}


def own_mac_rule(mac: Mac) -> Rule:
    """A VM port's send check for one of its own (`bound`) MACs, in the port's egress chain."""
    return [{"match": {"op": "==", "left": SADDR, "right": str(mac)}}, ACCEPT]


def _own_macs(rules: list[list[Any]]) -> list[str] | None:
    """The MACs of `own_mac_rule` rules in an egress chain's rule list (None: another rule)."""
    out = []
    for expr in rules:
        if len(expr) != 2 or expr[1] != ACCEPT or "match" not in expr[0]:
            return None
        m = expr[0]["match"]
        if m.get("op") != "==" or m.get("left") != SADDR or not isinstance(m.get("right"), str):
            return None
        out.append(str(m["right"]))
    return out


def _kind_before(port: PortName, delta: FactsDelta) -> Kind | None:
    """A port's kind in the kernel before `delta` (which is relative to the kernel's facts)."""
    if port in delta.ports.add:
        return None
    if port in delta.uplinks.remove:
        return "uplink"
    if port in delta.uplinks.add:
        return "vm"
    return "vm"  # removed from ports and never an uplink


def _kind_after(port: PortName, delta: FactsDelta) -> Kind | None:
    if port in delta.ports.remove:
        return None
    if port in delta.uplinks.add:
        return "uplink"
    return "vm"  # newly bound VM port, or an uplink turned into a VM port


VERSION = "layout_macvtap_v5"  # v5: the drop rules log (drop events)


class MacvtapFilter(TenantFilter):
    """HostVLAN on macvtap devices. Create it inside the host's network namespace (the factory
    does); it owns and closes `nft`, `guard` (`macvtap_guard.MacvtapGuard`, the factory's
    default: closes every unbound `macvtap*`; its own table layout version) and `nfnl` (the
    counters are read over it: nft 1.0.6 hangs listing counters while the guard exists; the
    guard's own when there is one) and `events` (the drop rules' NFLOG reader, `nft_events`;
    opened here, in the caller's namespace, unless given)."""

    def __init__(
        self,
        nft: Nft | None = None,
        guard: MacvtapGuard | None = None,
        nfnl: Nfnl | None = None,
        events: NftEvents | None = None,
    ) -> None:
        super().__init__()
        self.guard = guard
        version = VERSION if guard is None else GUARD_VERSION
        self.table = NftTable(nft or Nft(), "netdev", version, split_unknown=True, events=True)
        self._t = self.table.ref
        self._nfnl = guard.nfnl if guard is not None else (nfnl or Nfnl())
        self._events = events or NftEvents()

    # ----- the back-end contract, on the table ------------------------------------------------
    def _kernel_digest(self) -> int | None:
        return self.table.digest()

    def read(self) -> Facts | None:
        facts = self.table.read(self._layout_matches)
        if facts is None or self.guard is None:
            return facts
        return facts if self.guard.check(self.table.nft, facts) else None

    def _install(self, delta: FactsDelta, digest: int) -> None:
        chains = self._port_chain_cmds(delta, fresh=True)
        cmds = self.table.install_cmds(self._layout_cmds(), delta, digest, chains)
        if self.guard is None:  # without the guard: a guard left by an earlier agent goes in the same batch
            self.table.run([*cmds, *MacvtapGuard.remove_cmds()])  # (its set would no longer follow the bindings)
            return
        self.table.run(self.guard.batch(delta, cmds, fresh=True))
        self.guard.installed(self.table.nft)

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        cmds = self.table.element_cmds(delta, digest, self._port_chain_cmds(delta, fresh=False))
        self.table.run(cmds if self.guard is None else self.guard.batch(delta, cmds, fresh=False))

    def _packets(self) -> tuple[dict[str, int], dict[str, int]]:
        """(the table's named counters, the guard's) → packets, over nfnetlink (never a listing)."""
        guard = self.guard.counters() if self.guard is not None else {}
        return self._nfnl.counters(NFPROTO_NETDEV, TABLE), guard

    def counters(self) -> dict[str, PortCounters]:
        """The table's drop counters per port (the guard's are in `drops()` only: they also count
        what a macvtap that is DOWN sends, which reaches its egress hook and no further)."""
        return self.table.port_counters(self._nfnl.counters(NFPROTO_NETDEV, TABLE))

    def drops(self) -> dict[tuple[str, str], int]:
        """Per (port, reason): `rx:P` no shared LNID (its source is known: unknown sources are
        `ru:P`'s), `ru:P` unknown source, `tx:P` forged source, at the port named; what the guard
        dropped per unbound macvtap (its set `unbound`) as (that macvtap, unbound_port); the
        table's unbound counters and the guard's drops no device was recorded for (set full)
        under (`(unbound)`, unbound_port)."""
        per_device = self.guard.by_device(self.table.nft) if self.guard is not None else {}
        table, guard = self._packets()  # after the set: its counts never run ahead of the totals
        reason = {"rx:": NO_SHARED_LNID, "ru:": UNKNOWN_SOURCE, "tx:": FORGED_SOURCE}
        out: dict[tuple[str, str], int] = {}
        unbound = max(0, sum(guard.values()) - sum(per_device.values()))
        for name, packets in table.items():
            if name[:3] in reason:
                out[(name[3:], reason[name[:3]])] = packets
            elif name in (UNBOUND_RX, UNBOUND_TX):
                unbound += packets
        for port, packets in per_device.items():
            out[(port, UNBOUND_PORT)] = out.get((port, UNBOUND_PORT), 0) + packets
        if table or guard:  # installed
            out[(UNBOUND_PORT_NAME, UNBOUND_PORT)] = unbound
        return out

    def drop_events(self, after: int = 0) -> list[DropEvent]:
        """The drop rules' logged frames (`nft_table.logged`, 64 a second): forged sources at a VM
        port's egress, unknown sources and no shared LNID at the port a copy would leave by (a
        macvtap's ingress, the uplink's egress). The guard's drops of unbound macvtaps are
        counted, not logged."""
        return self._events.read(after)

    def _remove(self) -> None:
        if self.guard is None:
            self.table.remove()
            return
        t = {"family": "netdev", "name": TABLE}
        self.table.run([{"add": {"table": t}}, {"delete": {"table": t}}, *self.guard.remove_cmds()])

    def close(self) -> None:
        self.table.close()
        self._events.close()
        if self.guard is not None:
            self.guard.close()  # and `_nfnl`, the guard's
        else:
            self._nfnl.close()

    # ----- the layout ---------------------------------------------------------------------------
    def _layout_cmds(self) -> list[Cmd]:
        wire = receive_chain(OIF)
        # the uplink is `global`: its `global_ports` rule accepts what leaves for the wire, so it
        # goes first (the accepts commute: same verdict, one (MAC, port) lookup less per frame)
        wire = [wire[1], wire[0], *wire[2:]]
        rules = {RX: logged(receive_chain(IIF), IIF), RX_WIRE: logged(wire, OIF), TX: logged(send_rules(OIF), OIF)}
        cmds: list[Cmd] = []
        for chain, exprs in rules.items():
            cmds.append({"add": {"chain": {**self._t, "name": chain}}})
            cmds += [{"add": {"rule": {**self._t, "chain": chain, "expr": expr}}} for expr in exprs]
        return cmds

    def _tx_rules(self, port: str, bindings: Mapping[PortName, PortBinding]) -> list[Rule]:
        """A VM port's egress chain: its own MAC first (one compare: no set lookup, no port
        name to load), then the whole send check for anything else (`jump tx`, exact).
        `bindings` are the desired ones: the chain is written in the transaction that makes
        the kernel's facts the desired facts."""
        b = bindings.get(PortName(port))
        own = [] if b is None or b.uplink else [b.mac]
        return [own_mac_rule(m) for m in own] + [jump(TX)]

    def _chain_cmds(self, port: str, kind: Kind, bindings: Mapping[PortName, PortBinding]) -> list[Cmd]:
        cmds: list[Cmd] = []
        for name, (hook, target) in port_chains(port, kind).items():
            chain = {**self._t, "name": name, "type": "filter", "hook": hook, "dev": port, "prio": PRIORITY}
            cmds.append({"add": {"chain": {**chain, "policy": "drop"}}})
            rules = self._tx_rules(port, bindings) if target == TX else [jump(target)]
            cmds += [{"add": {"rule": {**self._t, "chain": name, "expr": expr}}} for expr in rules]
        return cmds

    def _port_chain_cmds(self, delta: FactsDelta, fresh: bool) -> ChainCmds:
        """Per-port base chains follow the bindings, in the same transaction; so do the own-MAC
        rules of a VM port's egress chain when its `bound` MACs change (flush and rewrite:
        a MAC that left `bound` never stays accepted past the commit)."""
        old: list[Cmd] = []
        new: list[Cmd] = []
        affected = sorted(delta.ports.add | delta.ports.remove | delta.uplinks.add | delta.uplinks.remove)
        # VM ports before and after whose MACs change: their chains stay, their own-MAC rules not
        rebound = set() if fresh else {p for p, _ in delta.bound.add | delta.bound.remove} - set(affected)
        bindings = self._index.state().bindings if affected or rebound else {}
        for port in affected:
            before = None if fresh else _kind_before(port, delta)
            after = _kind_after(port, delta)
            if before == after:
                continue
            if before is not None:
                old += [{"delete": {"chain": {**self._t, "name": name}}} for name in port_chains(port, before)]
            if after is not None:
                new.extend(self._chain_cmds(port, after, bindings))
        for port in sorted(rebound):
            name = "tx_" + port
            new.append({"flush": {"chain": {**self._t, "name": name}}})
            new += [
                {"add": {"rule": {**self._t, "chain": name, "expr": expr}}} for expr in self._tx_rules(port, bindings)
            ]
        return old, new

    def _layout_matches(self, facts: Facts, items: list[dict[str, Any]]) -> bool:
        chains: dict[str, tuple[str | None, str | None]] = {}  # name -> (hook, policy)
        rules: dict[str, list[list[Any]]] = {}  # chain -> the expressions of each rule
        for item in items:
            if "chain" in item:
                c = item["chain"]
                chains[str(c["name"])] = (c.get("hook"), c.get("policy"))
            elif "rule" in item:
                r = item["rule"]
                rules.setdefault(str(r["chain"]), []).append(list(r.get("expr", [])))
        if not facts.uplinks <= facts.ports or {p for p, _ in facts.bound} != facts.ports - facts.uplinks:
            return False
        want: dict[str, tuple[str, str]] = {}
        for port in facts.ports:
            want |= port_chains(port, "uplink" if port in facts.uplinks else "vm")
        if set(chains) != set(want) | set(_SHARED) or any(chains[c] != (None, None) for c in _SHARED):
            return False
        own: dict[str, set[str]] = {}
        for port, mac in facts.bound:
            own.setdefault("tx_" + port, set()).add(str(mac))
        # (nft 1.0.6 does not print a netdev chain's device in JSON: the name carries the port)
        for name, (hook, target) in want.items():
            got = rules.get(name, [])
            if chains[name] != (hook, "drop") or not got or got[-1] != jump(target):
                return False
            macs = _own_macs(got[:-1])
            if (
                macs is None
                or len(macs) != len(set(macs))
                or set(macs) != (own.get(name, set()) if target == TX else set())
            ):
                return False
        return True

    # ----- the fail-closed contract --------------------------------------------------------
    def unguarded(self, links: Iterable[Any]) -> list[PortName]:
        """Macvtap devices that are up but not bound: they break the contract (module doc).

        `links` are the host namespace's links as pyroute2 messages (`IPRoute.get_links()`).
        """
        bound = self._index.state().bindings
        out = []
        for link in links:
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            name = PortName(str(link.get_attr("IFLA_IFNAME")))
            if kind == "macvtap" and link["flags"] & 1 and name not in bound:  # IFF_UP
                out.append(name)
        return sorted(out)
