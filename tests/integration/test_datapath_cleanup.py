"""`hostvlan agent --cleanup` (`datapath.cleanup.clean_host`) on every back end's switch:
everything of hostvlan's goes (nft tables of both families, tc programs and BPF pins, locked
ports and sticky entries, OVS flows in its cookie range and its group), and nothing else:
someone else's nft table, OVS flow and tc program stay."""

from __future__ import annotations

import ctypes
import json
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.bridge.tc import PROGS
from hostvlan.datapath.kernel import bpf as bpflib
from hostvlan.testbed import netns

from .hostnet import BRIDGE, Host, bridge_hosts
from .switchhost import UPLINK, SwitchHost, lifecycle_state

pytestmark = pytest.mark.root

MakeHost = Callable[[int], SwitchHost]
SCHED_CLS = 3  # BPF_PROG_TYPE_SCHED_CLS
FOREIGN_PROG = b"foreign_tc"
# r0 = TCX_NEXT (-1); exit: a program that passes every frame on
PASS = struct.pack("<BBhi", 0xB7, 0, 0, -1) + struct.pack("<BBhi", 0x95, 0, 0, 0)


def _ifindex(host: SwitchHost, port: str) -> int:
    with netns.iproute(host.ns) as ipr:
        return int(ipr.link_lookup(ifname=port)[0])


def _attach_foreign(host: SwitchHost, port: str) -> None:
    """Someone else's tc program at the port's tcx egress hook."""
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    lib.bpf_prog_load.restype = ctypes.c_int
    lib.bpf_prog_load.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_void_p,
    ]
    fd = lib.bpf_prog_load(SCHED_CLS, FOREIGN_PROG, b"GPL", PASS, len(PASS) // 8, None)
    assert fd >= 0, ctypes.get_errno()
    ifindex = _ifindex(host, port)
    try:
        with netns.inside(host.ns):
            bpflib.tcx_attach(fd, ifindex)
    finally:
        bpflib.close(fd)


def _programs(host: SwitchHost, port: str) -> list[str]:
    ifindex = _ifindex(host, port)
    with netns.inside(host.ns):
        return [name for _, name, _ in bpflib.tcx_egress_programs(ifindex)]


def _bridge_ports(host: SwitchHost) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "netns", "exec", host.ns, "bridge", "-j", "-d", "link", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [p for p in json.loads(out) if p.get("master") == BRIDGE]


def _sticky(host: SwitchHost) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "netns", "exec", host.ns, "bridge", "-j", "fdb", "show", "br", BRIDGE],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [e for e in json.loads(out) if "sticky" in e.get("flags", [])]


def test_cleanup_removes_everything_of_hostvlans_and_nothing_else(make_host: MakeHost) -> None:
    host = make_host(3)
    filt = host.boot(lifecycle_state(host))
    host.plant_foreign()
    _attach_foreign(host, UPLINK)
    assert host.installed()

    removed = host.clean()
    assert removed  # it says what it removed
    assert not host.installed()
    assert host.leftovers() == []  # no table (either family), chain, set, flow or group of hostvlan's
    assert host.foreign_intact()  # someone else's table / flow stays
    ours = set(PROGS)
    assert _programs(host, UPLINK)[-1:] == [FOREIGN_PROG.decode()]  # someone else's program stays
    for vm in host.vms:
        assert not ours & set(_programs(host, vm.port))
    assert not ours & set(_programs(host, UPLINK))
    if isinstance(host, Host):
        spec = host.spec()
        assert spec.bpf_pins is not None and not spec.bpf_pins.exists()
        ports = _bridge_ports(host)
        assert ports and all(p["locked"] is False and p["learning"] is True for p in ports)
        assert _sticky(host) == []
    assert host.clean() == []  # idempotent: nothing left to remove
    assert host.foreign_intact()

    # the next agent installs from scratch
    filt.close()
    fresh = host.new_filter()
    fresh.sync(lifecycle_state(host))
    report = fresh.apply()
    assert report.full and report.elements > 0
    assert fresh.read() == fresh.desired()


@pytest.fixture
def make_bridge(prefix: str) -> Iterator[Callable[[int], Host]]:
    with bridge_hosts(prefix) as make:
        yield make


def test_agent_cleanup_flag(make_bridge: Callable[[int], Host]) -> None:
    host = make_bridge(3)
    host.boot(lifecycle_state(host))
    pins = host.spec().bpf_pins
    argv = [sys.executable, "-m", "hostvlan.cli", "agent", "--cleanup", "--bpf-pins", str(pins)]
    done = subprocess.run(["ip", "netns", "exec", host.ns, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "removed nft table bridge hostvlan" in done.stdout
    assert "Traceback" not in done.stderr
    assert not host.installed()
    assert all(not set(PROGS) & set(_programs(host, vm.port)) for vm in host.vms)
