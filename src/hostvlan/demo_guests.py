"""`hostvlan demo --guests libvirt`: Fig. 7 with real QEMU guests started by libvirt.

The same data center as `hostvlan demo` (bridge, OVS and macvtap hosts), every VM a
libvirt domain whose NIC libvirt attaches; every check runs inside the guests through
their exec channel (`testbed.guestcheck`). Presentation only.
"""

from __future__ import annotations

import dataclasses
import time

import click

from hostvlan.demo import _h, _lnids, fig7
from hostvlan.model.ids import Lnid
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.guestcheck import GuestReport, check_guests, forge, probe
from hostvlan.testbed.topology import Topology, load_topology


def with_guests(topo: Topology) -> Topology:
    """Every host of `topo` with `guests: libvirt`."""
    return dataclasses.replace(topo, hosts=tuple(dataclasses.replace(h, guests="libvirt") for h in topo.hosts))


def _matrix(tb: Testbed, rep: GuestReport) -> None:
    names = list(rep.reach)
    dsts = [*tb.vms, *tb.external]
    w = max(len(n) for n in dsts) + 2
    click.echo(" " * (w + 8) + "answers →")
    click.echo(f"{'pinger ↓':<{w}}{'LNIDs':<8}" + "".join(f"{n:>{w}}" for n in dsts))
    for s in names:
        cells = []
        for d in dsts:
            arp, ping = rep.reach[s].get(d, (False, False))
            if d == s:
                cells.append(f"{'·':>{w}}")
            elif arp and ping:
                cells.append(click.style(f"{'✔':>{w}}", fg="green"))
            elif arp or ping:
                cells.append(click.style(f"{'?':>{w}}", fg="red"))
            else:
                cells.append(f"{'-':>{w}}")
        click.echo(f"{s:<{w}}{_lnids(tb, s):<8}" + "".join(cells))
    click.echo("  ✔ answers arping and ping   - silent (a tenant filter dropped it)   · itself")


def _verdict(rep: GuestReport) -> bool:
    s = rep.summary()
    click.secho(
        f"  model check: {s['wrong']} exchanges the model disagrees with, {s['forged_answered']} forged frames "
        f"delivered ({s['pairs']} pairs, {s['answered']} answered)",
        fg="green" if rep.ok else "red",
    )
    for line in (rep.wrong + rep.forged_answered)[:10]:
        click.secho("    " + line, fg="red")
    return rep.ok


def run_demo_guests(topology: str | None = None) -> bool:
    topo = with_guests(load_topology(topology) if topology else fig7())
    ok = True
    click.secho("HostVLAN demo — Fig. 7 with real guests (QEMU/TCG domains started by libvirt)", bold=True)
    t0 = time.monotonic()
    with Testbed(topo) as tb:
        _h(f"1. Built the data center and booted {len(tb.vms)} guests in {time.monotonic() - t0:.1f} s")
        click.echo(
            "  One private libvirtd per host namespace; each guest's NIC defined as an operator would:\n"
            "  <interface type='bridge'> on br0, + <virtualport type='openvswitch'/> on OVS, and\n"
            "  <interface type='direct' mode='bridge'> (macvtap) on the uplink. The agents found\n"
            "  libvirt's ports themselves (tap MAC fe:…, OVS attached-mac, macvtap MAC)."
        )
        for vm in tb.vms.values():
            h = tb.hosts[vm.host]
            click.echo(
                f"  {vm.name:<9} LNID {_lnids(tb, vm.name):<6} {h.name} [{h.backend}] domain {vm.domain} "
                f"port {vm.port} {vm.ip}"
            )

        _h("2. From inside every guest: arping and ping every other VM")
        rep = check_guests(tb)
        _matrix(tb, rep)
        ok &= _verdict(rep)

        if "vm1-1" in tb.vms and "vm2-3" in tb.vms:
            _h("3. VM1-1 joins LNID 3 while running: `hostvlan reg 3 52:54:00:00:01:01 host1`")
            t = time.perf_counter()
            tb.set_lnids("vm1-1", [Lnid(1), Lnid(3)])
            click.echo(f"  enforced on every affected host {(time.perf_counter() - t) * 1000:.0f} ms after the command")
            arp, ping = probe(tb, "vm1-1", ["vm2-3"])["vm2-3"]
            click.echo(
                f"  vm1-1 → vm2-3 from inside vm1-1: arping {'answered' if arp else 'silent'}, "
                f"ping {'answered' if ping else 'silent'}"
            )
            ok &= arp and ping

        _h("4. Forged source MACs from inside every guest (another VM's MAC, an unknown MAC)")
        forged = [line for vm in tb.vms for line in forge(tb, vm)]
        click.echo(f"  {2 * len(tb.vms)} forgeries tried, {len(forged)} delivered")
        for line in forged:
            click.secho("    " + line, fg="red")
        ok &= not forged
    _h("5. Torn down: every domain destroyed, every libvirtd stopped, every namespace removed")
    click.secho(
        "Demo " + ("PASSED: no frame crossed LNIDs." if ok else "FAILED."), bold=True, fg="green" if ok else "red"
    )
    return ok
