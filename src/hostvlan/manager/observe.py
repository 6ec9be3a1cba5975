"""Drops and status for operators: what each agent reports of its drops, and one summary.

Agents send `POST /v1/hosts/{H}/drops` (their own token; `agent.metrics.DropWatch`) with their
cumulative drop counters per (port, reason) and the drop events their data path sampled
since the last report. `DropLog` keeps, per host and in memory only (they are observations,
not state: a restarted manager starts empty and agents report again within seconds), the
latest counters, the totals per reason of the last ~2 minutes (for "drops in the last
minute"), and the last `EVENTS_KEPT` events, each numbered by the manager (`id`, increasing
per host) so a follower asks for those after the last it saw.

  GET /v1/hosts/{H}/drops?after=ID&reason=R   (admin) the events after ID, the counters
  GET /v1/status                              (admin) one screen of the whole data center

Both are served on the API listener with the admin token, not in the OpenAPI document
(docs/observability.md states them).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.params import Depends as DependsParam

from hostvlan.manager.service import InputError, Service
from hostvlan.model.datacenter import ModelError
from hostvlan.model.ids import HostId
from hostvlan.model.verdict import DROP_REASONS

EVENTS_KEPT = 1000  # per host
WINDOW_S = 60.0
EVENT_FIELDS = ("time", "port", "src", "dst", "ethertype", "reason")


@dataclass
class HostDrops:
    counters: dict[tuple[str, str], int] = field(default_factory=dict)
    history: deque[tuple[float, dict[str, int]]] = field(default_factory=lambda: deque(maxlen=256))
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    next_id: int = 1
    reported_at: float = 0.0
    since: float = 0.0  # when the agent started counting (its report's `since`; 0: unknown)

    def by_reason(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, reason), n in self.counters.items():
            out[reason] = out.get(reason, 0) + n
        return out

    def last_minute(self, now: float) -> dict[str, int]:
        """Drops per reason since the last report a minute old or older; with none, since the
        agent started if that is within the minute, else since its oldest report (a counter
        that went back, its data path reloaded, counts from zero)."""
        if not self.history:
            return {}
        older = [totals for t, totals in self.history if now - t >= WINDOW_S]
        if older:
            base = older[-1]
        elif now - self.since <= WINDOW_S:
            base = {}
        else:
            base = self.history[0][1]
        out = {}
        for reason, n in self.by_reason().items():
            d = n - base.get(reason, 0)
            d = n if d < 0 else d
            if d:
                out[reason] = d
        return out


def _str(raw: dict[str, Any], key: str, where: str) -> str:
    v = raw.get(key)
    if type(v) is not str or not v or len(v) > 64:
        raise InputError(f"{where}.{key}", "must be a non-empty string of at most 64 characters")
    return v


def _int(raw: dict[str, Any], key: str, where: str) -> int:
    v = raw.get(key)
    if type(v) is not int or v < 0:
        raise InputError(f"{where}.{key}", "must be a non-negative integer")
    return v


def _reason(raw: dict[str, Any], where: str) -> str:
    r = _str(raw, "reason", where)
    if r not in DROP_REASONS:
        raise InputError(f"{where}.reason", f"must be one of {', '.join(DROP_REASONS)}")
    return r


class DropLog:
    """The agents' drop reports, per host (see module doc)."""

    def __init__(self) -> None:
        self.hosts: dict[HostId, HostDrops] = {}

    def report(self, host: HostId, body: Any) -> int:
        """Take one report (its JSON body); returns the events taken."""
        if not isinstance(body, dict):
            raise InputError("body", "the body must be a JSON object {drops, events}")
        raw_drops, raw_events = body.get("drops", []), body.get("events", [])
        if not isinstance(raw_drops, list) or not isinstance(raw_events, list) or len(raw_events) > EVENTS_KEPT:
            raise InputError("body", f"drops and events must be lists (at most {EVENTS_KEPT} events)")
        counters: dict[tuple[str, str], int] = {}
        for i, d in enumerate(raw_drops):
            if not isinstance(d, dict):
                raise InputError(f"drops.{i}", "must be an object {port, reason, count}")
            counters[(_str(d, "port", f"drops.{i}"), _reason(d, f"drops.{i}"))] = _int(d, "count", f"drops.{i}")
        events = []
        for i, e in enumerate(raw_events):
            where = f"events.{i}"
            if not isinstance(e, dict) or type(e.get("time")) not in (int, float):
                raise InputError(where, "must be an object {time, port, src, dst, ethertype, reason}")
            events.append(
                {
                    "time": float(e["time"]),
                    "port": _str(e, "port", where),
                    "src": _str(e, "src", where),
                    "dst": _str(e, "dst", where),
                    "ethertype": _int(e, "ethertype", where),
                    "reason": _reason(e, where),
                }
            )
        now = time.time()
        h = self.hosts.setdefault(host, HostDrops())
        h.counters = counters
        h.reported_at = now
        since = body.get("since")
        if isinstance(since, int | float) and not isinstance(since, bool):
            h.since = float(since)
        h.history.append((now, h.by_reason()))
        while len(h.history) > 1 and now - h.history[1][0] > WINDOW_S:
            h.history.popleft()  # keep one report older than the window: the baseline
        for e in events:
            h.events.append({"id": h.next_id, "host": host, **e})
            h.next_id += 1
        return len(events)

    def events(self, host: HostId, after: int, reason: str | None) -> dict[str, Any]:
        h = self.hosts.get(host)
        if h is None:
            return {"host": host, "events": [], "last": after, "counters": [], "reported_at": None}
        evs = [e for e in h.events if e["id"] > after and (reason is None or e["reason"] == reason)]
        return {
            "host": host,
            "events": evs,
            "last": max(after, h.next_id - 1),
            "counters": [{"port": p, "reason": r, "count": n} for (p, r), n in sorted(h.counters.items())],
            "reported_at": h.reported_at,
        }

    def forget(self, host: HostId) -> None:
        self.hosts.pop(host, None)


