"""Tenant filter for a Linux bridge, composed of a send check and a receive filter.

`BridgeFilter` owns the one table `bridge hostvlan` (the facts as sets, their digest, the
drop counters: `nft_table.NftTable`) and the chain that guards the host's own stack; its
two parts (`parts`) own the rest:

  send check       `locked` (`locked.LockedPorts`: the bridge's locked ports and sticky FDB
                   entries, no hook; forged frames counted by the closing part's hv_fwd)
                   | `nft` (`nft.NftSendCheck`: chain prerouting)
  receive filter   `tc` (`tc.TcReceiveFilter`: an eBPF program per bridge port, no netfilter
                   hook on the forward path) | `nft` (`nft.NftReceiveFilter`: chains forward,
                   output)
  closing          with `locked` + `tc`, the default: `closing.Closing`, chains prerouting,
                   forward, output that close every port no binding names (agent or no
                   agent) and a tcx-ingress fast path that keeps VM-to-VM unicast off them

The flavours and their table layouts (the version counter in the table, mixed into the stored
digest, so an agent of another flavour reinstalls instead of trusting the kernel's digest):

  send check  receive filter  layout              base chains
  locked      tc + closing    layout_v5_closed    prerouting, forward, output, input  (the default)
  locked      tc              layout_v3_tc        input
  locked      nft             layout_v6_locked    forward, output, input
  nft         nft             layout_v6_nft       prerouting, forward, output, input (+ rx)

(v6: the nftables parts count unknown sources apart, `ru:<port>`, and log their drops: drop
events over NFLOG, `nft_events.NftEvents`, read by `drop_events`.)

Every base chain has policy drop; `input` (the host's own stack, a `global` member) holds
`ether saddr @known accept ; counter rx_host drop`. The kernel here lacks `meta ibrname`, so
the table covers every bridge of the network namespace: one managed bridge per host netns.

One transaction: the receive filter's `prepare`, the send check's `prepare`, the closing's
`prepare`, ONE nftables batch (facts, digest, on install the parts' chains, the closing's set
`open`), then the receive filter's and the closing's `complete`. Netlink and BPF have
no transaction: what a part writes before the batch only tightens, what it writes after only
loosens, and if the batch fails the undos of the prepares run in reverse order. A read-back
passes the table's facts through both parts (`check`): a part that does not enforce some of
them takes them out (or everything: a reinstall). A first apply, an audit and a link event
(`refresh_ports`) let the send check re-read the ports and the receive filter follow them.
"""

from __future__ import annotations

import time

from hostvlan.datapath.base import ApplyReport, DropEvent, PortCounters, TenantFilter
from hostvlan.datapath.bridge.closing import Closing
from hostvlan.datapath.bridge.guard import AddressGuard
from hostvlan.datapath.bridge.nft import NftReceiveFilter
from hostvlan.datapath.bridge.parts import Change, Layout, ReceiveFilter, SendCheck, Undo
from hostvlan.datapath.bridge.tc import TcReceiveFilter
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.datapath.nft_events import NftEvents
from hostvlan.datapath.nft_table import ACCEPT, DROP, PRIORITY, SADDR, Cmd, NftTable, match
from hostvlan.model.facts import Facts, FactsDelta
from hostvlan.model.verdict import UNKNOWN_SOURCE

HOST_RX = "rx_host"
LAYOUTS = {
    ("locked", "tc+closing"): "layout_v5_closed",
    ("locked", "tc"): "layout_v3_tc",
    ("locked", "nft"): "layout_v6_locked",
    ("nft", "nft"): "layout_v6_nft",
}


