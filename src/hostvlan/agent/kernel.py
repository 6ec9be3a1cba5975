"""The agent's kernel side: every back-end call and link read, on ONE worker thread.

The event loop (feed, heartbeat, status reports) never waits on the kernel: it hands a
job to `KernelWorker.run`, which runs it on the worker thread the agent owns, so back-end
calls never overlap and a slow `ovs-ofctl` or netlink dump stalls nothing but the next
job. A job either completes or raises (`DatapathError`, `OSError`, `NetlinkError`); the
back end guarantees a failed apply left the kernel as it was, and the caller retries.

Everything here runs on the worker thread only; its state (`enforce`) is the worker's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from hostvlan.agent import ports
from hostvlan.datapath.base import ApplyReport, DatapathError, TenantFilter
from hostvlan.model.datacenter import HostDelta
from hostvlan.model.hostview import HostView, PortBindings, PortSeen, bind_ports, bound_state
from hostvlan.model.ids import Mac, PortName

log = logging.getLogger("hostvlan.agent")

T = TypeVar("T")

Links = Mapping[PortName, tuple[Mac, str]]


@dataclass(frozen=True)
class Outcome:
    """What one job did: the apply's report (None: nothing applied) and the vNICs' bindings."""

    report: ApplyReport | None
    bindings: PortBindings | None


class KernelWorker:
    """Owns the back end and the one thread that touches it and the host's links."""

    def __init__(
        self,
        backend: TenantFilter,
        uplinks: Mapping[PortName, Mac],
        *,
        read_links: Callable[[], Links] | None = None,
        port_source: Callable[[], dict[Mac, PortName]] | None = None,
        guard_macvtaps: bool = False,
    ) -> None:
        self.backend = backend
        self.uplinks = dict(uplinks)
        self._read_links = read_links or ports.links
        self._port_source = port_source
        self._guard_macvtaps = guard_macvtaps
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hostvlan-kernel")
        self.enforce: dict[Mac, PortName] | None = None  # vNIC -> port the filter binds (None: not synced)

    async def run(self, job: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, job, *args)

    def close(self) -> None:
        """Wait for the job in flight (a kernel transaction is never cut short), then stop."""
        self._pool.shutdown(wait=True)

    # ----- jobs (worker thread) ---------------------------------------------------------------
    def install(self) -> bool:
        return self.backend.install_if_absent()

    def full(self, view: HostView) -> Outcome:
        """Re-discover ports, queue the whole view, apply (reconciling if the back end must)."""
        bindings = self._bind(view)
        self.backend.sync(bound_state(view, bindings, self.uplinks))
        self.enforce = bindings.enforce
        return Outcome(self._guarded_apply(), bindings)

    def delta(self, view: HostView, delta: HostDelta) -> Outcome:
        """Queue one (merged) delta as element changes; bindings only when local vNICs moved."""
        uplink_macs = set(self.uplinks.values())
        for mac in delta.removed:
            if mac not in uplink_macs:
                self.backend.del_entry(mac)
        for mac, lnids in delta.entries.items():
            if mac not in uplink_macs:
                self.backend.set_entry(mac, lnids)
        for mac, addrs in delta.addresses.items():  # the address guard's (issue 13)
            if mac not in uplink_macs:
                self.backend.set_addrs(mac, addrs)
        bindings = None
        if delta.local or delta.unlocal:
            bindings = self._bind(view)
            if bindings.enforce != self.enforce:
                self.backend.sync(bound_state(view, bindings, self.uplinks))
                self.enforce = bindings.enforce
        return Outcome(self._guarded_apply(), bindings)

    def links(self, view: HostView) -> Outcome:
        """A link came, went or changed (or the OVS poll): rebind, or refresh port numbers."""
        bindings = self._bind(view)
        rep = None
        if bindings.enforce != self.enforce:
            self.backend.sync(bound_state(view, bindings, self.uplinks))
            self.enforce = bindings.enforce
            rep = self._guarded_apply()
            log.info("ports now: %s", {str(m): str(p) for m, p in bindings.enforce.items()})
        else:
            if self.backend.refresh_ports():
                log.info("port numbers refreshed")
            if self._guard_macvtaps:
                self._guard("down")
                self._guard("up")
        return Outcome(rep, bindings)

    def audit(self) -> ApplyReport:
        return self.backend.audit()

    # ----- helpers ----------------------------------------------------------------------------
    def _bind(self, view: HostView) -> PortBindings:
        found = self._read_links()
        if self._port_source is not None:  # OVS: the switch says which vNIC a port carries
            try:
                attached = self._port_source()
            except ValueError as exc:  # e.g. an attached-mac that is no MAC: say so, retry, never crash
                raise DatapathError(f"cannot read the switch's ports: {exc}") from exc
            seen = {p: PortSeen(None, "attached") for p in found}
            seen.update({p: PortSeen(m, "attached") for m, p in attached.items()})
            discovered = {m: p for m, p in attached.items() if m in view.local and p not in self.uplinks}
        else:
            seen = {p: PortSeen(mac, "same" if kind == "macvtap" else "tap") for p, (mac, kind) in found.items()}
            discovered = ports.find_ports(view.local, found, exclude=self.uplinks)
        return bind_ports(view, discovered, seen, self.uplinks)

    def _guarded_apply(self) -> ApplyReport:
        """Apply; with macvtap ports, unbound macvtaps go down before and bound ones come up after."""
        if not self._guard_macvtaps:
            return self._apply()
        self._guard("down")
        rep = self._apply()
        self._guard("up")
        return rep

    def _guard(self, phase: str) -> None:
        changed = ports.guard_macvtaps(set(self.backend.state().bindings), phase)
        if changed:
            log.info("macvtap contract: %s", ", ".join(changed))

    def _apply(self) -> ApplyReport:
        t = time.perf_counter()
        rep = self.backend.apply()
        log.debug("applied %d elements in %.1f ms", rep.elements, (time.perf_counter() - t) * 1000)
        return rep


__all__ = ["KernelWorker", "Outcome"]
