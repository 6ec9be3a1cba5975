"""Tenant filter for a Linux bridge, on nftables (bridge family), in two flavours.

(The agent's default is `tc_bridge.TcBridgeFilter`, which keeps `LockedBridgeFilter`'s send
check and moves its receive filter out of netfilter, into a tc/eBPF program per port.)

`LockedBridgeFilter` (`--receive-filter nft`): the receive filter is ONE
netfilter hook per frame copy (forward; output for the host's own frames) with one set
lookup; the send check is done by the bridge itself with locked ports and one sticky static
FDB entry per bound vNIC MAC (`brports`), at no cost per frame. Forged frames are dropped
before the bridge learns from them, but uncounted.

`NftBridgeFilter` (`--send-check nft`): also the send check in nftables, at prerouting,
counted per port (`tx:<port>`), at the price of a second hook per frame.

Layout of the one table `bridge hostvlan` (the kernel here lacks `meta ibrname`, so the
table covers every bridge of the network namespace: one managed bridge per host netns):

  prerouting (`NftBridgeFilter` only; before FDB learning, so forged frames cannot poison it)
      the send check on iifname (`nft_facts.send_rules`: own vNIC MAC, uplink exempt,
      forged and unbound dropped and counted)
  forward, output (run once per output port, also per copy of a flood; `LockedBridgeFilter`
  holds the rules in both chains, `NftBridgeFilter` jumps to a chain rx)
      the receive filter on oifname (`nft_facts.receive_rules`: ONE set lookup for
      tenant traffic)
  input (the host's own stack, a `global` member)
      ether saddr @known accept ; counter rx_host drop

Every base chain has policy drop. The sets are the model's facts
(`hostvlan.model.facts`) verbatim; the one-element set `digest` holds the digest of
them all, rewritten in every transaction, so a restarted agent can tell in one tiny
read whether the kernel holds what it wants. Atomicity: install, every change and removal is one
libnftables JSON batch, which the kernel commits as one transaction or not at all. The locked
ports' state (netlink: no transaction) is programmed before the batch, never looser than the
facts about to be in force, and the entries it added are deleted again if the batch fails.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import ClassVar

from hostvlan.datapath.base import ApplyReport
from hostvlan.datapath.brports import BridgePorts, Enforced
from hostvlan.datapath.nft_facts import (
    ACCEPT,
    DROP,
    IIF,
    OIF,
    PRIORITY,
    SADDR,
    Cmd,
    NftFactsFilter,
    jump,
    match,
    receive_rules,
    send_rules,
)
from hostvlan.datapath.nftlib import Nft
from hostvlan.model.facts import Facts, FactsDelta
from hostvlan.model.ids import Mac, PortName

HOST_RX = "rx_host"
_HOOKS = {"prerouting": "prerouting", "forward": "forward", "output": "output", "input": "input"}


class NftBridgeFilter(NftFactsFilter):
    """HostVLAN on a Linux bridge. Create it inside the host's network namespace."""

    FAMILY: ClassVar[str] = "bridge"
    VERSION: ClassVar[str] = "layout_v1"
    EXTRA_COUNTERS: ClassVar[dict[str, str]] = {HOST_RX: "(host)"}
    HOOKS: ClassVar[dict[str, str]] = _HOOKS
    INLINE_RX: ClassVar[bool] = False  # receive rules in forward/output themselves (no jump)

    def _layout_cmds(self) -> list[Cmd]:
        t = self._t
        rx = [jump("rx")] if not self.INLINE_RX else receive_rules(OIF)
        rules = {
            "prerouting": send_rules(IIF),
            "forward": rx,
            "output": rx,
            "input": [[match(SADDR, "known"), ACCEPT], [{"counter": HOST_RX}, DROP]],
        }
        cmds: list[Cmd] = []
        if not self.INLINE_RX:
            rules["rx"] = receive_rules(OIF)
            cmds.append({"add": {"chain": {**t, "name": "rx"}}})
        rules = {c: r for c, r in rules.items() if c in self.HOOKS or c == "rx"}
        for chain, hook in self.HOOKS.items():
            cmds.append(
                {
                    "add": {
                        "chain": {
                            **t,
                            "name": chain,
                            "type": "filter",
                            "hook": hook,
                            "prio": PRIORITY,
                            "policy": "drop",
                        }
                    }
                }
            )
        for chain, exprs in rules.items():
            cmds += [{"add": {"rule": {**t, "chain": chain, "expr": expr}}} for expr in exprs]
        return cmds


