"""ARP (and, on the bridge, ND) answered on the host, with the tools a guest really uses.

A VM resolves a registered peer of its LNID with `arping` (and `ndisc6`): the answer comes
from the host, carrying the peer's MAC, and no request reaches the wire; a request for an
address registered in another LNID gets no answer and does not reach the wire either.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import pytest

from hostvlan.testbed import netns

from .guardframes import FAR, PEER, PEER6, R1, Sockets, guard_state
from .ovsnet import OvsHost
from .switchhost import OUTSIDE, SwitchHost

pytestmark = pytest.mark.root


def _in(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=False)


def _requests(frames: list[bytes]) -> list[bytes]:
    """ARP requests and neighbour solicitations among `frames` (untagged)."""
    arp = [f for f in frames if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01"]
    ns = [f for f in frames if f[12:14] == b"\x86\xdd" and len(f) > 54 and f[20] == 58 and f[54] == 135]
    return arp + ns


@pytest.mark.parametrize("backend", ["bridge-closed", "ovs"])
def test_a_registered_peer_is_answered_on_the_host(backend: str, make_host: Callable[[int], SwitchHost]) -> None:
    host = make_host(3)
    state = guard_state(host.vms)
    host.boot(state)
    vm = host.vms[0]
    _in(vm.ns, "ip", "addr", "add", "10.66.0.1/24", "dev", "eth0")
    wire = Sockets({OUTSIDE: host.outside_ns})
    try:
        wire.collect(0.2)
        got = _in(vm.ns, "arping", "-c", "2", "-w", "3", "-i", "eth0", "-S", "10.66.0.1", PEER)
        assert R1 in got.stdout.lower(), got.stdout + got.stderr  # the peer's MAC, from the host
        far = _in(vm.ns, "arping", "-c", "1", "-w", "1", "-i", "eth0", "-S", "10.66.0.1", FAR)
        assert "bytes from" not in far.stdout  # another LNID's: dropped at the source
        if not isinstance(host, OvsHost):  # the bridge answers ND too
            netns.sysctl(vm.ns, "net.ipv6.conf.eth0.disable_ipv6", "0")
            netns.sysctl(vm.ns, "net.ipv6.conf.eth0.accept_dad", "0")
            _in(vm.ns, "ip", "addr", "add", "fd00::1/64", "dev", "eth0", "nodad")
            time.sleep(0.5)
            nd = _in(vm.ns, "ndisc6", "-1", "-r", "2", "-s", "fd00::1", PEER6, "eth0")
            assert R1 in nd.stdout.lower(), nd.stdout + nd.stderr
        assert _requests(wire.collect(0.5)[OUTSIDE]) == []  # no request reached the wire
    finally:
        wire.close()
