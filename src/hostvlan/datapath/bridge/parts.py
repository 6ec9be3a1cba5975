"""What the Linux-bridge back end is composed of: a send check and a receive filter.

Each part owns one slice of the host's kernel state, the way Felix composes its data plane
from managers: the locked ports and sticky FDB entries (`locked.LockedPorts`), the
nftables send check's chain (`nft.NftSendCheck`), the nftables receive filter's chains
(`nft.NftReceiveFilter`), or the tc programs and BPF maps (`tc.TcReceiveFilter`), and
optionally the chains that close every unbound port with the tc receive filter's fast path
(`closing.Closing`, the default). The
back end (`backend.BridgeFilter`) holds the facts' table and drives its parts through one
two-phase interface per transaction:

  prepare(change)   before the nftables batch: what must be in force first (never looser
                    than the facts about to be); returns how to undo its additions
  (the batch)       one nftables transaction: facts, digest, the parts' chains
  complete(change)  after the batch succeeded: what may only follow it (the receive
                    filter's; the send checks have nothing to do after the batch)

and, besides: `layout` (its chains in the table, at install), `ready` (its own kernel
objects are there, so the table's digest may be trusted), `check` (read-back: the facts it
enforces), `refresh`/`follow` (a link event, a first apply, an audit), `counters`, `drops`
(per port and reason, given the table's counters), `remove`
and `close`. Parts read the desired facts from the back end's `FactsIndex` (`want`). A part
does nothing it does not own. May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from hostvlan.datapath.base import PortCounters
from hostvlan.model.facts import Facts, FactsDelta, FactsIndex
from hostvlan.model.ids import PortName

Rule = list[dict[str, Any]]
Undo = Callable[[], None]


@dataclass(frozen=True)
class Change:
    """One transaction of the bridge back end: `delta` relative to what the kernel holds;
    `fresh` for an install (the table is created anew holding exactly `delta.add`)."""

    delta: FactsDelta
    fresh: bool

    def added(self) -> Facts:
        """What an install installs."""
        d = self.delta
        return Facts(
            known=frozenset(d.known.add),
            global_src=frozenset(d.global_src.add),
            ports=frozenset(d.ports.add),
            global_ports=frozenset(d.global_ports.add),
            uplinks=frozenset(d.uplinks.add),
            bound=frozenset(d.bound.add),
            pairs=frozenset(d.pairs.add),
        )


@dataclass
class Layout:
    """The chains of the table `bridge hostvlan`: base chains (name -> hook, in order), regular
    chains, the rules of each, and the sets of a part's own (name -> type, created first)."""

    hooks: dict[str, str] = field(default_factory=dict)
    regular: list[str] = field(default_factory=list)
    rules: dict[str, list[Rule]] = field(default_factory=dict)
    sets: dict[str, str] = field(default_factory=dict)


class SendCheck(Protocol):
    name: str  # `locked` | `nft`, as the agent's options name it
    """Drops a frame whose source MAC is not the bound vNIC's of the port it enters by
    (`Facts.send`)."""

    def layout(self, layout: Layout) -> None: ...

    def check(self, facts: Facts) -> Facts: ...

    def prepare(self, change: Change) -> Undo | None: ...

    def refresh(self, want: FactsIndex) -> tuple[int, Mapping[PortName, int] | None]: ...

    def drops(self, table: Mapping[str, PortCounters]) -> dict[tuple[str, str], int]: ...

    def remove(self) -> None: ...

    def close(self) -> None: ...


class ReceiveFilter(Protocol):
    name: str  # `tc` | `nft`, as the agent's options name it
    """Drops a frame copy the output port's vNIC may not receive (`Facts.receive`)."""

    def layout(self, layout: Layout) -> None: ...

    def ready(self) -> bool: ...

    def check(self, facts: Facts) -> Facts | None: ...

    def prepare(self, change: Change) -> Undo | None: ...

    def complete(self, change: Change, want: FactsIndex) -> None: ...

    def follow(self, links: Mapping[PortName, int] | None, want: FactsIndex) -> int: ...

    def counters(self, table: dict[str, PortCounters]) -> dict[str, PortCounters]: ...

    def drops(self, table: Mapping[str, PortCounters]) -> dict[tuple[str, str], int]: ...

    def remove(self) -> None: ...

    def close(self) -> None: ...