class LockedBridgeFilter(NftBridgeFilter):
    """HostVLAN on a Linux bridge, send check in the bridge (see module doc)."""

    VERSION: ClassVar[str] = "layout_v2_locked"
    HOOKS: ClassVar[dict[str, str]] = {k: v for k, v in _HOOKS.items() if k != "prerouting"}
    INLINE_RX: ClassVar[bool] = True  # a jump per frame saved

    def __init__(self, nft: Nft | None = None, ports: BridgePorts | None = None) -> None:
        super().__init__(nft)
        self._ports = ports or BridgePorts()

    # Order against the nftables batch: the bridge's send check is programmed first (locks,
    # entries of new bindings, gone bindings' entries deleted: never looser than the facts
    # about to be in force); a failed batch then deletes the entries it had just added.
    def _enforced(
        self, facts_bound: AbstractSet[tuple[PortName, Mac]], uplinks: AbstractSet[PortName], run: Callable[[], None]
    ) -> None:
        added = self._ports.enforce(facts_bound, uplinks).added
        try:
            run()
        except BaseException:
            if added:
                self._ports.enforce(set(facts_bound) - added, uplinks)
            raise

    def apply(self) -> ApplyReport:
        first = self._reconcile
        report = super().apply()
        if first:  # also when the digests agreed: ports that joined while no agent ran get locked
            self._ports_enforced(self._ports.enforce(*self.desired_ports()))
        return report

    def _install(self, delta: FactsDelta, digest: int) -> None:
        self._enforced(
            delta.bound.add, delta.uplinks.add, lambda: super(LockedBridgeFilter, self)._install(delta, digest)
        )
        if self.HOOKS.get("forward"):  # the receive filter is ours now: drop a tc flavour's programs
            from hostvlan.datapath.tc_bridge import release_programs

            release_programs(self._ports)

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        if not (delta.bound or delta.uplinks):
            super()._commit(delta, digest)  # entries only: the bridge's part is unchanged
            return
        # a change touches only its bindings' ports (no dump of every link and entry)
        b, u = delta.bound, delta.uplinks
        added = self._ports.change(b.add, b.remove, u.add, u.remove).added
        try:
            super()._commit(delta, digest)
        except BaseException:
            if added:
                self._ports.change(set(), added, set(), set())
            raise

    def audit(self) -> ApplyReport:
        report = super().audit()
        fixed = self._ports.enforce(*self.desired_ports()).messages  # also locks ports new since
        return ApplyReport(report.elements + fixed, report.full) if fixed else report

    def read(self) -> Facts | None:
        """The nftables facts, less the bindings whose send check the bridge does not enforce
        (so a repair re-programs them)."""
        facts = super().read()
        if facts is None:
            return None
        bad = self._ports.drift(facts.bound, facts.uplinks)
        if not bad:
            return facts
        return Facts(
            known=facts.known,
            global_src=facts.global_src,
            ports=facts.ports,
            global_ports=facts.global_ports,
            uplinks=facts.uplinks,
            bound=facts.bound - bad,
            pairs=facts.pairs,
        )

    def refresh_ports(self) -> int:
        """Lock ports that joined a bridge since (a new VM's port sends nothing until bound) and
        restore a binding's entry if its port was re-created; the nftables side matches names."""
        enforced = self._ports.enforce(*self.desired_ports())
        return enforced.messages + self._ports_enforced(enforced)

    def _ports_enforced(self, enforced: Enforced) -> int:
        """What a subclass does next with the bridge's ports, just read and locked (at a link event,
        a first apply); returns its changes. Here: nothing (nftables matches port names)."""
        return 0

    def _remove(self) -> None:
        super()._remove()
        self._ports.release()

    def close(self) -> None:
        super().close()
        self._ports.close()


def bridge_filter(send_check: str = "locked", receive: str | None = None, pins: Path | None = None) -> NftBridgeFilter:
    """The Linux-bridge back end the agent's options name (create it inside the host's namespace):
    send check `locked` (default) or `nft`; receive filter `tc` (default with `locked`,
    `tc_bridge.TcBridgeFilter`) or `nft` (default with send check `nft`)."""
    receive = receive or ("tc" if send_check == "locked" else "nft")
    if send_check == "nft":
        if receive != "nft":
            raise ValueError("--receive-filter tc needs --send-check locked (the tc filter has no send check)")
        return NftBridgeFilter()
    if send_check != "locked":
        raise ValueError(f"unknown send check {send_check!r}")
    if receive == "nft":
        return LockedBridgeFilter()
    from hostvlan.datapath.tc_bridge import TcBridgeFilter

    return TcBridgeFilter(pins=pins)
