"""The bridge's send check and receive filter in nftables (table `bridge hostvlan`).

`NftSendCheck` (`--send-check nft`) owns the base chain `prerouting` (before FDB learning,
so forged frames cannot poison it): the model's send check on iifname
(`nft_table.send_rules`: own vNIC MAC, uplink exempt, forged and unbound dropped and counted
`tx:<port>`), at the price of a netfilter hook per frame.

`NftReceiveFilter` (`--receive-filter nft`) owns the base chains `forward` and `output`,
run once per output port (also per copy of a flood): the receive filter on oifname
(`nft_table.receive_chain`, ONE set lookup for tenant traffic; unknown sources counted apart,
`ru:<port>`). Inline in both chains, or, in the all-nftables flavour's layout, in a chain `rx`
both jump to. Both parts' drop rules log the frames they drop (`nft_table.logged`: drop
events, rate-limited, on the drop path only). Unlike the tc filter it also
covers ports no agent has seen. When it installs its chains it detaches the tc programs a tc
flavour left on the bridge ports (given the bridge's ports; their pinned maps stay until
removed).

Both are part of the nftables batch of each transaction: nothing to do before or after it.
"""

from __future__ import annotations

from collections.abc import Mapping

from hostvlan.datapath.base import PortCounters
from hostvlan.datapath.bridge.parts import Change, Layout, Undo
from hostvlan.datapath.bridge.tc import release_programs
from hostvlan.datapath.kernel.brports import BridgePorts
from hostvlan.datapath.nft_table import IIF, OIF, jump, logged, receive_chain, send_rules
from hostvlan.model.facts import Facts, FactsIndex
from hostvlan.model.ids import PortName
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

_BUCKETS = ("(unbound)", "(host)")


def table_drops(table: Mapping[str, PortCounters], reason: str, rx: bool) -> dict[tuple[str, str], int]:
    """The table's per-port counters (rx:<port> or tx:<port>) as drops of `reason`, and its
    unbound counter (rx_unbound or tx_unbound) as unbound_port."""
    out: dict[tuple[str, str], int] = {}
    for port, c in table.items():
        n = c.rx_dropped if rx else c.tx_dropped
        if n and port not in _BUCKETS:
            out[(port, reason)] = n
    unbound = table.get("(unbound)")
    n = 0 if unbound is None else (unbound.rx_dropped if rx else unbound.tx_dropped)
    if n:
        out[("(unbound)", UNBOUND_PORT)] = n
    return out


class NftSendCheck:
    """The send check `nft` (see module doc)."""

    name = "nft"

    def layout(self, layout: Layout) -> None:
        layout.hooks["prerouting"] = "prerouting"
        layout.rules["prerouting"] = logged(send_rules(IIF), IIF)

    def check(self, facts: Facts) -> Facts:
        return facts  # the table's sets are the whole send check

    def prepare(self, change: Change) -> Undo | None:
        return None

    def refresh(self, want: FactsIndex) -> tuple[int, Mapping[PortName, int] | None]:
        return 0, None  # matches port names: nothing follows links

    def drops(self, table: Mapping[str, PortCounters]) -> dict[tuple[str, str], int]:
        """tx:<port> counts forged sources, tx_unbound the frames of ports without a binding."""
        return table_drops(table, FORGED_SOURCE, rx=False)

    def remove(self) -> None:
        return None  # its chain goes with the table

    def close(self) -> None:
        return None


class NftReceiveFilter:
    """The receive filter `nft` (see module doc); `ports` (not owned) to detach tc programs."""

    name = "nft"

    def __init__(self, *, inline: bool, ports: BridgePorts | None = None) -> None:
        self.inline = inline  # rules in forward/output themselves (a jump per frame saved)
        self._ports = ports

    def layout(self, layout: Layout) -> None:
        rules = logged(receive_chain(OIF), OIF)
        rx = rules if self.inline else [jump("rx")]
        if not self.inline:
            layout.regular.append("rx")
            layout.rules["rx"] = rules
        for chain in ("forward", "output"):
            layout.hooks[chain] = chain
            layout.rules[chain] = rx

    def ready(self) -> bool:
        return True

    def check(self, facts: Facts) -> Facts | None:
        return facts

    def prepare(self, change: Change) -> Undo | None:
        return None

    def complete(self, change: Change, want: FactsIndex) -> None:
        if change.fresh and self._ports is not None:  # the receive filter is ours now
            release_programs(self._ports)

    def follow(self, links: Mapping[PortName, int] | None, want: FactsIndex) -> int:
        return 0  # nftables matches port names

    def counters(self, table: dict[str, PortCounters]) -> dict[str, PortCounters]:
        return table

    def drops(self, table: Mapping[str, PortCounters]) -> dict[tuple[str, str], int]:
        """The copies a bound port may not receive (`table`: rx:<port> and ru:<port> together,
        as `NftTable.port_counters` adds them) as no_shared_lnid, rx_unbound as unbound_port;
        `split_unknown` moves ru:<port>'s to unknown_source."""
        return table_drops(table, NO_SHARED_LNID, rx=True)

    @staticmethod
    def split_unknown(packets: Mapping[str, int], out: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """`out` (from `drops`) with each port's ru:<port> (a source in no entry) moved from
        no_shared_lnid to unknown_source."""
        out = dict(out)
        for name, n in packets.items():
            if name.startswith("ru:") and n:
                port = name[3:]
                left = out.get((port, NO_SHARED_LNID), 0) - n
                if left > 0:
                    out[(port, NO_SHARED_LNID)] = left
                else:
                    out.pop((port, NO_SHARED_LNID), None)
                out[(port, UNKNOWN_SOURCE)] = out.get((port, UNKNOWN_SOURCE), 0) + n
        return out

    def remove(self) -> None:
        return None  # its chains go with the table

    def close(self) -> None:
        return None
