"""The wire format between manager and agents: feed lines and the status body (pure).

One module says what travels (docs/control-plane.md, "Agent feed"); the manager, the
agent, the simulator and the tests encode and decode through it. It imports only
`hostvlan.model` and the standard library, so it sits below both the manager and the
agent.

Feed (`GET /v1/hosts/{H}/feed`): JSON lines, each an object with a `type`:

    {"type":"snapshot","revision":R,"entries":{MAC:[LNID,…]},"local":{MAC:PORT|null},"addrs":{MAC:TEXT}}
    {"type":"delta","revision":R,"entries":{…},"removed":[MAC,…],"local":{…},"unlocal":[MAC,…],"addrs":{…}}
    {"type":"heartbeat","revision":R}

A delta leaves out its empty fields. LNIDs are integers, `global` the string "global".
`addrs` (issue 13) holds the addresses of entries of the line, one compact string per MAC
(`model.addresses.addrs_text`: `"10.0.0.1 fd00::1"`, a shared net prefixed `~`, roles
`+router` `+dhcp_server`); a snapshot lists the MACs that have some and leaves `addrs` out
when none has; a delta lists the MACs whose addresses changed or whose entry is new to the
view, "" meaning none any more. A line without `addrs` (an older manager) carries none.
Lines of an unknown type are skipped by readers (`decode_feed` gives None), so the
manager may add kinds without breaking old agents.

Status (`POST /v1/hosts/{H}/status`): `{"revision":R,"in_sync":bool,"error":str|null,
"bindings":{MAC:{"port":str|null,"state":"bound"|"unbound","reason":str|null}}}`;
`in_sync` defaults to true, `error` to null, and no `bindings` means "unchanged since
this agent's last report" (old agents send only `revision`).

Two levels of decoding: `decode_feed` checks a line's shape and hands the JSON values
as they are (cheap: the simulator runs thousands of agents on it); `snapshot_view` and
`host_delta` turn them into model values for a real agent. The manager's feed has its
own fast encoder that shares bytes between hosts (`manager/feed.py`); `encode_snapshot`
and `encode_delta` here are the reference it is tested against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hostvlan.model.addresses import AddressError, Addrs, addrs_text, parse_addrs_text
from hostvlan.model.datacenter import HostDelta
from hostvlan.model.hostview import HostView
from hostvlan.model.ids import GLOBAL, HostId, InvalidValue, Lnid, Mac, PortName, parse_lnid

SNAPSHOT = "snapshot"
DELTA = "delta"
HEARTBEAT = "heartbeat"

LnidJson = int | str
"""An LNID on the wire: its integer, or "global"."""


class WireError(ValueError):
    """A line or body that does not follow the format; `field` names the part that is wrong."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def lnid_json(lnid: Lnid) -> LnidJson:
    return "global" if lnid == GLOBAL else int(lnid)


def lnids_json(lnids: frozenset[Lnid]) -> list[LnidJson]:
    return [lnid_json(x) for x in sorted(lnids)]


def dumps(value: Any) -> bytes:
    """Compact JSON, as every line and body is sent."""
    return json.dumps(value, separators=(",", ":")).encode()


# ----- feed: encoding (reference) ----------------------------------------------------------------
def encode_snapshot(view: HostView, revision: int) -> bytes:
    msg: dict[str, Any] = {
        "type": SNAPSHOT,
        "revision": revision,
        "entries": {m: lnids_json(ls) for m, ls in view.entries.items()},
        "local": dict(view.local),
    }
    if view.addresses:
        msg["addrs"] = {m: addrs_text(a) for m, a in view.addresses.items()}
    return dumps(msg) + b"\n"


def encode_delta(delta: HostDelta, revision: int) -> bytes:
    msg: dict[str, Any] = {"type": DELTA, "revision": revision}
    if delta.entries:
        msg["entries"] = {m: lnids_json(ls) for m, ls in delta.entries.items()}
    if delta.removed:
        msg["removed"] = sorted(delta.removed)
    if delta.local:
        msg["local"] = dict(delta.local)
    if delta.unlocal:
        msg["unlocal"] = sorted(delta.unlocal)
    if delta.addresses:
        msg["addrs"] = {m: addrs_text(a) for m, a in delta.addresses.items()}
    return dumps(msg) + b"\n"


