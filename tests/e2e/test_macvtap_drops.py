"""`hostvlan drops HOST` on a macvtap host (issue 15): a forged frame and a cross-LNID frame a
VM sends are counted with their reasons and show up as drop events naming the forged source
MAC, through the agent (NFLOG reader of the back end, `nft_events`) and the manager, as on
the bridge and OVS (`test_observability`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostvlan.model.ids import Mac
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.traffic import ETH_P_PROBE

from .support import running, topology_from_text
from .test_observability import _hv, _send

pytestmark = pytest.mark.root

TOPOLOGY = """
hosts:
  - name: hm
    backend: macvtap
    vms:
      - {name: m1, mac: "52:54:00:0c:00:01", lnids: [1]}
      - {name: m2, mac: "52:54:00:0c:00:02", lnids: [1]}
      - {name: m3, mac: "52:54:00:0c:00:03", lnids: [2]}
"""
FORGED = Mac("02:de:ad:be:ef:25")


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[Testbed]:
    with running(topology_from_text(tmp_path, TOPOLOGY)) as bed:
        yield bed


def _drops(tb: Testbed, want: int, *args: str) -> dict[str, Any]:
    """`hostvlan drops hm --json ARGS` once it has `want` events (or after 20 s)."""
    end = time.monotonic() + 20
    while True:
        out = _hv(tb, "drops", "hm", "--json", *args)
        assert out.returncode == 0, out.stderr
        got: dict[str, Any] = json.loads(out.stdout)
        if len(got["events"]) >= want or time.monotonic() > end:
            return got
        time.sleep(0.5)


def test_hostvlan_drops_names_the_forged_source_of_a_macvtap_vm(tb: Testbed) -> None:
    m1, m2, m3 = (tb.vms[n] for n in ("m1", "m2", "m3"))
    _send(tb, "m1", m2.mac, FORGED, 3, "forged-m1")  # forged source: m1's macvtap (its egress)
    _send(tb, "m1", m3.mac, m1.mac, 2, "cross-m1")  # LNID 1 -> 2: m3's macvtap (its ingress)
    forged = _drops(tb, 3, "--reason", FORGED_SOURCE)
    assert len(forged["events"]) == 3
    assert {(e["src"], e["dst"], e["port"], e["reason"]) for e in forged["events"]} == {
        (FORGED, m2.mac, m1.port, FORGED_SOURCE)
    }
    # the guests' own IPv6 multicast (MLD reports to 33:33:00:00:00:16) crosses LNIDs too: the probe's type only
    cross = _drops(tb, 2, "--reason", NO_SHARED_LNID)
    probes = [e for e in cross["events"] if e["ethertype"] == ETH_P_PROBE]
    assert {(e["src"], e["dst"], e["port"]) for e in probes} == {(m1.mac, m3.mac, m3.port)}
    assert len(probes) == 2
    want = {(m1.port, FORGED_SOURCE): 3, (m3.port, NO_SHARED_LNID): 2}
    end = time.monotonic() + 10  # the counters of a report are read before its events
    while True:
        counts = {(c["port"], c["reason"]): c["count"] for c in _drops(tb, 0)["counters"]}
        if all(counts.get(k, 0) >= n for k, n in want.items()) or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert counts.get((m1.port, FORGED_SOURCE)) == 3  # exact: nothing else forges
    assert counts.get((m3.port, NO_SHARED_LNID), 0) >= 2  # (+ the guests' MLD reports)
    text = _hv(tb, "drops", "hm").stdout
    assert FORGED in text and "DROPPED forged_source" in text
