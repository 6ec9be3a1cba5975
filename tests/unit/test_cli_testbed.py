"""`hostvlan testbed up/down` choosing testbeds by their state records (no root, nothing built):
a prefix in use is refused before anything is touched; `down` without --prefix removes the one
testbed up, or refuses and lists them when there are several; --all removes all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from hostvlan.cli import main
from hostvlan.testbed import record

TOPOLOGY = 'hosts:\n  - name: h1\n    vms:\n      - {name: a, mac: "52:54:00:00:00:01", lnids: [1]}\n'


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str | None]]:
    """A private state directory, root faked, and `down_recorded` replaced by a recorder."""
    d = tmp_path / "state"
    monkeypatch.setattr(record, "STATE_DIR", d)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    removed: list[str | None] = []

    def fake_down(prefix: str | None = None) -> list[str]:
        removed.append(prefix)
        return [f"{prefix}-sw"]

    monkeypatch.setattr(record, "down_recorded", fake_down)
    return d, removed


def _record(d: Path, prefix: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{prefix}.json").write_text(json.dumps({"prefix": prefix, "hosts": {"h1": {}}, "vms": {"a": {}}}))


def test_down_removes_the_only_testbed(state: tuple[Path, list[str | None]]) -> None:
    d, removed = state
    res = CliRunner().invoke(main, ["testbed", "down"])
    assert res.exit_code == 0 and "nothing to remove" in res.stdout and removed == []
    _record(d, "hvone")
    res = CliRunner().invoke(main, ["testbed", "down"])
    assert res.exit_code == 0 and removed == ["hvone"], res.output


def test_down_with_several_refuses_and_lists_them(state: tuple[Path, list[str | None]]) -> None:
    d, removed = state
    _record(d, "hvone")
    _record(d, "hvtwo")
    res = CliRunner().invoke(main, ["testbed", "down"])
    assert res.exit_code == 2, res.output
    assert "2 testbeds are up" in res.stderr and "hvone: 1 hosts, 1 VMs" in res.stderr and "hvtwo" in res.stderr
    assert removed == [] and sorted(p.name for p in d.iterdir()) == ["hvone.json", "hvtwo.json"]
    assert CliRunner().invoke(main, ["testbed", "down", "--prefix", "hvtwo"]).exit_code == 0
    assert CliRunner().invoke(main, ["testbed", "down", "--all"]).exit_code == 0
    assert removed == ["hvtwo", None]  # None: every recorded testbed


def test_up_on_a_prefix_in_use_touches_nothing(state: tuple[Path, list[str | None]], tmp_path: Path) -> None:
    d, removed = state
    _record(d, "hvone")
    before = (d / "hvone.json").read_text()
    topo = tmp_path / "t.yaml"
    topo.write_text(TOPOLOGY)
    res = CliRunner().invoke(main, ["testbed", "up", str(topo), "--prefix", "hvone"])
    assert res.exit_code == 4, res.output
    assert res.stderr.startswith("error: conflict: prefix hvone is in use: testbed hvone is up")
    assert sorted(p.name for p in d.iterdir()) == ["hvone.json"] and (d / "hvone.json").read_text() == before
    assert removed == []


def test_prefix_in_use_by_namespaces(state: tuple[Path, list[str | None]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(record.netns, "list_netns", lambda: ["hvns-h-h1", "hvns-sw", "hvnsx-sw"])
    assert record.prefix_in_use("hvns") == "network namespaces of prefix hvns exist (hvns-h-h1, hvns-sw)"
    assert record.prefix_in_use("hvn") is None  # only `<prefix>-…` counts
    with pytest.raises(record.PrefixInUse, match="prefix hvns is in use"):
        record.check_free("hvns")


def test_check_needs_one_testbed(state: tuple[Path, list[str | None]]) -> None:
    d, _ = state
    res = CliRunner().invoke(main, ["testbed", "check"])
    assert res.exit_code == 3 and "no testbed is up" in res.stderr, res.output
    _record(d, "hvone")
    _record(d, "hvtwo")
    (d / "hvone.json").write_text(json.dumps({"prefix": "hvone", "topology": {}}))
    (d / "hvtwo.json").write_text(json.dumps({"prefix": "hvtwo", "topology": {}}))
    res = CliRunner().invoke(main, ["testbed", "check"])
    assert res.exit_code == 2 and "hvone" in res.stderr and "hvtwo" in res.stderr, res.output
    res = CliRunner().invoke(main, ["testbed", "check", "--prefix", "hvzzz"])
    assert res.exit_code == 3 and "testbed hvzzz is not up" in res.stderr, res.output