def encode_heartbeat(revision: int) -> bytes:
    return b'{"type":"heartbeat","revision":%d}\n' % revision


# ----- feed: decoding ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Snapshot:
    """A snapshot line as JSON values: entries MAC -> [LNID, …], local MAC -> port or None."""

    revision: int
    entries: dict[str, list[LnidJson]]
    local: dict[str, str | None]
    addrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """A delta line as JSON values (absent fields empty)."""

    revision: int
    entries: dict[str, list[LnidJson]]
    removed: list[str]
    local: dict[str, str | None]
    unlocal: list[str]
    addrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Heartbeat:
    revision: int


FeedMessage = Snapshot | Delta | Heartbeat


def _get(msg: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = msg.get(key, default)
    if not isinstance(value, kind):
        raise WireError(key, f"must be a JSON {'object' if kind is dict else 'array'}")
    return value


def _revision(msg: Mapping[str, Any]) -> int:
    value = msg.get("revision")
    if type(value) is not int or value < 0:
        raise WireError("revision", f"must be a non-negative integer, got {value!r}")
    return value


def decode_feed(msg: Any) -> FeedMessage | None:
    """One feed line, already parsed from JSON; None for a type this reader does not know."""
    if not isinstance(msg, dict):
        raise WireError("line", "a feed line must be a JSON object")
    kind = msg.get("type")
    if kind == DELTA:
        return Delta(
            _revision(msg),
            _get(msg, "entries", dict, {}),
            _get(msg, "removed", list, []),
            _get(msg, "local", dict, {}),
            _get(msg, "unlocal", list, []),
            _get(msg, "addrs", dict, {}),
        )
    if kind == SNAPSHOT:
        return Snapshot(
            _revision(msg), _get(msg, "entries", dict, {}), _get(msg, "local", dict, {}), _get(msg, "addrs", dict, {})
        )
    if kind == HEARTBEAT:
        return Heartbeat(_revision(msg))
    if not isinstance(kind, str):
        raise WireError("type", "a feed line needs a string `type`")
    return None


def decode_line(line: bytes | str) -> FeedMessage | None:
    """`decode_feed` of one raw line."""
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise WireError("line", f"not JSON: {exc}") from None
    return decode_feed(msg)


_LNIDS: dict[tuple[LnidJson, ...], frozenset[Lnid]] = {}


def _lnids(raw: list[LnidJson]) -> frozenset[Lnid]:
    """LNID lists repeat (a tenant's VMs): parsed once, shared (a bounded cache)."""
    key = tuple(raw)
    got = _LNIDS.get(key)
    if got is None:
        try:
            got = frozenset(parse_lnid(x) for x in raw)
        except (InvalidValue, TypeError) as exc:
            raise WireError("entries", str(exc)) from None
        if len(_LNIDS) < 4096:
            _LNIDS[key] = got
    return got


def _local(raw: Mapping[str, str | None]) -> dict[Mac, PortName | None]:
    return {Mac(m): (PortName(p) if p else None) for m, p in raw.items()}


def _addrs(raw: Mapping[str, Any]) -> dict[Mac, Addrs]:
    out: dict[Mac, Addrs] = {}
    for m, text in raw.items():
        if type(text) is not str:
            raise WireError(f"addrs.{m}", f"must be a string of addresses, got {text!r}")
        try:
            out[Mac(m)] = parse_addrs_text(text)
        except AddressError as exc:
            raise WireError(f"addrs.{m}", str(exc)) from None
    return out


def snapshot_view(host: HostId, snap: Snapshot) -> HostView:
    entries = {Mac(m): _lnids(ls) for m, ls in snap.entries.items()}
    addresses = {m: a for m, a in _addrs(snap.addrs).items() if a.nets or a.router or a.dhcp_server}
    return HostView(host, entries, _local(snap.local), addresses)


def host_delta(delta: Delta) -> HostDelta:
    return HostDelta(
        entries={Mac(m): _lnids(ls) for m, ls in delta.entries.items()},
        removed={Mac(m) for m in delta.removed},
        local=_local(delta.local),
        unlocal={Mac(m) for m in delta.unlocal},
        addresses=_addrs(delta.addrs),
    )


def decode_snapshot(host: HostId, msg: Mapping[str, Any]) -> HostView:
    """The host view a snapshot line (parsed JSON) carries."""
    got = decode_feed(dict(msg))
    if not isinstance(got, Snapshot):
        raise WireError("type", f"expected a snapshot, got {msg.get('type')!r}")
    return snapshot_view(host, got)


def decode_delta(msg: Mapping[str, Any]) -> HostDelta:
    """The host delta a delta line (parsed JSON) carries."""
    got = decode_feed(dict(msg))
    if not isinstance(got, Delta):
        raise WireError("type", f"expected a delta, got {msg.get('type')!r}")
    return host_delta(got)


# ----- status ------------------------------------------------------------------------------------
BindingState = Literal["bound", "unbound"]


@dataclass(frozen=True)
class Binding:
    """How the agent enforces one local vNIC: on `port` (bound), or not and why (unbound)."""

    port: PortName | None
    state: BindingState
    reason: str | None = None

    @property
    def bound(self) -> bool:
        return self.state == "bound"


@dataclass(frozen=True)
class Status:
    revision: int
    in_sync: bool = True
    error: str | None = None
    bindings: Mapping[Mac, Binding] | None = None  # None: unchanged since the last report


def encode_status(status: Status) -> dict[str, Any]:
    """The status body as a JSON object (send it with `dumps` or an HTTP client's json=). The
    defaults are left out (`in_sync` true, no `error`): the common report is `{"revision": R}`."""
    out: dict[str, Any] = {"revision": status.revision}
    if not status.in_sync or status.error is not None:
        out["in_sync"] = status.in_sync
        out["error"] = status.error
    if status.bindings is not None:
        out["bindings"] = {
            m: {"port": b.port, "state": b.state, "reason": b.reason} for m, b in status.bindings.items()
        }
    return out


def _opt_str(value: Any, field: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise WireError(field, f"must be a string or null, got {value!r}")


def _binding(mac: Any, raw: Any) -> tuple[Mac, Binding]:
    field = f"bindings.{mac}"
    if not isinstance(raw, dict):
        raise WireError(field, "must be an object {port, state, reason}")
    state = raw.get("state")
    if state not in ("bound", "unbound"):
        raise WireError(f"{field}.state", f"must be 'bound' or 'unbound', got {state!r}")
    port = _opt_str(raw.get("port"), f"{field}.port")
    if state == "bound" and not port:
        raise WireError(f"{field}.port", "a bound vNIC needs its port")
    reason = _opt_str(raw.get("reason"), f"{field}.reason")
    return Mac(mac), Binding(PortName(port) if port else None, state, reason)


def decode_status(body: Any) -> Status:
    """A status body, parsed from JSON. The MACs are the agent's words: the manager
    keeps only those of the host's view."""
    if not isinstance(body, dict):
        raise WireError("body", "the body must be a JSON object")
    revision = _revision(body)
    in_sync = body.get("in_sync", True)
    if type(in_sync) is not bool:
        raise WireError("in_sync", f"must be true or false, got {in_sync!r}")
    error = _opt_str(body.get("error"), "error")
    raw = body.get("bindings")
    bindings: dict[Mac, Binding] | None = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise WireError("bindings", "must be an object MAC -> {port, state, reason}")
        bindings = dict(_binding(m, b) for m, b in raw.items())
    return Status(revision, in_sync, error, bindings)


__all__ = [
    "DELTA",
    "HEARTBEAT",
    "SNAPSHOT",
    "Binding",
    "Delta",
    "FeedMessage",
    "Heartbeat",
    "Snapshot",
    "Status",
    "WireError",
    "decode_delta",
    "decode_feed",
    "decode_line",
    "decode_snapshot",
    "decode_status",
    "dumps",
    "encode_delta",
    "encode_heartbeat",
    "encode_snapshot",
    "encode_status",
    "host_delta",
    "lnid_json",
    "lnids_json",
    "snapshot_view",
]
