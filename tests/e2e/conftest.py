"""Fixtures of the e2e tier: whole emulated data centers on real namespaces (see `support`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from hostvlan.testbed import netns

from .support import session_namespaces


@pytest.fixture(scope="session", autouse=True)
def _require_root_and_check_leftovers() -> Iterator[None]:
    # a skipped test counts as failing: fail loudly instead of skipping
    assert os.geteuid() == 0, "the e2e tier needs root and a real kernel"
    yield
    left = session_namespaces()
    for name in left:
        netns.remove(name)
    assert not left, f"e2e tier left namespaces behind: {left}"
