"""The control daemon's sync loop.

    connect to the manager's feed ──► snapshot at R ──► desired view ──► back end (sync, apply)
                   ▲                  deltas R+1…  ──►  (incremental)  ──► report applied revision
                   └── reconnect with backoff; the data path keeps enforcing the last view

Invariants:
- at start the back end's kernel state is left as it is (never flushed); a host with no
  hostvlan objects gets them installed EMPTY, i.e. closed, until the first snapshot;
- the view only changes by a whole snapshot or by the next delta in order, so what the
  kernel enforces is always the manager's view at some revision (plus local ports);
- a failed apply marks the daemon out of sync and retries with backoff; it never
  continues silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hostvlan import wire
from hostvlan.agent.ports import LinkWatcher, find_ports, guard_macvtaps, link_mac, links
from hostvlan.datapath.base import ApplyReport, DatapathError, TenantFilter
from hostvlan.model.datacenter import HostDelta, apply_delta
from hostvlan.model.hostview import HostView, filter_state
from hostvlan.model.ids import HostId, Mac, PortName

log = logging.getLogger("hostvlan.agent")


@dataclass
class AgentConfig:
    manager: str
    host: HostId
    token: str
    uplinks: dict[PortName, Mac]
    cacert: str | None = None
    audit_interval: float = 60.0
    backoff_max: float = 5.0
    ready_file: Path | None = None
    guard_macvtaps: bool = False  # macvtap back end: the agent keeps unbound macvtaps down
    # where vNIC ports are found: None = this namespace's links (libvirt taps, macvtaps);
    # else a function giving vNIC MAC -> port (e.g. OVSDB's external_ids:attached-mac)
    port_source: Callable[[], dict[Mac, PortName]] | None = None
    poll_ports: float = 0.0  # > 0: also look for new ports this often (OVSDB has no netlink event)


@dataclass
class AgentState:
    view: HostView | None = None
    revision: int = 0  # revision of the view the data path enforces
    ports: dict[Mac, PortName] = field(default_factory=dict)
    synced: bool = False


class Agent:
    def __init__(self, config: AgentConfig, backend: TenantFilter) -> None:
        self.cfg = config
        self.backend = backend
        self.state = AgentState()
        self._links_changed = asyncio.Event()
        self._status_task: asyncio.Task[None] | None = None
        self._status_client: httpx.AsyncClient | None = None  # one, kept alive: reports are frequent
        self._ssl: ssl.SSLContext | None = None  # built once: loading a CA store costs ~25 ms of CPU
        self._stopping = False
        self._snapshots_seen = 0

    # ----- desired state -------------------------------------------------------------------
    async def _rescan_ports(self) -> bool:
        view = self.state.view
        if view is None:
            return False
        if self.cfg.port_source is not None:
            attached = await asyncio.to_thread(self.cfg.port_source)
            found = {m: p for m, p in attached.items() if m in view.local and p not in self.cfg.uplinks}
        else:
            found = find_ports(view.local, await asyncio.to_thread(links), exclude=self.cfg.uplinks)
        if found != self.state.ports:
            self.state.ports = found
            return True
        return False

    async def _program_full(self) -> ApplyReport:
        assert self.state.view is not None
        self.backend.sync(filter_state(self.state.view, self.state.ports, self.cfg.uplinks))
        return await self._guarded_apply()

    async def _program_delta(self, delta: HostDelta) -> None:
        """Push one delta as element changes; bindings are recomputed only when local vNICs moved."""
        uplink_macs = set(self.cfg.uplinks.values())
        for mac in delta.removed:
            if mac not in uplink_macs:
                self.backend.del_entry(mac)
        for mac, lnids in delta.entries.items():
            if mac not in uplink_macs:
                self.backend.set_entry(mac, lnids)
        if delta.local or delta.unlocal:
            await self._rescan_ports()
            assert self.state.view is not None
            self.backend.sync(filter_state(self.state.view, self.state.ports, self.cfg.uplinks))
        await self._guarded_apply()

    async def _guarded_apply(self) -> ApplyReport:
        """Apply; with macvtap ports, unbound macvtaps go down before and bound ones come up after."""
        if not self.cfg.guard_macvtaps:
            return self._apply()
        await self._guard("down")
        rep = self._apply()
        await self._guard("up")
        return rep

    async def _guard(self, phase: str) -> None:
        bound = set(self.backend.state().bindings)
        changed = await asyncio.to_thread(guard_macvtaps, bound, phase)
        if changed:
            log.info("macvtap contract: %s", ", ".join(changed))

    def _apply(self) -> ApplyReport:
        t = time.perf_counter()
        rep = self.backend.apply()
        log.debug(
            "applied r%d: %d elements in %.1f ms", self.state.revision, rep.elements, (time.perf_counter() - t) * 1000
        )
        return rep

    # ----- feed ------------------------------------------------------------------------------
    async def handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == "snapshot":
            self.state.view = wire.decode_snapshot(self.cfg.host, msg)
            self.state.revision = int(msg["revision"])
            await self._rescan_ports()
            rep = await self._program_full()
            self.state.synced = True
            self._snapshots_seen += 1
            log.info(
                "snapshot enforced: r%d, %d element changes%s",
                self.state.revision,
                rep.elements,
                " (reconciled with what the kernel held)" if rep.full else "",
            )
        elif kind == "delta":
            if self.state.view is None:
                raise RuntimeError("delta before snapshot")
            delta = wire.decode_delta(msg)
            self.state.view = apply_delta(self.state.view, delta)
            self.state.revision = int(msg["revision"])
            await self._program_delta(delta)
        else:
            return
        self._report()

    def _report(self) -> None:
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.get_running_loop().create_task(self._post_status())

    async def _post_status(self) -> None:
        sent = -1
        while sent != self.state.revision:
            sent = self.state.revision
            try:
                if self._status_client is None:
                    self._status_client = self._client()
                await self._status_client.post(f"/v1/hosts/{self.cfg.host}/status", json={"revision": sent})
            except httpx.HTTPError as exc:
                log.warning("status report failed: %s", exc)
                return

    def _client(self, timeout: httpx.Timeout | None = None) -> httpx.AsyncClient:
        if self._ssl is None:
            cacert = self.cfg.cacert
            self._ssl = ssl.create_default_context(cafile=cacert) if cacert else httpx.create_ssl_context()
        return httpx.AsyncClient(
            base_url=self.cfg.manager,
            headers={"Authorization": f"Bearer {self.cfg.token}"},
            verify=self._ssl,
            timeout=timeout or httpx.Timeout(10.0),
        )

    async def _follow_feed(self) -> None:
        url = f"/v1/hosts/{self.cfg.host}/feed"
        async with self._client(httpx.Timeout(10.0, read=60.0)) as client, client.stream("GET", url) as resp:
            if resp.status_code != 200:
                body = (await resp.aread()).decode(errors="replace")
                raise PermissionError(f"manager refused the feed ({resp.status_code}): {body}")
            log.info("connected to %s as %s", self.cfg.manager, self.cfg.host)
            async for line in resp.aiter_lines():
                if line.strip():
                    await self.handle(json.loads(line))

    # ----- main loop ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.backend.install_if_absent():
            log.info("no tenant filter found: installed it empty (closed) until the first snapshot")
        else:
            log.info("kept the tenant filter the kernel already enforces until the first snapshot")

        def links_changed() -> None:
            loop.call_soon_threadsafe(self._links_changed.set)

        watcher = LinkWatcher(links_changed)
        watcher.start()
        tasks = [loop.create_task(self._watch_links()), loop.create_task(self._audit_loop())]
        if self.cfg.poll_ports > 0:
            tasks.append(loop.create_task(self._poll_ports()))
        if self.cfg.ready_file:
            self.cfg.ready_file.write_text(json.dumps({"host": self.cfg.host}))
        backoff = 0.1
        try:
            while not self._stopping:
                try:
                    await self._follow_feed()
                    backoff = 0.1
                    log.warning("feed closed by the manager; reconnecting")
                except (httpx.HTTPError, OSError, json.JSONDecodeError) as exc:
                    log.warning("manager unreachable (%s); enforcing the last view (r%d)", exc, self.state.revision)
                except PermissionError as exc:
                    log.error("%s", exc)
                except DatapathError as exc:
                    log.error("data path rejected a change: %s; resyncing", exc)
                    self.state.synced = False
                if self._snapshots_seen:  # the connection worked: the next outage starts the backoff anew
                    self._snapshots_seen = 0
                    backoff = 0.1
                await asyncio.sleep(backoff * (0.5 + random.random()))
                backoff = min(self.cfg.backoff_max, backoff * 2)
        finally:
            watcher.stop()
            for t in tasks:
                t.cancel()
            if self._status_client is not None:
                await self._status_client.aclose()

    async def _watch_links(self) -> None:
        while True:
            await self._links_changed.wait()
            self._links_changed.clear()
            await asyncio.sleep(0.01)  # coalesce bursts of link events
            if self.state.view is None:
                continue
            try:
                if await self._rescan_ports():
                    await self._program_full()
                    log.info("ports now: %s", {str(m): str(p) for m, p in self.state.ports.items()})
                elif self.backend.refresh_ports():
                    log.info("port numbers refreshed")
                if self.cfg.guard_macvtaps:
                    await self._guard("down")
                    await self._guard("up")
            except DatapathError as exc:
                log.error("binding ports failed: %s", exc)

    async def _poll_ports(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_ports)
            self._links_changed.set()

    async def _audit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.audit_interval)
            if not self.state.synced:
                continue
            try:
                rep = self.backend.audit()
                if rep.elements:
                    log.warning("audit repaired %d drifted elements", rep.elements)
            except DatapathError as exc:
                log.error("audit failed: %s", exc)


def uplinks_from_args(specs: tuple[str, ...]) -> dict[PortName, Mac]:
    """`NAME` or `NAME=MAC`; a missing MAC is read from the link."""
    from hostvlan.model.ids import parse_mac, parse_port

    out: dict[PortName, Mac] = {}
    for spec in specs:
        name, _, mac = spec.partition("=")
        port = parse_port(name)
        got = parse_mac(mac) if mac else link_mac(port)
        if got is None:
            raise ValueError(f"uplink {port} not found in this network namespace")
        out[port] = got
    return out


__all__ = ["Agent", "AgentConfig"]
