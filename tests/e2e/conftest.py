"""Fixtures of the e2e tier: whole emulated data centers on real namespaces (see `support`)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostvlan.testbed import netns

from .support import session_namespaces


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every e2e test builds a whole testbed: each is marked `root` (see tests/conftest.py)."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.root)


@pytest.fixture(scope="session", autouse=True)
def _check_leftovers() -> Iterator[None]:
    yield
    if os.geteuid() != 0:
        return
    left = session_namespaces()
    for name in left:
        netns.remove(name)
    assert not left, f"e2e tier left namespaces behind: {left}"
