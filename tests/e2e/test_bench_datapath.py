"""`hostvlan bench data-path --quick` as a user runs it: a smoke test of the harness.

It checks the shape of the JSON and that every configured measurement produced a positive
number; never a timing threshold (benchmarks do not gate CI on numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hostvlan.testbed import netns

pytestmark = pytest.mark.root

HOSTVLAN = Path(sys.executable).parent / "hostvlan"


def _positive(stats: dict[str, object]) -> None:
    assert isinstance(stats["median"], float) and stats["median"] > 0, stats
    assert 0 < stats["min"] <= stats["median"] <= stats["max"], stats  # type: ignore[operator]


def test_bench_quick_reports_every_measurement(tmp_path: Path) -> None:
    out, plots = tmp_path / "results", tmp_path / "plots"
    proc = subprocess.run(
        [str(HOSTVLAN), "bench", "data-path", "--quick", "--out", str(out), "--plots", str(plots)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert json.loads((out / "latest.json").read_text()) == result
    assert len(list(out.glob("datapath-*.json"))) == 1
    assert "ETA" in proc.stderr  # progress, one line per step

    opts = result["options"]
    assert result["kind"] == "hostvlan-bench-datapath"
    assert result["machine"]["nproc"] >= 1 and result["machine"]["kernel"]
    main = result["main"]
    assert set(main["paths"]) == set(opts["paths"])
    for path, per_workload in main["paths"].items():
        web = {"ab_rps", "wrk_rps"}  # web clients are outside only
        assert set(per_workload) == set(opts["workloads"]) - (web if path == "vm" else set())
        for w, summary in per_workload.items():
            want = opts["ext_configs"] if path == "ext" else [c for c in opts["configs"] if c != "vxlan"]
            assert sorted(summary["configs"]) == sorted(want), (path, w)
            for stats in summary["configs"].values():
                assert len(stats["samples"]) == opts["rounds"]
                _positive(stats)
            pairs = {f"{f}/{u}" for f, u in result["pairs"].items() if f in want and u in want}
            assert set(summary["ratios"]) == pairs, (path, w)
            for ratio in summary["ratios"].values():
                _positive(ratio)
                assert isinstance(ratio["overhead_pct"], float)
    assert main["entries"]["bridge"] > opts["sizes"][0] // 2

    assert len(result["sweep"]) == len(opts["sizes"]) * len(opts["port_lnids"])
    for point in result["sweep"]:
        assert point["entries"] > point["macs"] // 2
        if "programming" in point:  # programmed directly (the main testbed's point: by its agent)
            assert point["programming"]["install_ms"] > 0 and point["programming"]["resync_ms"] > 0
        for summary in point["paths"]["vm"].values():
            for stats in summary["configs"].values():
                _positive(stats)
            _positive(summary["ratios"]["bridge/none"])

    assert result["programming"]
    for prog in result["programming"]:
        assert prog["install_ms"] > 0 and prog["resync_ms_median"] > 0
        assert prog["change_entry_ms"]["median"] > 0 and prog["change_binding_ms"]["median"] > 0

    assert sorted(p.name for p in plots.glob("*.png")) == [
        "datapath-latency.png",
        "datapath-table-size.png",
        "datapath-throughput.png",
        "datapath-web.png",
    ]
    left = [n for n in netns.list_netns() if any(n.startswith(f"{p}-") for p in result["netns_prefixes"])]
    assert not left, f"the bench left namespaces behind: {left}"