def status(service: Service, log: DropLog) -> dict[str, Any]:
    """`hostvlan status`: hosts in sync or lagging, drops per reason in the last minute, the
    manager's revision and store."""
    now = time.time()
    hosts = []
    total: dict[str, int] = {}
    for row in service.hosts():
        h = log.hosts.get(HostId(row["name"]))
        minute = h.last_minute(now) if h is not None else {}
        for r, n in minute.items():
            total[r] = total.get(r, 0) + n
        hosts.append({**row, "drops_last_minute": minute, "drops_reported_at": h.reported_at if h else None})
    store = service.store
    return {
        "revision": service.revision,
        "store": {"kind": type(store).__module__.rsplit(".", 1)[-1], "path": str(getattr(store, "path", ""))},
        "hosts": hosts,
        "summary": {
            "hosts": len(hosts),
            "connected": sum(1 for h in hosts if h["connected"]),
            "in_sync": sum(1 for h in hosts if h["in_sync"]),
            "lagging": sorted(h["name"] for h in hosts if not h["in_sync"]),
        },
        "drops_last_minute": dict(sorted(total.items())),
    }


def install(app: FastAPI, service: Service, admin: DependsParam, host_auth: Any) -> DropLog:
    """Add the routes of the module doc to the manager's app; returns the log they share."""
    log = DropLog()

    @app.post("/v1/hosts/{name}/drops", include_in_schema=False)
    async def drops_report(request: Request, host: HostId = Depends(host_auth)) -> dict[str, Any]:  # noqa: B008
        if not service.knows_host(host):
            raise ModelError(f"unknown host {host!r}", "not_found")
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise InputError("body", "malformed JSON") from None
        return {"ok": True, "events": log.report(host, body)}

    @app.get("/v1/hosts/{name}/drops", dependencies=[admin], include_in_schema=False)
    async def drops_events(name: str, after: int = Query(0, ge=0), reason: str | None = Query(None)) -> dict[str, Any]:
        if not service.knows_host(name):
            raise ModelError(f"unknown host {name!r}", "not_found")
        if reason is not None and reason not in DROP_REASONS:
            raise InputError("reason", f"must be one of {', '.join(DROP_REASONS)}")
        return log.events(HostId(name), after, reason)

    @app.get("/v1/status", dependencies=[admin], include_in_schema=False)
    async def status_view() -> dict[str, Any]:
        return status(service, log)

    return log


__all__ = ["DropLog", "install", "status"]
