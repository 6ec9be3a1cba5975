"""The back-end contract: queue changes, then one `apply()`.

A back end enforces one host's FilterState in its virtual switch. Callers queue desired
changes (`sync` a whole state, or `set_entry`/`del_entry`/`bind`/`unbind`), then call
`apply()`, which pushes everything queued as ONE kernel transaction. Back ends never
re-derive the semantics: they enforce `hostvlan.model.facts.Facts`.

What every back end guarantees:
- restart without a gap: the first `apply()` of a process reconciles with what the kernel
  already enforces and applies only the difference (never flushes, never opens); where a
  digest of the facts is kept beside them (`_kernel_digest`), agreeing digests skip the
  read-back; later `apply()`s push only the model's element changes (`FactsIndex`);
- atomic or stricter: a failed `apply()` raises `DatapathError` and leaves the kernel with
  the facts it had, or with a stricter filter; the next `apply()` reconciles from a fresh
  read-back. `audit()` always reads everything back and repairs drift;
- fail closed: `install_if_absent()` installs hostvlan's objects EMPTY, dropping everything,
  and any subset of hostvlan's objects is at most as permissive as the whole.

How each back end keeps them:
- `bridge` (Linux bridge, `bridge.backend.BridgeFilter`): one nftables batch (libnftables
  JSON = one netlink transaction) holds the facts, their digest and the chains of the parts
  it is composed of, a send check (`locked`: the bridge's locked ports and sticky FDB
  entries over netlink; or `nft`) and a receive filter (`tc`: eBPF maps and programs; or
  `nft`). Netlink and BPF writes have no transaction: a part writes what tightens before the
  batch and what loosens after it, and undoes its additions if the batch fails.
- `macvtap`: one nftables batch in the netdev family (chains per macvtap, shared sets).
- `ovs`: one OpenFlow bundle (`ovs-ofctl bundle`, atomic and ordered) per apply.
- `memory`: a reference in Python, for tests.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from dataclasses import dataclass

from hostvlan.model.addresses import Addrs
from hostvlan.model.facts import Facts, FactsDelta, FactsIndex, delta_digest, diff_facts, facts_digest
from hostvlan.model.guardfacts import GuardFacts, compile_guard
from hostvlan.model.ids import Lnid, Mac, PortName
from hostvlan.model.ports import FilterState, PortBinding

UNBOUND_PORT_NAME = "(unbound)"  # drops(): frames of ports without a binding, where the port is unnamed


class DatapathError(RuntimeError):
    """Programming the data path failed; the kernel kept its previous state (or a stricter one).

    `errno` is the kernel's (or libc's) error number where the cause has one, so callers match
    on it (`exc.errno == errno.ENOENT`), never on the message text.
    """

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class PortCounters:
    rx_dropped: int = 0  # frames the receive filter kept from this port
    tx_dropped: int = 0  # frames from this port dropped by the send check


@dataclass(frozen=True)
class DropEvent:
    """One dropped frame a back end sampled (`TenantFilter.drop_events`): `seq` orders them (per
    back end object's data path), `time` is Unix time, `port` as in `drops()`."""

    seq: int
    time: float
    port: str
    src: Mac
    dst: Mac
    ethertype: int
    reason: str


@dataclass(frozen=True)
class ApplyReport:
    elements: int  # set elements added + removed in the transaction
    full: bool  # True when this apply reconciled against a read-back


class TenantFilter(abc.ABC):
    """Base of every back end: keeps the desired facts, pushes deltas (see module doc)."""

    def __init__(self) -> None:
        self._index = FactsIndex()
        self._reconcile = True
        self._digest = 0  # digest of the facts committed to the kernel (valid once reconciled)
        self._addrs: dict[Mac, Addrs] = {}  # FilterState.addresses: what the address guard compiles
        self._guard_rev = 0  # bumped by every queued change (a back end's guard recompiles when it moved)

    # ----- queue -------------------------------------------------------------------
    def sync(self, state: FilterState) -> None:
        self._index.sync(state)
        self._addrs = {m: a for m, a in state.addresses.items() if a.guarded}
        self._guard_rev += 1

    def set_entry(self, mac: Mac, lnids: Iterable[Lnid]) -> None:
        self._index.set_entry(mac, lnids)
        self._guard_rev += 1

    def set_addrs(self, mac: Mac, addrs: Addrs) -> None:
        """Queue the addresses of `mac` (unguarded `Addrs()`: none), for the address guard."""
        if addrs.guarded:
            self._addrs[mac] = addrs
        else:
            self._addrs.pop(mac, None)
        self._guard_rev += 1

    def del_entry(self, mac: Mac) -> None:
        self._index.del_entry(mac)
        self._addrs.pop(mac, None)
        self._guard_rev += 1

    def bind(self, binding: PortBinding) -> None:
        self._index.bind(binding)
        self._guard_rev += 1

    def unbind(self, port: PortName) -> None:
        self._index.unbind(port)
        self._guard_rev += 1

    def state(self) -> FilterState:
        st = self._index.state()
        return FilterState(entries=st.entries, bindings=st.bindings, addresses=dict(self._addrs))

    def desired(self) -> Facts:
        return self._index.facts()

    def guard_facts(self) -> GuardFacts:
        """What the address guard enforces for the queued state (`model.guardfacts`)."""
        return compile_guard(self.state(), self._index)

    # ----- apply -------------------------------------------------------------------
    def apply(self) -> ApplyReport:
        delta = self._index.take_delta()
        try:
            if self._reconcile:
                desired = self._index.facts()
                want = facts_digest(desired)
                if self._kernel_digest() == want:
                    self._digest = want
                    self._reconcile = False
                    return ApplyReport(0, full=True)
                return self._repair(desired, want)
            if delta:
                digest = delta_digest(self._digest, delta)
                self._commit(delta, digest)
                self._digest = digest
            return ApplyReport(delta.size(), full=False)
        except BaseException:
            self._reconcile = True
            raise

    def attached_ports(self) -> dict[Mac, PortName] | None:
        """vNIC MAC -> port where the switch itself records which vNIC a port carries (OVSDB's
        `external_ids:attached-mac`); None where ports are found from the links (taps, macvtaps)."""
        return None

    def poll_interval(self) -> float:
        """Seconds between port re-scans for switches that send no netlink event (0: events suffice)."""
        return 0.0

    def close(self) -> None:
        """Release the kernel contexts this object holds (the kernel state stays as it is)."""
        return None

    def refresh_ports(self) -> int:
        """Re-read switch-specific port numbers of bound ports and fix their flows (back ends that
        match names directly, like nftables, have nothing to do). Returns the ports fixed."""
        return 0

    def install_if_absent(self) -> bool:
        """Install hostvlan's objects EMPTY (fail closed) when the switch has none; else touch nothing.

        An agent calls this at start, before it has a view: a fresh host drops everything
        until the first snapshot, and a host that already enforces a view keeps it.
        """
        if self._kernel_digest() is not None or self.read() is not None:
            return False
        self._install(FactsDelta(), facts_digest(FactsIndex().facts()))
        return True

    def audit(self) -> ApplyReport:
        """Read every element back and repair any drift (the report counts what was fixed)."""
        self._index.take_delta()  # queued changes are part of the desired facts below
        try:
            desired = self._index.facts()
            return self._repair(desired, facts_digest(desired))
        except BaseException:
            self._reconcile = True
            raise

    def _repair(self, desired: Facts, digest: int) -> ApplyReport:
        """Read everything back and apply the difference to `desired` (whose digest is `digest`)."""
        actual = self.read()
        delta = diff_facts(actual, desired)
        if actual is None:
            self._install(delta, digest)
        elif delta or self._kernel_digest() != digest:
            self._commit(delta, digest)
        self._digest = digest
        self._reconcile = False
        return ApplyReport(delta.size(), full=True)

    def _kernel_digest(self) -> int | None:
        """The digest stored beside the kernel's facts, if this back end keeps one."""
        return None

    # ----- what each back end provides -------------------------------------------------
    @abc.abstractmethod
    def read(self) -> Facts | None:
        """What the kernel enforces now; None when hostvlan's objects are absent."""

    @abc.abstractmethod
    def _install(self, delta: FactsDelta, digest: int) -> None:
        """Create hostvlan's objects holding `delta.add` (and `digest`), atomically, failing closed."""

    @abc.abstractmethod
    def _commit(self, delta: FactsDelta, digest: int) -> None:
        """Apply element changes and store the new `digest`, as one transaction."""

    @abc.abstractmethod
    def counters(self) -> dict[str, PortCounters]:
        """Drop counters per port name (plus back-end specific buckets for unbound ports)."""

    def drops(self) -> dict[tuple[str, str], int]:
        """Frames dropped since the objects were installed, per (port, reason code).

        `reason` is one of `hostvlan.model.verdict.DROP_REASONS`; `port` is the port a
        dropped frame came in by (send check, guard) or would have left by (receive filter),
        or `UNBOUND_PORT_NAME` for frames of ports hostvlan has no binding for. Counts are
        cumulative and read from the kernel; a back end that cannot count a reason omits it.
        """
        return {}

    def drop_events(self, after: int = 0) -> list[DropEvent]:
        """Individual drops the data path sampled (rate-limited, written on the drop path only),
        with `seq` above `after`, oldest first; a back end that samples none returns []."""
        return []

    def remove(self) -> None:
        """Remove every object of hostvlan's from the switch (idempotent).

        The desired state is kept: the next `apply()` reinstalls it from scratch.
        """
        self._remove()
        self._reconcile = True

    @abc.abstractmethod
    def _remove(self) -> None:
        """Delete hostvlan's objects, atomically; absent objects are not an error."""
