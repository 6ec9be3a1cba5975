"""The back-end contract: queue changes, then one `apply()`.

A back end enforces one host's FilterState in its virtual switch. Callers queue
desired changes (`sync` a whole state, or `set_entry`/`del_entry`/`bind`/`unbind`),
then call `apply()`, which pushes everything queued as ONE kernel transaction:

- the first `apply()` of a process reads back what the kernel already enforces and
  applies only the difference (an agent restart never flushes, never opens the filter);
- later `apply()`s push just the element changes the model computed (`FactsIndex`);
- a failed `apply()` raises `DatapathError` and changes nothing in the kernel (each back
  end documents why); the next `apply()` reconciles from a fresh read-back.

Back ends never re-derive the semantics: they enforce `hostvlan.model.facts.Facts`.
Atomicity per back end:
- `nft_bridge`: one nftables batch (libnftables JSON) = one netlink transaction.
- `memory`: a reference in Python, for tests.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass

from hostvlan.model.facts import Facts, FactsDelta, FactsIndex, diff_facts
from hostvlan.model.ids import Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding


class DatapathError(RuntimeError):
    """Programming the data path failed; the kernel kept its previous state."""


@dataclass(frozen=True)
class PortCounters:
    rx_dropped: int = 0  # frames the receive filter kept from this port
    tx_dropped: int = 0  # frames from this port dropped by the send check


@dataclass(frozen=True)
class ApplyReport:
    elements: int  # set elements added + removed in the transaction
    full: bool  # True when this apply reconciled against a read-back


class TenantFilter(abc.ABC):
    """Base of every back end: keeps the desired facts, pushes deltas (see module doc)."""

    def __init__(self) -> None:
        self._index = FactsIndex()
        self._reconcile = True

    # ----- queue -------------------------------------------------------------------
    def sync(self, state: FilterState) -> None:
        self._index.sync(state)

    def set_entry(self, mac: Mac, lnids: Iterable[Lnid]) -> None:
        self._index.set_entry(mac, lnids)

    def del_entry(self, mac: Mac) -> None:
        self._index.del_entry(mac)

    def bind(self, binding: PortBinding) -> None:
        self._index.bind(binding)

    def unbind(self, port: PortName) -> None:
        self._index.unbind(port)

    def state(self) -> FilterState:
        return self._index.state()

    def desired(self) -> Facts:
        return self._index.facts()

    # ----- apply -------------------------------------------------------------------
    def apply(self) -> ApplyReport:
        delta = self._index.take_delta()
        try:
            if self._reconcile:
                actual = self.read()
                delta = diff_facts(actual, self._index.facts())
                if actual is None:
                    self._install(delta)
                elif delta:
                    self._commit(delta)
                self._reconcile = False
                return ApplyReport(delta.size(), full=True)
            if delta:
                self._commit(delta)
            return ApplyReport(delta.size(), full=False)
        except BaseException:
            self._reconcile = True
            raise

    # ----- what each back end provides -------------------------------------------------
    @abc.abstractmethod
    def read(self) -> Facts | None:
        """What the kernel enforces now; None when hostvlan's objects are absent."""

    @abc.abstractmethod
    def _install(self, delta: FactsDelta) -> None:
        """Create hostvlan's objects holding `delta.add`, atomically (fail closed from the start)."""

    @abc.abstractmethod
    def _commit(self, delta: FactsDelta) -> None:
        """Apply element changes as one transaction."""

    @abc.abstractmethod
    def counters(self) -> dict[str, PortCounters]:
        """Drop counters per port name (plus back-end specific buckets for unbound ports)."""

    def remove(self) -> None:
        """Remove every object of hostvlan's from the switch (idempotent).

        The desired state is kept: the next `apply()` reinstalls it from scratch.
        """
        self._remove()
        self._reconcile = True

    @abc.abstractmethod
    def _remove(self) -> None:
        """Delete hostvlan's objects, atomically; absent objects are not an error."""