class BridgeFilter(TenantFilter):
    """HostVLAN on a Linux bridge (see module doc). Build it with `factory.build_backend`,
    inside the host's network namespace; it owns and closes `nft` and its parts (`closing`:
    built on the receive filter `tc`, which it shares)."""

    def __init__(
        self,
        nft: Nft,
        send: SendCheck,
        receive: ReceiveFilter,
        closing: Closing | None = None,
        guard: AddressGuard | None = None,
    ) -> None:
        super().__init__()
        flavour = (send.name, receive.name + ("+closing" if closing is not None else ""))
        if flavour not in LAYOUTS:
            raise ValueError(f"no bridge flavour with send check {send.name} and receive filter {flavour[1]}")
        if closing is not None and closing.rx is not receive:
            raise ValueError("the closing part must be built on this back end's receive filter")
        self.send = send
        self.receive = receive
        self.closing = closing
        self.guard = guard  # the address guard (`guard.AddressGuard`), its own maps and program
        self._guard_done = -1  # the guard revision (`TenantFilter._guard_rev`) it enforces
        nft_rx = isinstance(receive, NftReceiveFilter)
        logs = nft_rx or send.name == "nft"  # the nftables parts' drop rules log (drop events)
        self.table = NftTable(nft, "bridge", LAYOUTS[flavour], {HOST_RX: "(host)"}, split_unknown=nft_rx, events=logs)
        self._events = NftEvents() if logs else None  # opened here: in the host's namespace
        if closing is not None:
            closing.bind(self.table)

    def layout(self) -> Layout:
        """The chains of this flavour's table."""
        layout = Layout()
        self.send.layout(layout)
        self.receive.layout(layout)
        if self.closing is not None:
            self.closing.layout(layout)
        layout.hooks["input"] = "input"
        layout.rules["input"] = [[match(SADDR, "known"), ACCEPT], [{"counter": HOST_RX}, DROP]]
        return layout

    def hooks(self) -> list[str]:
        """The base chains of this flavour's table (netfilter hooks a frame may pass)."""
        return list(self.layout().hooks)

    def _layout_cmds(self) -> list[Cmd]:
        t, layout = self.table.ref, self.layout()
        cmds: list[Cmd] = [{"add": {"set": {**t, "name": name, "type": typ}}} for name, typ in layout.sets.items()]
        cmds += [{"add": {"chain": {**t, "name": name}}} for name in layout.regular]
        for chain, hook in layout.hooks.items():
            base = {**t, "name": chain, "type": "filter", "hook": hook, "prio": PRIORITY, "policy": "drop"}
            cmds.append({"add": {"chain": base}})
        for chain in [*layout.hooks, *layout.regular]:
            cmds += [{"add": {"rule": {**t, "chain": chain, "expr": expr}}} for expr in layout.rules.get(chain, [])]
        return cmds

    # ----- one transaction ------------------------------------------------------------------
    def _transact(self, change: Change, cmds: list[Cmd]) -> None:
        undos: list[Undo] = []
        try:
            for part in (self.receive, self.send):
                undo = part.prepare(change)
                if undo is not None:
                    undos.append(undo)
            if self.closing is not None:  # ports about to open get their programs first
                self.closing.prepare(change, self._index)
                cmds = [*cmds, *self.closing.batch(change, self._index)]
            self._sync_guard()  # a port about to open carries its guard first
            self.table.run(cmds)
        except BaseException:
            for undo in reversed(undos):
                undo()
            raise
        self.receive.complete(change, self._index)
        if self.closing is not None:
            self.closing.complete(change, self._index)

    def _sync_guard(self, force: bool = False) -> int:
        """The address guard's maps and programs for the queued state, when it changed."""
        if self.guard is None or (self._guard_done == self._guard_rev and not force):
            return 0
        rev = self._guard_rev
        n = self.guard.sync(self.guard_facts(), self.guard.links())
        self._guard_done = rev
        return n

    def _install(self, delta: FactsDelta, digest: int) -> None:
        self._transact(Change(delta, fresh=True), self.table.install_cmds(self._layout_cmds(), delta, digest))

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        self._transact(Change(delta, fresh=False), self.table.element_cmds(delta, digest))

    # ----- read-back and ports -------------------------------------------------------------------
    def _kernel_digest(self) -> int | None:
        if not self.receive.ready():
            return None
        return self.table.digest()

    def read(self) -> Facts | None:
        facts = self.table.read()
        if facts is None:
            return None
        checked = self.receive.check(self.send.check(facts))
        if checked is None or self.closing is None:
            return checked
        return self.closing.check(checked)

    def apply(self) -> ApplyReport:
        first = self._reconcile
        report = super().apply()
        if first:  # also when the digests agreed: ports that joined while no agent ran get fixed
            self.refresh_ports()
        self._sync_guard()  # an address change alone has no facts' delta
        return report

    def audit(self) -> ApplyReport:
        report = super().audit()
        fixed, _ = self.send.refresh(self._index)  # also locks ports new since
        fixed += self._sync_guard(force=True)
        return ApplyReport(report.elements + fixed, report.full) if fixed else report

    def refresh_ports(self) -> int:
        """A link event: the send check re-reads every port (locks new ones, restores a
        re-created port's entry), the receive filter follows them (programs, map keys)."""
        messages, links = self.send.refresh(self._index)
        n = messages + self.receive.follow(links, self._index)
        if self.closing is not None:
            n += self.closing.follow(links, self._index)
        return n + self._sync_guard(force=True)

    def counters(self) -> dict[str, PortCounters]:
        table = self.table.counters()
        out = self.receive.counters(table)
        return out if self.closing is None else self.closing.counters(table, out)

    def drops(self) -> dict[tuple[str, str], int]:
        """The parts' counts (each counts what it drops) and the host's stack's (`(host)`: a
        source not in the table, `unknown_source`). The locked send check counts only with the
        closing part (hv_fwd)."""
        packets = self.table.packets()
        table = self.table.port_counters(packets)
        out = self.receive.drops(table)
        if isinstance(self.receive, NftReceiveFilter):
            out = self.receive.split_unknown(packets, out)
        for key, n in self.send.drops(table).items():
            out[key] = out.get(key, 0) + n
        if self.closing is not None:
            out = self.closing.drops(table, out)
        host = table.get("(host)")
        if host is not None and host.rx_dropped:
            out[("(host)", UNKNOWN_SOURCE)] = host.rx_dropped
        if self.guard is not None:  # the address guard's (issue 13)
            for key, n in self.guard.counts().items():
                out[key] = out.get(key, 0) + n
        return out

    def drop_events(self, after: int = 0) -> list[DropEvent]:
        """The tc programs' sampled drops (`tc.TcReceiveFilter.drop_events`: hv_rx's and, with
        the closing part, hv_fwd's forged sources), or the nftables parts' logged drops (NFLOG)."""
        rx = self.receive
        if self._events is not None:
            return self._events.read(after)
        if not isinstance(rx, TcReceiveFilter):
            return []
        raw = rx.drop_events(after)
        if not raw:
            return []
        names = {i: str(p) for p, i in rx._at.items()}
        if any(e[2] not in names for e in raw):  # an unbound port: its link's name
            names.update({p.index: str(name) for name, p in rx._ports.ports().items() if p.index not in names})
        shift = time.time() - time.monotonic()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        return [
            DropEvent(seq, ns / 1e9 + shift, names.get(ifindex, f"ifindex {ifindex}"), src, dst, proto, reason)
            for seq, ns, ifindex, proto, reason, src, dst in raw
        ]

    def _remove(self) -> None:
        if self.guard is not None:
            self.guard.remove()
            self._guard_done = -1
        self.receive.remove()
        self.table.remove()
        self.send.remove()

    def close(self) -> None:
        if self.guard is not None:
            self.guard.close()
        self.receive.close()
        self.table.close()
        self.send.close()
        if self._events is not None:
            self._events.close()
