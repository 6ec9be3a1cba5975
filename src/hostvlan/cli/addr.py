"""`hostvlan addr add|del MAC ADDR [--shared]`: the addresses of a registered vNIC (issue 13).

Talks to the manager's HTTP API only, through `hostvlan.client`. Exit codes: see `common`.
"""

from __future__ import annotations

import click

from hostvlan.cli.common import JSON, api, client, emit, main


@main.group()
def addr() -> None:
    """The IPv4/IPv6 addresses a registered vNIC holds (its guard).

    A vNIC with addresses is guarded: the ARP, IPv4/IPv6 sources and NS/NA it sends
    must carry them (its EUI-64 link-local address is always its own). One without any
    is unguarded (MAC-only). Give addresses at registration with `hostvlan reg ... --ip`;
    change them for a running VM here. Each change reaches exactly the hosts holding the
    vNIC's entry.
    """


@addr.command("add")
@click.argument("mac")
@click.argument("address")
@click.option(
    "--shared",
    is_flag=True,
    help="A VIP (VRRP/keepalived) other MACs sharing an LNID may hold too; the host never answers ARP/ND for it.",
)
@JSON
@api
def addr_add(mac: str, address: str, shared: bool, as_json: bool) -> None:
    """Let registered MAC hold ADDRESS too (an IPv4/IPv6 address, or a prefix like 10.0.1.0/24).

    Refused, with nothing changed: an address another MAC holds (or a prefix overlapping
    one), a shared address held by a MAC sharing no LNID with MAC, and multicast,
    broadcast, loopback or unspecified addresses. Adding what MAC holds changes nothing.
    Example:

      hostvlan addr add 52:54:00:00:00:01 10.0.0.100 --shared
    """
    ans = client().addr_add(mac, address, shared=shared)
    if as_json:
        emit(ans)
    elif ans["changed"]:
        what = "shared address" if shared else "address"
        click.echo(f"{mac} holds {what} {address} (revision {ans['revision']})")
    else:
        click.echo(f"{mac} already holds {address}: nothing changed (revision {ans['revision']})")


@addr.command("del")
@click.argument("mac")
@click.argument("address")
@JSON
@api
def addr_del(mac: str, address: str, as_json: bool) -> None:
    """Take ADDRESS from MAC (a no-op if MAC does not hold it).

    When it was MAC's last address, MAC is unguarded again (MAC-only), unless the
    manager runs with --require-addresses, which refuses that.
    """
    ans = client().addr_del(mac, address)
    if as_json:
        emit(ans)
    elif ans["changed"]:
        click.echo(f"{mac} no longer holds {address} (revision {ans['revision']})")
    else:
        click.echo(f"{mac} does not hold {address}: nothing changed (revision {ans['revision']})")
