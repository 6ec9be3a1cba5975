"""`hostvlan trace` is exact (issue 14): on a testbed with vNICs registered without a port,
one registered on a port that does not exist and one on another vNIC's port, the trace of
every ordered pair of endpoints equals what real broadcast frames do, and `show`/`hosts`
report the two mistyped ones unbound with the reason."""

from __future__ import annotations

import time
from pathlib import Path

from hostvlan.testbed.check import run_check

from .support import running, topology_from_text

TOPOLOGY = """
hosts:
  - name: h1
    backend: bridge
    vms:
      - {name: a, mac: "52:54:00:7a:00:01", lnids: [1]}
      - {name: b, mac: "52:54:00:7a:00:02", lnids: [1]}
      - {name: c, mac: "52:54:00:7a:00:03", lnids: [2]}
      - {name: d, mac: "52:54:00:7a:00:04", lnids: [1]}
  - name: h2
    backend: bridge
    vms:
      - {name: e, mac: "52:54:00:7a:00:05", lnids: [1]}
      - {name: f, mac: "52:54:00:7a:00:06", lnids: [2]}
external:
  - {name: gw, mac: "52:54:00:7a:00:ff", lnids: [global]}
"""


def test_trace_equals_real_frames_for_every_ordered_pair(tmp_path: Path) -> None:
    with running(topology_from_text(tmp_path, TOPOLOGY)) as tb:
        api = tb.api
        assert api is not None
        macs = {n: tb.endpoint(n).mac for n in (*tb.vms, *tb.external)}
        # a mistyped port (no such device) and another vNIC's port (its device carries f's MAC)
        api.move(macs["d"], "h1", "vnet9")
        api.move(macs["e"], "h2", tb.vms["f"].port)
        deadline = time.monotonic() + 30
        while True:
            rows = {r["mac"]: r for r in api.macs()}
            states = {n: rows[m]["state"] for n, m in macs.items()}
            if all(states[n].startswith("unbound: ") for n in ("d", "e")) and all(
                states[n] == "bound" for n in ("a", "b", "c", "f")
            ):
                break
            assert time.monotonic() < deadline, f"the agents did not report the bindings: {states}"
            time.sleep(0.2)
        assert "no such port vnet9" in states["d"], states["d"]
        assert f"{tb.vms['f'].port} carries MAC" in states["e"], states["e"]
        hosts = {h["name"]: h for h in api.hosts()}
        assert (hosts["h1"]["unbound"], hosts["h2"]["unbound"]) == (1, 1), hosts
        assert rows[macs["a"]]["bound_port"] == tb.vms["a"].port  # registered without a port, found by the agent
        tb.program()

        report = run_check(tb, kinds=("broadcast",), forged=False)
        checked = 0
        for s in macs:
            for r in macs:
                if r == s:
                    continue
                got = report.matrix[s][r]
                t = api.trace(macs[s], macs[r])
                assert t["allow"] is got, f"trace {s} -> {r} says {t['allow']} ({t['reason']}); frames: {got}"
                checked += 1
        assert checked == len(macs) * (len(macs) - 1)
        # the pairs that must hold either way: the mistyped vNICs neither send nor receive,
        # port-less vNICs of one LNID talk, and LNIDs stay apart
        assert not any(report.matrix["d"].values()) and not any(report.matrix["e"].values())
        assert report.matrix["a"]["b"] and report.matrix["b"]["a"] and not report.matrix["a"]["c"]
