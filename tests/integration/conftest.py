"""Fixtures of the integration tier: the data-path back ends on a real kernel.

Each test gets a fresh namespace prefix; whatever happens, every namespace of that
prefix is removed afterwards (`netns.sweep` in a `finally`). `make_host(n)` builds one
host under test (`switchhost.SwitchHost`) with n VMs on the back end `backend`, which
runs every shared test (`test_backend_*.py`) on the Linux bridge, Open vSwitch and
macvtap: "same contract, same tests". See `hostnet`, `ovsnet` and `macvtapnet`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from hostvlan.testbed import netns

from .backends import BACKENDS
from .switchhost import SwitchHost


@pytest.fixture
def prefix() -> Iterator[str]:
    """A fresh per-test namespace prefix; every `<prefix>-…` namespace is removed afterwards."""
    assert os.geteuid() == 0, "this test builds network namespaces: it needs root (mark it `root`)"
    p = netns.new_prefix()
    try:
        yield p
    finally:
        netns.sweep(p)
        left = [n for n in netns.list_netns() if n.startswith(p + "-")]
        assert not left, f"namespaces left behind: {left}"


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    """The back end under test (a test may narrow it with `pytest.mark.parametrize("backend", …)`)."""
    return str(request.param)


@pytest.fixture
def make_host(backend: str, prefix: str) -> Iterator[Callable[[int], SwitchHost]]:
    """Factory: `make_host(n)` builds a host with n VMs on `backend` (no filter yet); on exit
    everything it started is stopped and no namespace is left."""
    factory, _ = BACKENDS[backend]
    with factory(prefix) as make:
        yield make
