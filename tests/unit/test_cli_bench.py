"""`hostvlan bench`: no subcommand runs the data-path suite with its defaults; options parse."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hostvlan import cli
from hostvlan.bench import datapath, options


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[datapath.Options]:
    seen: list[datapath.Options] = []

    def fake_run(opts: datapath.Options, stream: Any = None) -> dict[str, Any]:
        seen.append(opts)
        return {"kind": "hostvlan-bench-datapath", "started_utc": "2026-01-01T00:00:00Z", "main": {"paths": {}}}

    monkeypatch.setattr(datapath, "run", fake_run)
    monkeypatch.setattr(options.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.chdir(tmp_path)
    return seen


def test_bench_without_subcommand_runs_the_default_data_path_set(captured: list[datapath.Options]) -> None:
    res = CliRunner().invoke(cli.main, ["bench"])
    assert res.exit_code == 0, res.output
    (opts,) = captured
    assert (opts.rounds, opts.seconds) == (7, 1)
    assert dataclasses.replace(opts, command="") == options.DEFAULTS  # the CLI takes the bench's defaults
    assert opts.configs == datapath.CONFIGS and opts.ext_configs == datapath.EXT_CONFIGS
    assert opts.sizes == (8192, 81920, 819200) and opts.port_lnids == (1, 16)
    assert (Path("bench/results") / "latest.json").exists()


def test_data_path_options_parse(captured: list[datapath.Options]) -> None:
    argv = ["bench", "data-path", "--rounds", "9", "--configs", "none,bridge", "--ext-configs", "none",
            "--sizes", "8_192,81920", "--port-lnids", "1", "--programming", "", "--plots", ""]  # fmt: skip
    res = CliRunner().invoke(cli.main, argv)
    assert res.exit_code == 0, res.output
    (opts,) = captured
    assert opts.rounds == 9 and opts.configs == ("none", "bridge") and opts.ext_configs == ("none",)
    assert opts.sizes == (8192, 81920) and opts.port_lnids == (1,) and opts.programming == ()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--configs", "bridge,tofu"], "unknown config tofu"),
        (["--ext-configs", "vxlan"], "add none to --ext-configs"),
        (["--sizes", "eight"], "not a comma-separated list of integers"),
        (["--port-lnids", "200"], "--port-lnids values must be 1..128"),
    ],
)
def test_data_path_rejects_bad_options(captured: list[datapath.Options], argv: list[str], message: str) -> None:
    res = CliRunner().invoke(cli.main, ["bench", "data-path", *argv])
    assert res.exit_code != 0 and message in res.output, res.output
    assert not captured


def test_plan_fits_the_default_grid() -> None:
    main, cells, skipped = datapath.plan(datapath.Options())
    assert main.cases("vm") == ["none", "bridge", "ovs-none", "ovs", "macvtap-none", "macvtap"]
    assert main.cases("ext") == ["vxlan", "none", "bridge"]
    assert main.loads("vm") == ["lat_us", "udp_gbps", "tcp_gbps"]
    assert [(c.macs, c.port_lnids) for c in cells] == [(81920, 1), (819200, 1), (8192, 16), (81920, 16)]
    assert [(s["macs"], s["port_lnids"]) for s in skipped] == [(819200, 16)]


def test_bench_topology_is_data_that_validates() -> None:
    """The bench's cells are built from the topology module's types; they pass its parser's checks."""
    import yaml

    from hostvlan.bench import benchnet
    from hostvlan.testbed.topology import parse_topology

    topo = benchnet.topology(list(datapath.CONFIGS), 8192, 16, external=True)
    assert parse_topology(yaml.safe_dump(topo.to_dict())) == topo
    assert [h.name for h in topo.hosts] == list(datapath.CONFIGS)
    assert [e.name for e in topo.external] == ["ext", "vtep"]
    bridge = next(h for h in topo.hosts if h.name == "bridge")
    assert bridge.fill is not None and (bridge.fill.lnids, bridge.fill.ports, bridge.fill.port_lnids) == (128, 126, 16)
    assert [v.name for v in next(h for h in topo.hosts if h.name == "vxlan").vms] == ["vxlan-2"]
