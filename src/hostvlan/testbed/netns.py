"""Network-namespace plumbing over netlink (pyroute2): create, enter, sweep.

Names carry a per-run prefix so parallel runs never collide; `sweep(prefix)` removes
every namespace of a run, which is how `down` works even after a crash of `up`.
"""

from __future__ import annotations

import errno
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute, netns

NETNS_DIR = "/var/run/netns"
PREFIX_ROOT = "hv"


def new_prefix() -> str:
    """A fresh run prefix: `hv` + 6 hex digits."""
    return f"{PREFIX_ROOT}{secrets.token_hex(3)}"


def create(name: str) -> None:
    if name in list_netns():
        raise FileExistsError(f"network namespace {name} already exists")
    netns.create(name)


def remove(name: str) -> None:
    """Remove a namespace; a missing one is a no-op."""
    try:
        netns.remove(name)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def owned(prefix: str) -> list[str]:
    """The namespaces of one run."""
    return [n for n in list_netns() if n.startswith(prefix + "-")]


def sweep(prefix: str) -> list[str]:
    """Remove every namespace named `<prefix>-…`; returns the names removed."""
    gone = owned(prefix)
    for name in gone:
        remove(name)
    return gone


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread inside namespace `name` (sockets opened here stay bound to it).

    A missing namespace raises FileNotFoundError (pyroute2's `pushns(name)` would create it).
    """
    netns.pushns()
    try:
        netns.setns(name, flags=0)
        yield
    finally:
        netns.popns()


@contextmanager
def iproute(name: str) -> Iterator[IPRoute]:
    ipr = IPRoute(netns=name)
    try:
        yield ipr
    finally:
        ipr.close()


def sysctl(name: str, key: str, value: str) -> None:
    """Write a sysctl inside namespace `name` (procfs follows the caller's netns)."""
    with inside(name), open("/proc/sys/" + key.replace(".", "/"), "w") as fh:
        fh.write(value)


def wait_operstate_up(names: list[str], timeout: float = 10.0) -> None:
    """Wait until every veth/bridge in these namespaces reports operstate UP.

    The kernel's linkwatch may delay carrier-on by up to a second; a bridge port does
    not forward until then, so a testbed is not "up" before this returns.
    """
    end = time.monotonic() + timeout
    pending: list[str] = []
    while True:
        pending = []
        for name in names:
            with iproute(name) as ipr:
                for link in ipr.get_links():
                    if link.get("ifname") == "lo":
                        continue
                    if not link["flags"] & 1:  # administratively down on purpose (an unbound macvtap)
                        continue
                    if link.get("operstate") not in ("UP", "UNKNOWN"):  # a TAP reports UNKNOWN
                        pending.append(f"{name}/{link.get('ifname')}")
        if not pending:
            return
        if time.monotonic() > end:
            raise TimeoutError(f"links not up after {timeout}s: {', '.join(pending[:10])}")
        time.sleep(0.05)
