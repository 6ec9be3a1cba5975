"""Observability end to end (issue 15): a real Prometheus (Debian's `prometheus`) scrapes a
testbed's manager and agents, and its HTTP query API returns the drop counters per reason
and each host's revision lag; `hostvlan drops HOST` shows a forged frame a VM sent, through
the manager; `hostvlan status` sums it up.

Prometheus runs inside the testbed's management namespace, where every target is reachable
(testbed/metrics.py): the agents on their management addresses, the manager on its
management listener. Its data and configuration live in the test's tmp dir; it listens on
127.0.0.1 (of that namespace) on a free port, and is stopped at the end.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hostvlan.model.ids import Mac
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID
from hostvlan.testbed import metrics as tbm
from hostvlan.testbed import netns
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.traffic import Probe, frame

from .support import running, topology_from_text

pytestmark = pytest.mark.root

TOPOLOGY = """
hosts:
  - name: hb
    backend: bridge
    vms:
      - {name: b1, mac: "52:54:00:0b:00:01", lnids: [1]}
      - {name: b2, mac: "52:54:00:0b:00:02", lnids: [1]}
      - {name: b3, mac: "52:54:00:0b:00:03", lnids: [2]}
  - name: ho
    backend: ovs
    vms:
      - {name: o1, mac: "52:54:00:0e:00:01", lnids: [1]}
      - {name: o2, mac: "52:54:00:0e:00:02", lnids: [2]}
