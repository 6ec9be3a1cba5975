"""Tenant filter for a Linux bridge, on nftables (bridge family).

Layout of the one table `bridge hostvlan` (the kernel here lacks `meta ibrname`, so the
table covers every bridge of the network namespace: one managed bridge per host netns):

  prerouting (before FDB learning, so forged frames also cannot poison the FDB)
      the send check on iifname (`nft_facts.send_rules`: own vNIC MAC, uplink exempt,
      forged and unbound dropped and counted)
  forward, output (run once per output port, also per copy of a flood) -> rx
      the receive filter on oifname (`nft_facts.receive_rules`: ONE set lookup for
      tenant traffic)
  input (the host's own stack, a `global` member)
      ether saddr @known accept ; counter rx_host drop

Every base chain has policy drop. The sets are the model's facts
(`hostvlan.model.facts`) verbatim; the one-element set `digest` holds the digest of
them all, rewritten in every transaction, so a restarted agent can tell in one tiny
read whether the kernel holds what it wants. Atomicity: install, every change and removal is one
libnftables JSON batch, which the kernel commits as one transaction or not at all.
"""

from __future__ import annotations

from typing import ClassVar

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

HOST_RX = "rx_host"
_HOOKS = {"prerouting": "prerouting", "forward": "forward", "output": "output", "input": "input"}


class NftBridgeFilter(NftFactsFilter):
    """HostVLAN on a Linux bridge. Create it inside the host's network namespace."""

    FAMILY: ClassVar[str] = "bridge"
    VERSION: ClassVar[str] = "layout_v1"
    EXTRA_COUNTERS: ClassVar[dict[str, str]] = {HOST_RX: "(host)"}

    def _layout_cmds(self) -> list[Cmd]:
        t = self._t
        rules = {
            "prerouting": send_rules(IIF),
            "forward": [jump("rx")],
            "output": [jump("rx")],
            "rx": receive_rules(OIF),
            "input": [[match(SADDR, "known"), ACCEPT], [{"counter": HOST_RX}, DROP]],
        }
        cmds: list[Cmd] = [{"add": {"chain": {**t, "name": "rx"}}}]
        for chain, hook in _HOOKS.items():
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
