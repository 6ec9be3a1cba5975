"""Network-namespace plumbing over netlink (pyroute2): create, enter, sweep.

Names carry a per-run prefix so parallel runs never collide; `sweep(prefix)` removes
every namespace of a run, which is how `down` works even after a crash of `up`.
"""

from __future__ import annotations

import errno
import os
import secrets
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


def sweep(prefix: str) -> list[str]:
    """Remove every namespace named `<prefix>-…`; returns the names removed."""
    gone = [n for n in list_netns() if n.startswith(prefix + "-")]
    for name in gone:
        remove(name)
    return gone


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the block with this thread inside namespace `name` (sockets opened here stay bound to it)."""
    netns.pushns(name)
    try:
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
