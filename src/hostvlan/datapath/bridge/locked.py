"""The send check by the Linux bridge itself: locked ports and sticky static FDB entries.

`LockedPorts` owns the bridge ports' `locked`/`learning` flags and hostvlan's sticky
static FDB entries (`kernel.brports` programs them over netlink): every bridge port but the
uplinks is locked, each bound (port, vNIC MAC) has its sticky entry, so the bridge drops a
forged source in the lookup it does anyway for learning, at no cost per frame and with no
chain in the table. The lock drops forged frames uncounted; composed with the closing part
(the default), hv_fwd drops and counts them first at each VM port's tcx ingress
(`closing.Closing`); `nft.NftSendCheck` counts them at the price of a netfilter hook.

Order against the nftables batch (netlink has no transaction spanning both): `prepare`
programs the bridge first (locks, new bindings' entries, gone bindings' entries deleted:
never looser than the facts about to be in force); if the batch fails, its undo deletes the
entries it had just added. A change touches only its bindings' ports; an install, a first
apply, an audit and a link event (`refresh`) read every port and fix what drifted.
"""

from __future__ import annotations

from collections.abc import Mapping

from hostvlan.datapath.base import PortCounters
from hostvlan.datapath.bridge.parts import Change, Layout, Undo
from hostvlan.datapath.kernel.brports import BridgePorts
from hostvlan.model.facts import Facts, FactsIndex
from hostvlan.model.ids import PortName


class LockedPorts:
    """The send check `locked` (see module doc); owns and closes `ports`."""

    name = "locked"

    def __init__(self, ports: BridgePorts) -> None:
        self.ports = ports

    def layout(self, layout: Layout) -> None:
        return None  # no chain: the bridge's own FDB lookup does it

    def check(self, facts: Facts) -> Facts:
        """The facts, less the bindings whose send check the bridge does not enforce (port not
        locked, learning, entry missing), so a repair re-programs them."""
        bad = self.ports.drift(facts.bound, facts.uplinks)
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

    def prepare(self, change: Change) -> Undo | None:
        b, u = change.delta.bound, change.delta.uplinks
        if change.fresh:
            bound, uplinks = set(b.add), set(u.add)
            added = self.ports.enforce(bound, uplinks).added

            def undo_install() -> None:
                self.ports.enforce(bound - added, uplinks)

            return undo_install if added else None
        if not (b or u):
            return None  # entries only: the bridge's part is unchanged
        # a change touches only its bindings' ports (no dump of every link and entry)
        added = self.ports.change(b.add, b.remove, u.add, u.remove).added

        def undo_change() -> None:
            self.ports.change(set(), added, set(), set())

        return undo_change if added else None

    def refresh(self, want: FactsIndex) -> tuple[int, Mapping[PortName, int] | None]:
        """Lock ports that joined a bridge since (a new VM's port sends nothing until bound),
        restore the entry of a re-created port; returns the messages and every port read."""
        enforced = self.ports.enforce(*want.port_facts())
        return enforced.messages, enforced.ports

    def drops(self, table: Mapping[str, PortCounters]) -> dict[tuple[str, str], int]:
        return {}  # the bridge counts none (the closing part's hv_fwd counts forged sources)

    def remove(self) -> None:
        self.ports.release()

    def close(self) -> None:
        self.ports.close()
