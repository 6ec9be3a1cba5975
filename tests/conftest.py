"""Root required per test, not per tier: a test marked `root` (it builds namespaces, programs the
kernel's switches or runs agents) fails at once, with the reason, when the suite runs without root.
Everything else — the unit tier, and integration tests of the manager over loopback — runs as any
user. A skipped test would count as failing, so the marked ones fail loudly instead of skipping."""

from __future__ import annotations

import os

import pytest


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0:
        pytest.fail(f"{item.nodeid} needs root and a real kernel (marked `root`)", pytrace=False)
