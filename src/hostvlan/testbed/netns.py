"""Network-namespace plumbing over netlink (pyroute2): create, enter, sweep.

Names carry a per-run prefix so parallel runs never collide; `sweep(prefix)` removes
every namespace of a run, which is how `down` works even after a crash of `up`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import IPRoute, config, netns

# pyroute2 opens a socket inside a namespace from a forked child and gives it 2 s to
# answer; on a loaded CI machine a fork of a large test process can take longer.
config.default_communicate_timeout = max(config.default_communicate_timeout, 20)
config.default_create_socket_timeout = max(config.default_create_socket_timeout, 60)

_CLONE_NEWNET = 0x40000000
_MS_BIND = 4096
_MS_REC = 16384
_MS_SHARED = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)

NETNS_DIR = "/var/run/netns"
PREFIX_ROOT = "hv"


def new_prefix() -> str:
    """A fresh run prefix: `hv` + 6 hex digits."""
    return f"{PREFIX_ROOT}{secrets.token_hex(3)}"


def create(name: str) -> None:
    """Create namespace `name` under /var/run/netns, as `ip netns add` does.

    Done in a short-lived thread of this process (unshare(CLONE_NEWNET) moves only the
    calling thread), not in a forked child: pyroute2's `netns.create` forks and gives
    the child 2 s, which a loaded machine exceeded (CI: "no response from the child").
    """
    if name in list_netns():
        raise FileExistsError(f"network namespace {name} already exists")
    failure: list[BaseException] = []
    worker = threading.Thread(target=_create_in_thread, args=(name, failure), name=f"netns-{name}")
    worker.start()
    worker.join()
    if failure:
        raise failure[0]


def _mount(source: str, target: str, flags: int) -> int:
    return int(_libc.mount(source.encode(), target.encode(), b"none", flags, None))


def _oserror(what: str, path: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}", path)


def _create_in_thread(name: str, failure: list[BaseException]) -> None:
    path = os.path.join(NETNS_DIR, name)
    try:
        os.makedirs(NETNS_DIR, exist_ok=True)
        # the run directory must be a shared mount point so that the bind mount below is
        # seen by every mount namespace (ported from iproute2's `netns_add`)
        made_bind = False
        while _mount("", NETNS_DIR, _MS_SHARED | _MS_REC) != 0:
            if made_bind:
                raise _oserror("making the netns directory shared failed", NETNS_DIR)
            if _mount(NETNS_DIR, NETNS_DIR, _MS_BIND | _MS_REC) != 0:
                raise _oserror("bind-mounting the netns directory failed", NETNS_DIR)
            made_bind = True
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0))
        try:
            if _libc.unshare(_CLONE_NEWNET) != 0:
                raise _oserror("unshare(CLONE_NEWNET) failed", path)
            if _mount(f"/proc/self/task/{threading.get_native_id()}/ns/net", path, _MS_BIND) != 0:
                raise _oserror("binding the new namespace failed", path)
        except BaseException:
            os.unlink(path)
            raise
    except BaseException as exc:  # handed to the caller's thread
        failure.append(exc)


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
