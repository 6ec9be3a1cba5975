"""OVS: real TCP (ARP, then a connection and bulk data) inside an LNID; none across LNIDs.

Addresses are from TEST-NET-1 (192.0.2.0/24) and exist only in this test's namespaces.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from hostvlan.testbed import netns

from .hostnet import host_state
from .ovsnet import OvsHost, ovs_hosts

pytestmark = pytest.mark.root

PORT = 5201
PAYLOAD = b"x" * (4 << 20)  # 4 MiB: many full-size segments through the userspace datapath


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def _addr(i: int) -> str:
    return f"192.0.2.{i + 1}"


def _serve(ns: str, ready: threading.Event, got: list[int]) -> socket.socket:
    with netns.inside(ns):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", PORT))
    srv.listen(4)
    srv.settimeout(10)

    def run() -> None:
        ready.set()
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            total = 0
            while chunk := conn.recv(1 << 16):
                total += len(chunk)
            got.append(total)

    threading.Thread(target=run, daemon=True).start()
    return srv


def _connect(ns: str, addr: str, timeout: float) -> bool:
    with netns.inside(ns):
        cli = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    cli.settimeout(timeout)
    try:
        cli.connect((addr, PORT))
        cli.sendall(PAYLOAD)
        return True
    except OSError:
        return False
    finally:
        cli.close()


def test_tcp_inside_an_lnid_and_never_across(make_host: Callable[..., OvsHost]) -> None:
    host = make_host(3)
    a, b, c = host.vms
    host.start(host_state({a.mac: [1], b.mac: [1], c.mac: [2]}, {vm.port: vm.mac for vm in host.vms}))
    for vm in host.vms:
        with netns.iproute(vm.ns) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address=_addr(vm.index), prefixlen=24)

    got_b: list[int] = []
    ready = threading.Event()
    srv_b = _serve(b.ns, ready, got_b)
    got_c: list[int] = []
    srv_c = _serve(c.ns, threading.Event(), got_c)
    try:
        assert ready.wait(5)
        assert _connect(a.ns, _addr(b.index), timeout=10), "TCP inside LNID 1 failed"
        assert not _connect(a.ns, _addr(c.index), timeout=2), "TCP crossed from LNID 1 to LNID 2"
        for _ in range(100):
            if got_b:
                break
            threading.Event().wait(0.05)
        assert got_b == [len(PAYLOAD)]
        assert got_c == []
    finally:
        srv_b.close()
        srv_c.close()
