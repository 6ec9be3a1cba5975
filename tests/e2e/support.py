"""Helpers shared by the e2e tier: per-session namespace prefixes, topology files, checks.

Every testbed of this tier is named with a prefix that starts with one per-session
root (`SESSION`), so the tier can prove afterwards that none of its namespaces is left
behind while other runs build their own namespaces concurrently.
"""

from __future__ import annotations

import itertools
import json
import secrets
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hostvlan.testbed import netns
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.check import Report
from hostvlan.testbed.topology import Topology, load_topology

# `e` + 6 hex digits; each testbed appends a counter, each CLI test a letter (≤ 12 chars)
SESSION = "e" + secrets.token_hex(3)
_counter = itertools.count()


def new_prefix(tag: str = "t") -> str:
    """A fresh prefix under this session's root, valid for `hostvlan testbed up --prefix`."""
    return f"{SESSION}{tag}{next(_counter)}"


def session_namespaces() -> list[str]:
    return [n for n in netns.list_netns() if n.startswith(SESSION)]


def topology_from_text(tmp_path: Path, text: str, name: str = "topo.yaml") -> Topology:
    """Write YAML to a file and load it the way the CLI does."""
    path = tmp_path / name
    path.write_text(text)
    return load_topology(path)


def reached(report: Report, sender: str) -> set[str]:
    """Who received `sender`'s broadcast in a `run_check` report."""
    return {r for r, got in report.matrix.get(sender, {}).items() if got}


def broadcast_pairs(report: Report) -> set[tuple[str, str]]:
    """The broadcast matrix of a report as a set of (sender, receiver) pairs that delivered."""
    return {(s, r) for s, row in report.matrix.items() for r, got in row.items() if got}


def describe(report: Report, limit: int = 30) -> str:
    """A failure message: the summary and the first problems."""
    lines = [str(report.summary())]
    lines += [f"LEAK   {x}" for x in report.leaks[:limit]]
    lines += [f"MISS   {x}" for x in report.misses[:limit]]
    lines += [f"FORGED {x}" for x in report.forged_delivered[:limit]]
    return "\n".join(lines)


def assert_model_agrees(report: Report) -> None:
    assert report.ok, describe(report)
    assert report.delivered > 0, describe(report)


@contextmanager
def running(topology: Topology) -> Iterator[Testbed]:
    """`with Testbed(...)` under a fresh prefix of this session; checks the teardown too."""
    with Testbed(topology, prefix=new_prefix()) as tb:
        yield tb
    left = netns.owned(tb.prefix)
    assert not left, f"namespaces of {tb.prefix} left behind: {left}"


def bridge_port(tb: Testbed, host: str, port: str) -> tuple[bool, bool, set[str]]:
    """(locked, learning, MACs of its static FDB entries) of a bridge port of `host`: the
    locked-ports send check lets exactly those MACs in by it (`bridge -j`, in its netns)."""
    ns = ["ip", "netns", "exec", tb.hosts[host].netns, "bridge", "-j"]

    def run(*args: str) -> object:
        return json.loads(subprocess.run([*ns, *args], capture_output=True, text=True, check=True).stdout)

    link = run("-d", "link", "show", "dev", port)
    fdb = run("fdb", "show", "dev", port)
    assert isinstance(link, list) and isinstance(fdb, list)
    static = {str(e["mac"]) for e in fdb if "static" in str(e.get("state", "")) and "sticky" in e.get("flags", [])}
    return bool(link[0].get("locked")), bool(link[0].get("learning")), static


ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


class Raw:
    """An AF_PACKET socket on each named endpoint's eth0: send frames, collect what comes in."""

    def __init__(self, where: dict[str, str]) -> None:
        self.socks: dict[str, socket.socket] = {}
        for name, ns in where.items():
            with netns.inside(ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            s.bind(("eth0", ETH_P_ALL))
            s.setblocking(False)
            self.socks[name] = s

    def send(self, name: str, frame: bytes) -> None:
        self.socks[name].send(frame)

    def collect(self, settle: float = 0.3) -> dict[str, list[bytes]]:
        got: dict[str, list[bytes]] = {n: [] for n in self.socks}
        end = time.monotonic() + 5
        while time.monotonic() < end:
            ready, _, _ = select.select(list(self.socks.values()), [], [], settle)
            if not ready:
                break
            for name, s in self.socks.items():
                while s in ready:
                    try:
                        data, addr = s.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if addr[2] != PACKET_OUTGOING:
                        got[name].append(data)
        return got

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
