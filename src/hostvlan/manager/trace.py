"""`trace`: the verdict a frame gets, on what the destination host really enforces.

The destination's tenant filter is the host's view (from the calc graph) with the port
bindings its agent REPORTED (`wire.Binding`), never the registration's port or a
placeholder: a vNIC registered without a port, or on a mistyped one, is enforced where
the agent found it, or nowhere. The verdict is `model.verdict.receive` on that filter
state; a destination vNIC the agent reported unbound, or has not reported yet, is
denied (fail closed) with the reason. So is a source vNIC its own agent has not reported
bound: its port's send check drops everything it sends, whatever the destination.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hostvlan.model.addresses import text_json
from hostvlan.model.datacenter import DataCenter
from hostvlan.model.hostview import HostView, filter_state
from hostvlan.model.ids import HostId, Mac, PortName, format_lnids
from hostvlan.model.ports import FilterState
from hostvlan.model.verdict import receive
from hostvlan.wire import Binding, lnids_json

Bindings = Mapping[Mac, Binding]


def reported_state(view: HostView, bindings: Bindings) -> FilterState:
    """The filter state a host enforces: its view, its vNICs on the ports its agent bound them to."""
    ports = {m: b.port for m, b in bindings.items() if m in view.local and b.bound and b.port is not None}
    return filter_state(HostView(view.host, view.entries, dict.fromkeys(view.local)), ports, {})


def bound_on(dc: DataCenter, host: HostId, bindings: Bindings, port: PortName) -> Mac | None:
    """The local vNIC the agent of `host` reported bound on `port`."""
    for mac, b in bindings.items():
        if b.bound and b.port == port:
            loc = dc.locations.get(mac)
            if loc is not None and loc.host == host:
                return mac
    return None


def trace(
    dc: DataCenter,
    bindings: Bindings,
    reported: bool,
    src: Mac,
    dst: str,
    dmac: Mac | None,
    host: HostId | None,
    port: PortName | None,
    src_at: tuple[HostId, Binding | None] | None = None,
) -> dict[str, Any]:
    """The answer of `GET /v1/trace` (see `Service.trace`, which resolves the destination).

    `dmac` the destination vNIC (None: none found at HOST:PORT), `host` its host (None:
    external or unregistered), `bindings` what that host's agent reported (`reported`:
    whether it ever reported bindings); `src_at` the source vNIC's host and what its agent
    reported for it (None: the source is external or unregistered).
    """
    shown = text_json(dc.addr_text(src))
    out: dict[str, Any] = {
        "src": src,
        "dst": dst,
        "src_lnids": lnids_json(dc.table.lnids(src)),
        "src_addresses": shown["addresses"],
        "src_guarded": shown["guarded"],
    }

    def answer(allow: bool, reason: str, **extra: Any) -> dict[str, Any]:
        out.update(allow=allow, reason=reason, **extra)
        if "dst_mac" in extra:
            out["dst_lnids"] = lnids_json(dc.table.lnids(extra["dst_mac"]))
        return out

    if src_at is not None:
        shost, sb = src_at
        if sb is None or not sb.bound or sb.port is None:
            got = "not reported bound yet" if sb is None else f"unbound: {sb.reason or 'no reason given'}"
            return answer(
                False,
                f"source {src} is not bound on host {shost} ({got}): its port's send check drops "
                "everything it sends (fail closed)",
            )
    if host is None:
        if dmac is None or dmac not in dc.locations:
            return answer(False, f"destination {dmac or dst} is not registered: no port is bound to it (fail closed)")
        known = src in dc.table
        return answer(
            known,
            "destination is external: it sits behind the physical network, not behind a tenant filter"
            + ("" if known else "; but the source is unknown, so no host forwards it"),
        )
    if dmac is None:
        why = f"no vNIC is bound to port {host}:{port} (fail closed)"
        meant = sorted(m for m in dc.local_macs(host) if dc.locations[m].port == port)
        if meant:  # registered there, but the agent bound it elsewhere or not at all
            b = bindings.get(meant[0])
            if b is None:
                got = "not reported bound yet"
            else:
                got = f"bound on {b.port}" if b.bound else f"unbound: {b.reason or 'no reason given'}"
            why += f"; {meant[0]} is registered on this port ({got})"
        return answer(False, why, host=host, port=port)
    b = bindings.get(dmac)
    if b is None or not b.bound or b.port is None:
        if b is not None:
            why = f"destination {dmac} is unbound on host {host}: {b.reason or 'no reason given'} (fail closed)"
        elif reported:
            why = f"destination {dmac} is not yet reported bound by host {host}'s agent (fail closed)"
        else:
            why = f"host {host}'s agent has not reported its bindings: {dmac} is not known to be enforced (fail closed)"
        return answer(False, why, host=host, dst_mac=dmac, state=b.state if b else "pending")
    view = dc.view(host)
    v = receive(reported_state(view, bindings), src, b.port)
    reason = v.reason
    if not v.allow and src in dc.table and src not in view.entries:
        reason = (
            f"no shared LNID (source {src} in {format_lnids(dc.table.lnids(src))}, destination {dmac} in "
            f"{format_lnids(dc.table.lnids(dmac))}): host {host} does not even hold the source in its table"
        )
    elif not v.allow and src not in dc.table:
        reason = f"source {src} is not registered in any LNID"
    return answer(v.allow, reason, host=host, port=b.port, dst_mac=dmac, state="bound")
