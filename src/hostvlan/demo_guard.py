"""The demo's address-guard step (issue 13): a VM tries to poison the `global` router's
neighbour cache for another tenant's addresses, and ARP/ND is answered on the host.

Presentation only: the forged frames are sent from the attacker's namespace, the router is a
real Linux neighbour cache, and the drops are the kernel's counts (what the agent reports and
`hostvlan drops HOST` shows).
"""

from __future__ import annotations

import subprocess
import time

import click

from hostvlan.model.ids import GLOBAL
from hostvlan.model.verdict import ARP_SPOOF, ND_SPOOF
from hostvlan.testbed import netns
from hostvlan.testbed.build import SWITCH, ExternalInfo, Testbed, VmInfo
from hostvlan.testbed.forge import Tap, arp_reply, neighbour_advert, resolutions

LOCKTIME = 1.1  # s: a Linux neighbour entry ignores new answers for 1 s after an update


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=10, check=False)


def _ping(ns: str, addr: str) -> bool:
    return _in(ns, "ping", "-c", "1", "-W", "1", addr).returncode == 0


def _neigh(ns: str, addr: str) -> str:
    return " ".join(_in(ns, "ip", "neigh", "show", addr, "dev", "eth0").stdout.split()) or f"{addr} (none)"


def _cast(tb: Testbed) -> tuple[ExternalInfo, VmInfo, VmInfo, VmInfo | None] | None:
    """(router, attacker, victim, peer): a global external endpoint; a guarded VM (a bridge
    host's first); a guarded VM sharing no LNID with it; a guarded VM of its LNIDs on another host."""
    auto = {e.name for e in tb.topology.endpoints() if e.addresses is None}  # its testbed IPv4 and IPv6
    routers = [x for n, x in tb.external.items() if n in auto and GLOBAL in tb.table.lnids(x.mac)]
    vms = sorted((v for v in tb.vms.values() if v.name in auto), key=lambda v: tb.hosts[v.host].switch != "bridge")
    for a in vms:
        mine = set(tb.table.lnids(a.mac))
        victims = [v for v in vms if not mine & set(tb.table.lnids(v.mac))]
        peers = [v for v in vms if v.host != a.host and mine & set(tb.table.lnids(v.mac))]
        if routers and victims:
            return routers[0], a, victims[0], (peers[0] if peers else None)
    return None


def guard_step(tb: Testbed) -> bool:
    """Run the step (the caller prints its heading); False if any check failed."""
    cast = _cast(tb)
    if cast is None:
        click.echo(
            "  (skipped: the topology has no `global` external endpoint, or no two guarded VMs of disjoint LNIDs)"
        )
        return True
    router, att, victim, peer = cast
    ok = True
    lnids = {v.name: ",".join(str(x) for x in sorted(tb.table.lnids(v.mac))) for v in tb.vms.values()}
    click.echo(
        f"  {router.name} is `global` (an external router: a real Linux neighbour cache, taking unsolicited ARP);\n"
        f"  {att.name} (LNID {lnids[att.name]}) forges an ARP reply and an NA saying {victim.name}'s "
        f"(LNID {lnids[victim.name]}) addresses are at its own MAC {att.mac}."
    )
    netns.sysctl(router.netns, "net.ipv4.conf.eth0.arp_accept", "1")
    ok &= _ping(router.netns, victim.ip) and _ping(router.netns, victim.ip6)
    click.echo(f"  router's cache before: {_neigh(router.netns, victim.ip)}")
    click.echo(f"                         {_neigh(router.netns, victim.ip6)}")
    before = tb.drops(att.host)
    tap = Tap(att.netns, att.ifname)
    try:
        time.sleep(LOCKTIME)  # from now on the router would take a forged answer
        tap.send(arp_reply(att.mac, victim.ip, router.mac, router.ip))
        tap.send(neighbour_advert(att.mac, att.ip6, router.mac, router.ip6, victim.ip6))
        time.sleep(0.3)
    finally:
        tap.close()
    after4, after6 = _neigh(router.netns, victim.ip), _neigh(router.netns, victim.ip6)
    unchanged = victim.mac in after4 and victim.mac in after6 and att.mac not in after4 + after6
    ok &= unchanged
    colour = "green" if unchanged else "red"
    click.secho(f"  router's cache after:  {after4}", fg=colour)
    click.secho(f"                         {after6}  ({'unchanged' if unchanged else 'POISONED'})", fg=colour)
    now = tb.drops(att.host)
    counted = {r: now.get((att.port, r), 0) - before.get((att.port, r), 0) for r in (ARP_SPOOF, ND_SPOOF)}
    ok &= all(counted.values())
    click.echo(
        f"  {att.host} [{tb.hosts[att.host].backend}] dropped them at {att.name}'s port {att.port}: "
        + ", ".join(f"{r} {n}" for r, n in counted.items())
        + f"  (`hostvlan drops {att.host}`)"
    )
    if peer is not None:
        ok &= _answered_on_host(tb, att, peer)
    return ok


def _answered_on_host(tb: Testbed, asker: VmInfo, peer: VmInfo) -> bool:
    """`asker` resolves `peer` afresh (ARP, and ND on a bridge host): the answer carries the
    peer's MAC and no request reaches the physical switch."""
    nd = tb.hosts[asker.host].switch == "bridge"
    addrs = [peer.ip, peer.ip6] if nd else [peer.ip]
    _in(asker.netns, "ip", "neigh", "flush", "dev", asker.ifname)
    wire = Tap(tb.switch_ns, SWITCH)
    try:
        replied = all(_ping(asker.netns, a) for a in addrs)
        requests = resolutions(wire.collect(), addrs)
    finally:
        wire.close()
    got = [_neigh(asker.netns, a) for a in addrs]
    ok = replied and requests == 0 and all(peer.mac in g for g in got)
    click.secho(
        f"  ARP{'/ND' if nd else ''} answered on the host: {asker.name} resolves {peer.name} on {peer.host} "
        f"({' and '.join(addrs)}): {'ping replied' if replied else 'NO REPLY'}, answered with {peer.mac} by "
        f"{asker.host}; requests for them on the physical switch: {requests}",
        fg="green" if ok else "red",
    )
    return ok
