"""`hostvlan drops HOST` and `hostvlan status`: what is dropped where and why, and one screen of
the data center (through the manager: docs/observability.md)."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from hostvlan.cli.common import JSON, api, client, emit, main, table
from hostvlan.model.verdict import DROP_REASONS


def _when(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def _event_line(e: dict[str, Any]) -> str:
    return (
        f"{_when(e['time'])}  {e['host']}  {e['port']:<12} {e['src']} -> {e['dst']}  "
        f"type 0x{e['ethertype']:04x}  DROPPED {e['reason']}"
    )


@main.command(short_help="Drops a host's data path reported: time, port, MACs, ethertype, reason.")
@click.argument("host")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new drops as they are reported (Ctrl-C ends).")
@click.option("--reason", type=click.Choice(DROP_REASONS), help="Only drops of this reason.")
@click.option(
    "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True, help="--follow: poll period."
)
@JSON
@api
def drops(host: str, follow: bool, reason: str | None, interval: float, as_json: bool) -> None:
    """Show the individual drops HOST's data path sampled, like `hubble observe --verdict DROPPED`.

    The data path samples drops (the bridge's tc programs; OVS's whole-frame drops; the
    nftables tables' log rules on macvtap and the bridge's nft flavours, over NFLOG; at
    most 64 a second per host, never an allowed frame);
    the agent reports them to the manager every 2 s with its drop counters, so this works
    from the manager's machine. Without --follow: the last drops the manager keeps (up to
    1000), then the counters per port and reason. --json: one JSON object per drop (with
    --follow, one per line as they come), else the whole answer.
    """
    c = client()
    params = {"after": "0"} | ({"reason": reason} if reason else {})
    ans = c.call("GET", f"/v1/hosts/{host}/drops", params=params)
    if not follow:
        if as_json:
            emit(ans)
            return
        for e in ans["events"]:
            click.echo(_event_line(e))
        if not ans["events"]:
            click.echo(f"no drop events reported by {host}")
        rows: list[tuple[str, ...]] = [
            (str(d["port"]), str(d["reason"]), str(d["count"]))
            for d in ans["counters"]
            if not reason or d["reason"] == reason
        ]
        if rows:
            click.echo("")
            table(("PORT", "REASON", "DROPPED"), rows)
        return
    try:
        while True:
            for e in ans["events"]:
                if as_json:
                    click.echo(json.dumps(e))
                else:
                    click.echo(_event_line(e))
            time.sleep(interval)
            ans = c.call("GET", f"/v1/hosts/{host}/drops", params=params | {"after": str(ans["last"])})
    except KeyboardInterrupt:
        return


def _drops(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())) or "-"


@main.command(short_help="One screen: hosts in sync or lagging, drops in the last minute, revision, store.")
@JSON
@api
def status(as_json: bool) -> None:
    """The whole data center on one screen: the manager's revision and store, each host's
    agent (connected, revision applied, lag, in sync) and what its data path dropped in the
    last minute per reason (from the agents' drop reports)."""
    ans = client().call("GET", "/v1/status")
    if as_json:
        emit(ans)
        return
    s, store = ans["summary"], ans["store"]
    click.echo(f"manager: revision {ans['revision']}, store {store['kind']} {store['path']}".rstrip())
    lag = f" (lagging: {', '.join(s['lagging'])})" if s["lagging"] else ""
    click.echo(f"hosts: {s['hosts']}, connected {s['connected']}, in sync {s['in_sync']}{lag}")
    click.echo(f"drops in the last minute: {_drops(ans['drops_last_minute'])}")
    rows: list[tuple[str, ...]] = []
    for h in ans["hosts"]:
        state = "yes" if h["in_sync"] else ("no: " + h["error"] if h.get("error") else f"no (lag {h['lag']})")
        rows.append(
            (
                h["name"],
                "yes" if h["connected"] else "no",
                str(h["revision_applied"]),
                str(h["lag"]),
                state,
                _drops(h["drops_last_minute"]),
            )
        )
    if rows:
        click.echo("")
        table(("HOST", "CONNECTED", "APPLIED", "LAG", "IN-SYNC", "DROPS (LAST MINUTE)"), rows)