"""
FORGED = Mac("02:de:ad:be:ef:15")
OTHER_FORGED = Mac("02:de:ad:be:ef:16")


@pytest.fixture
def tb(tmp_path: Path) -> Iterator[Testbed]:
    with running(topology_from_text(tmp_path, TOPOLOGY)) as bed:
        yield bed


def _free_port(ns: str) -> int:
    with netns.inside(ns):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
        s.close()
    return port


class Prometheus:
    """A Prometheus server in namespace `ns`, scraping `targets` every second."""

    def __init__(self, ns: str, workdir: Path, targets: dict[str, list[str]]) -> None:
        self.ns = ns
        self.port = _free_port(ns)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": t}]} for job, t in targets.items() if t
            ],
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        argv = [
            "ip", "netns", "exec", ns, "prometheus",
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]  # fmt: skip
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log)

    def get(self, path: str, **params: str) -> Any:
        with netns.inside(self.ns), httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5) as c:
            return c.get(path, params=params).json()

    def query(self, expr: str) -> list[dict[str, Any]]:
        ans = self.get("/api/v1/query", query=expr)
        assert ans["status"] == "success", ans
        return list(ans["data"]["result"])

    def wait(self, expr: str, ok: Any, timeout: float = 40.0) -> list[dict[str, Any]]:
        end = time.monotonic() + timeout
        got: list[dict[str, Any]] = []
        while time.monotonic() < end:
            assert self.proc.poll() is None, "prometheus exited"
            try:
                got = self.query(expr)
            except (httpx.HTTPError, ValueError):
                got = []
            if ok(got):
                return got
            time.sleep(0.5)
        raise AssertionError(f"{expr}: {got}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def _send(tb: Testbed, vm: str, dst: Mac, src: Mac, n: int, tag: str) -> None:
    probe = Probe()
    try:
        probe.attach(vm, tb.vms[vm].netns, tb.vms[vm].ifname)
        for _ in range(n):
            probe.send(vm, frame(dst, src, tag))
            time.sleep(0.01)
    finally:
        probe.close()


def _hv(tb: Testbed, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HOSTVLAN_MANAGER": tb.manager_url, "HOSTVLAN_TOKEN": tb.manager_token}
    return subprocess.run(
        [sys.executable, "-m", "hostvlan.cli", *args], env=env, capture_output=True, text=True, timeout=30, check=False
    )


def _value(series: list[dict[str, Any]], **labels: str) -> float | None:
    for s in series:
        if all(s["metric"].get(k) == v for k, v in labels.items()):
            return float(s["value"][1])
    return None


def test_prometheus_scrapes_drops_and_lag_and_hostvlan_drops_names_the_forged_source(
    tb: Testbed, tmp_path: Path
) -> None:
    record = tb.to_json()
    assert set(record["manager"]) >= {"metrics_url", "metrics_netns_url"}
    text = httpx.get(record["manager"]["metrics_url"], timeout=5).text  # from the root namespace
    assert "hostvlan_manager_revision " in text and "hostvlan_host_revision_lag{" in text
    for h in ("hb", "ho"):
        assert record["hosts"][h]["metrics"]["netns"] == tb.hosts[h].netns
        with netns.inside(tb.hosts[h].netns):
            assert "hostvlan_revision_applied" in httpx.get(record["hosts"][h]["metrics"]["url"], timeout=5).text

    b1, b2, b3, o1, o2 = (tb.vms[n] for n in ("b1", "b2", "b3", "o1", "o2"))
    _send(tb, "b1", b2.mac, FORGED, 3, "forged-b1")  # forged source: b1's port
    _send(tb, "b1", b3.mac, b1.mac, 2, "cross-b1")  # LNID 1 -> 2: b3's port
    _send(tb, "o1", o2.mac, FORGED, 4, "forged-o1")
    _send(tb, "o1", o2.mac, o1.mac, 2, "cross-o1")

    prom = Prometheus(tb.mgmt_ns, tmp_path, tbm.scrape_targets(record))
    try:
        up = prom.wait("up", lambda got: len(got) == 3 and all(s["value"][1] == "1" for s in got))
        assert {s["metric"]["job"] for s in up} == {"hostvlan-agent", "hostvlan-manager"}
        hb_at = record["hosts"]["hb"]["metrics"]["url"].removeprefix("http://").removesuffix("/metrics")
        ho_at = record["hosts"]["ho"]["metrics"]["url"].removeprefix("http://").removesuffix("/metrics")

        def forged(got: list[dict[str, Any]]) -> bool:
            return (_value(got, instance=hb_at, port=b1.port), _value(got, instance=ho_at, port=o1.port)) == (3, 4)

        prom.wait(f'hostvlan_drops_total{{reason="{FORGED_SOURCE}"}}', forged)

        def cross(got: list[dict[str, Any]]) -> bool:  # at least: the VMs' own IPv6 multicast crosses LNIDs too
            counts = (_value(got, instance=hb_at, port=b3.port), _value(got, instance=ho_at, port=o2.port))
            return all(n is not None and n >= 2 for n in counts)

        prom.wait(f'hostvlan_drops_total{{reason="{NO_SHARED_LNID}"}}', cross)
        lag = prom.wait(
            "hostvlan_host_revision_lag", lambda got: {s["metric"].get("host") for s in got} >= {"hb", "ho"}
        )
        assert {s["metric"]["host"]: float(s["value"][1]) for s in lag} == {"hb": 0.0, "ho": 0.0}
        prom.wait("hostvlan_host_connected == 1", lambda got: len(got) == 2)
    finally:
        prom.stop()

    # hostvlan drops, on the manager's machine: the forged source, its port, its reason
    end = time.monotonic() + 20
    while True:
        out = _hv(tb, "drops", "hb", "--json", "--reason", FORGED_SOURCE)
        assert out.returncode == 0, out.stderr
        events = json.loads(out.stdout)["events"]
        if len(events) >= 3 or time.monotonic() > end:
            break
        time.sleep(0.5)
    assert len(events) == 3
    assert {(e["src"], e["dst"], e["port"], e["reason"]) for e in events} == {(FORGED, b2.mac, b1.port, FORGED_SOURCE)}
    # --follow: a new forged frame shows up as one JSON line
    env = {**os.environ, "HOSTVLAN_MANAGER": tb.manager_url, "HOSTVLAN_TOKEN": tb.manager_token}
    follow = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hostvlan.cli",
            "drops",
            "hb",
            "--follow",
            "--json",
            "--interval",
            "0.2",
            "--reason",
            FORGED_SOURCE,
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert follow.stdout is not None
    threading.Thread(target=lambda: [lines.put(x) for x in follow.stdout or []], daemon=True).start()
    try:
        for _ in range(3):  # the three already reported come first
            assert json.loads(lines.get(timeout=15))["src"] == FORGED
        _send(tb, "b2", b1.mac, OTHER_FORGED, 1, "forged-b2")
        line = json.loads(lines.get(timeout=15))  # within the agent's report period (2 s)
        assert (line["src"], line["port"], line["reason"]) == (OTHER_FORGED, b2.port, FORGED_SOURCE)
    finally:
        follow.terminate()
        follow.wait(10)
        follow.stdout.close()
    ovs = json.loads(_hv(tb, "drops", "ho", "--json", "--reason", FORGED_SOURCE).stdout)["events"]
    assert {(e["src"], e["port"]) for e in ovs} == {(FORGED, o1.port)}  # OVS: the drop flow's packet-ins
    text_out = _hv(tb, "drops", "hb").stdout
    assert FORGED in text_out and "DROPPED forged_source" in text_out
    status = _hv(tb, "status", "--json")
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["summary"]["hosts"] == 2 and st["summary"]["in_sync"] == 2
    minute = {h["name"]: h["drops_last_minute"] for h in st["hosts"]}  # each agent reported zero drops first
    # forged frames only the test sends: exact; cross-LNID drops at least the test's (the VMs'
    # own IPv6 multicast, MLD and ND, crosses LNIDs and unbound ports too)
    assert {h: m.get(FORGED_SOURCE) for h, m in minute.items()} == {"hb": 4, "ho": 4}
    assert all(m.get(NO_SHARED_LNID, 0) >= 2 for m in minute.values()), minute
    assert st["drops_last_minute"][FORGED_SOURCE] == 8 and st["drops_last_minute"][NO_SHARED_LNID] >= 4
    assert "drops in the last minute" in _hv(tb, "status").stdout
