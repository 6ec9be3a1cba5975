"""Fixtures of the integration tier: the nftables Linux-bridge back end on a real kernel.

Each test gets a fresh namespace prefix; whatever happens, every namespace of that
prefix is removed afterwards (`netns.sweep` in a `finally`). See `hostnet` for the
topology.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from hostvlan.testbed import netns

from .hostnet import Host, build_host


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    # a skipped test counts as failing: fail loudly instead of skipping
    assert os.geteuid() == 0, "the integration tier needs root and a real kernel"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh per-test namespace prefix; every `<prefix>-…` namespace is removed afterwards."""
    p = netns.new_prefix()
    try:
        yield p
    finally:
        netns.sweep(p)
        left = [n for n in netns.list_netns() if n.startswith(p + "-")]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def make_host(prefix: str) -> Iterator[Callable[[int], Host]]:
    """Factory: `make_host(n)` builds a host with n VMs (links down, no filter yet)."""
    hosts: list[Host] = []

    def make(n_vms: int) -> Host:
        assert not hosts, "one host per test"
        try:
            host = build_host(prefix, n_vms)
        except BaseException:
            netns.sweep(prefix)
            raise
        hosts.append(host)
        return host

    try:
        yield make
    finally:
        for host in hosts:
            host.close()  # sockets and nft contexts first: they pin their namespaces
