"""Find the switch port of each local vNIC, the way real deployments name them.

- libvirt tap / veth: the host-side device's MAC is the guest MAC with first octet `fe`;
- macvtap: the device's MAC *is* the guest MAC;
- an explicit port name given at registration always wins (resolved by the caller).
Links are read over netlink (pyroute2) in the agent's own network namespace.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from pyroute2 import IPRoute

from hostvlan.model.ids import Mac, PortName, tap_mac


def links() -> dict[PortName, tuple[Mac, str]]:
    """Every link of this namespace: name -> (MAC, kind)."""
    out: dict[PortName, tuple[Mac, str]] = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            name = link.get("ifname")
            mac = link.get("address")
            if not name or not mac or name == "lo":
                continue
            info = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")) or ""
            out[PortName(name)] = (Mac(mac.lower()), str(info))
    return out


def link_mac(name: str) -> Mac | None:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        return Mac(str(ipr.get_links(idx[0])[0].get("address")).lower())


def find_ports(
    local: Iterable[Mac], found: Mapping[PortName, tuple[Mac, str]], exclude: Iterable[PortName] = ()
) -> dict[Mac, PortName]:
    """Map each local vNIC MAC to the port that carries it (first match by name, stable)."""
    wanted = set(local)
    by_tap = {tap_mac(m): m for m in wanted}
    skip = set(exclude)
    out: dict[Mac, PortName] = {}
    for name in sorted(found):
        if name in skip:
            continue
        mac, kind = found[name]
        guest = by_tap.get(mac)
        if guest is None and kind == "macvtap" and mac in wanted:
            guest = mac
        if guest is not None and guest not in out:
            out[guest] = name
    return out


IFF_UP = 0x1
IFF_ALLMULTI = 0x200


def guard_macvtaps(bound: set[PortName], phase: str) -> list[str]:
    """Keep the macvtap contract: a macvtap is up iff its port is bound (its filter exists).

    `phase="down"` (before an apply) takes down every macvtap that is up but not bound;
    `phase="up"` (after it) brings up, with allmulticast for multicast, the bound ones that
    are down, and adds allmulticast to the bound ones up without it (libvirt brings up the
    macvtap of an `<interface type='direct'>` itself, multicast filter unset). A macvtap
    that is up without its filter chains would be unfiltered: the agent owns their admin
    state. Returns "name:down"/"name:up"/"name:allmulti" for what it changed.
    """
    changed = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            kind = link.get(("IFLA_LINKINFO", "IFLA_INFO_KIND"))
            if kind != "macvtap":
                continue
            name = PortName(str(link.get("ifname")))
            up = bool(link["flags"] & IFF_UP)
            allmulti = bool(link["flags"] & IFF_ALLMULTI)
            if phase == "down" and up and name not in bound:
                ipr.link("set", index=link["index"], flags=0, change=IFF_UP)
                changed.append(f"{name}:down")
            elif phase == "up" and name in bound and not (up and allmulti):
                # libvirt brings up the macvtaps it makes, without allmulticast: add it
                ipr.link("set", index=link["index"], flags=IFF_UP | IFF_ALLMULTI, change=IFF_UP | IFF_ALLMULTI)
                changed.append(f"{name}:{'allmulti' if up else 'up'}")
    return changed


class LinkWatcher:
    """Calls `on_change()` (from its own thread) whenever a link appears, goes or changes.

    pyroute2's synchronous sockets run an event loop of their own, so the watcher (like
    every netlink call of the agent) lives outside the agent's asyncio loop.
    """

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._ipr: IPRoute | None = None
        self._thread = threading.Thread(target=self._run, name="hostvlan-links", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5.0)

    def _run(self) -> None:
        self._ipr = IPRoute()
        self._ipr.bind()
        self._ready.set()
        while not self._stop.is_set():
            try:
                msgs = self._ipr.get()
            except Exception:  # the socket is closed under us on stop
                if self._stop.is_set():
                    return
                continue
            if any(m.get("event") in ("RTM_NEWLINK", "RTM_DELLINK") for m in msgs):
                self._on_change()

    def stop(self) -> None:
        self._stop.set()
        if self._ipr is not None:
            self._ipr.close()
