"""Control-plane latency on a real testbed: `reg` → enforced on every affected host, and
allowed-traffic loss while an agent is killed (-9) and restarted.

Builds the paper's Fig. 7 plus two hosts (host4: vm4-1 LNID 1, vm4-3 LNID 3; host5:
vm5-2 LNID 2, vm5-3 LNID 3): one manager process, five agent processes. A trial is the
paper's example, vm1-1 (host1) joining LNID 3, whose members sit on host2…host5, so all
five hosts must change. Time runs from the moment POST /v1/reg returns:

  (a) in_sync — until GET /v1/hosts shows every affected host in sync (each agent has
      applied the revision and reported it to the manager);
  (b) frames  — until real frames get through, in the same round of probes, both ways:
      vm1-1's broadcast reaches every LNID 3 member and each member's frame reaches vm1-1.

(a) and (b) run as separate trial sets so neither's polling slows the other; after each
trial the membership is removed again and the hosts resync. Then `--restarts` times an
agent (round robin) is killed with SIGKILL and started again while four flows run at
`--rate` frames/s each (two allowed, two cross-LNID), counting what arrives.

    sudo .venv/bin/python bench/control_latency.py [--trials 60] [--restarts 5] [--rate 200]

Prints one JSON object. A benchmark, not a test: it asserts nothing and never gates CI.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from hostvlan.model.ids import Mac
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.topology import parse_topology
from hostvlan.testbed.traffic import BROADCAST, Probe, frame

TOPOLOGY = """
hosts:
  - name: host1
    vms:
      - {name: vm1-1, mac: "52:54:00:00:01:01", lnids: [1]}
      - {name: vm1-2, mac: "52:54:00:00:01:02", lnids: [2]}
  - name: host2
    vms:
      - {name: vm2-1, mac: "52:54:00:00:02:01", lnids: [1]}
      - {name: vm2-3, mac: "52:54:00:00:02:03", lnids: [3]}
  - name: host3
    vms:
      - {name: vm3-2-1, mac: "52:54:00:00:03:21", lnids: [2]}
      - {name: vm3-2-2, mac: "52:54:00:00:03:22", lnids: [2]}
      - {name: vm3-3, mac: "52:54:00:00:03:03", lnids: [3]}
  - name: host4
    vms:
      - {name: vm4-1, mac: "52:54:00:00:04:01", lnids: [1]}
      - {name: vm4-3, mac: "52:54:00:00:04:03", lnids: [3]}
  - name: host5
    vms:
      - {name: vm5-2, mac: "52:54:00:00:05:02", lnids: [2]}
      - {name: vm5-3, mac: "52:54:00:00:05:03", lnids: [3]}
"""
JOINER = "vm1-1"
LNID = 3
MEMBERS = ("vm2-3", "vm3-3", "vm4-3", "vm5-3")
AFFECTED = ("host1", "host2", "host3", "host4", "host5")


def stats(values: Sequence[float]) -> dict[str, float]:
    s = sorted(values)
    p99 = s[max(0, math.ceil(0.99 * len(s)) - 1)]
    return {
        "n": len(s),
        "median_ms": round(statistics.median(s) * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "min_ms": round(s[0] * 1000, 2),
        "max_ms": round(s[-1] * 1000, 2),
    }


class Bench:
    def __init__(self, tb: Testbed) -> None:
        self.tb = tb
        self.api = httpx.Client(
            base_url=tb.manager_url, headers={"Authorization": f"Bearer {tb.manager_token}"}, timeout=10.0
        )
        self.mac = {n: vm.mac for n, vm in tb.vms.items()}

    def close(self) -> None:
        self.api.close()

    def command(self, path: str, body: dict[str, Any]) -> tuple[float, int]:
        """POST a command; (when it returned, the revision it made)."""
        resp = self.api.post(path, json=body)
        t = time.monotonic()
        resp.raise_for_status()
        return t, int(resp.json()["revision"])

    def in_sync(self, hosts: Sequence[str], revision: int | None) -> bool:
        st = {h["name"]: h for h in self.api.get("/v1/hosts").json()}
        if revision is not None:  # the measurement is only meaningful if the change concerns them all
            assert all(st[h]["revision_due"] == revision for h in hosts), st
        return all(st[h]["in_sync"] for h in hosts)

    def wait_sync(self, hosts: Sequence[str], cmd: tuple[float, int], timeout: float = 10.0) -> float:
        t0, revision = cmd
        while not self.in_sync(hosts, revision):
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"hosts not in sync after {timeout}s")
            time.sleep(0.001)  # leave the CPU to the agents and the manager
        return time.monotonic() - t0

    def join(self) -> tuple[float, int]:
        return self.command("/v1/reg", {"lnid": LNID, "mac": self.mac[JOINER], "host": "host1"})

    def leave(self) -> tuple[float, int]:
        return self.command("/v1/unreg", {"lnid": LNID, "mac": self.mac[JOINER]})

    # (a) ------------------------------------------------------------------------------------
    def trials_sync(self, n: int) -> dict[str, Any]:
        reg, unreg = [], []
        for _ in range(n):
            reg.append(self.wait_sync(AFFECTED, self.join()))
            unreg.append(self.wait_sync(AFFECTED, self.leave()))
        return {"reg_to_in_sync": stats(reg), "unreg_to_in_sync": stats(unreg)}

    # (b) ------------------------------------------------------------------------------------
    def trials_frames(self, n: int, period: float = 0.001) -> dict[str, Any]:
        out: list[float] = []
        with Probe() as probe:
            for name, vm in self.tb.vms.items():
                probe.attach(name, vm.netns)
            for trial in range(n):
                t0, _ = self.join()
                out.append(self._first_full_round(probe, f"b{trial}", t0, period))
                self.wait_sync(AFFECTED, self.leave())
        return {"reg_to_frames": stats(out)}

    def _first_full_round(self, probe: Probe, label: str, t0: float, period: float) -> float:
        """Send rounds of probes (vm1-1's broadcast, each member's unicast to vm1-1); the send
        time of the first round whose every frame arrived, minus t0."""
        want = {(JOINER, m) for m in MEMBERS} | {(m, JOINER) for m in MEMBERS}
        sent_at: list[float] = []
        got: dict[int, set[tuple[str, str]]] = {}
        probe.drain()
        while True:
            k = len(sent_at)
            sent_at.append(time.monotonic())
            probe.send(JOINER, frame(BROADCAST, self.mac[JOINER], f"{label}/{k}/{JOINER}"))
            for m in MEMBERS:
                probe.send(m, frame(self.mac[JOINER], self.mac[m], f"{label}/{k}/{m}", vlan=100))
            time.sleep(period)
            for receiver, frames in probe.collect(settle=0).items():
                for fr in frames:
                    parts = fr.tag.split("/")
                    if len(parts) == 3 and parts[0] == label:
                        got.setdefault(int(parts[1]), set()).add((parts[2], receiver))
            for j, pairs in sorted(got.items()):
                if want <= pairs:
                    return max(0.0, sent_at[j] - t0)
            if time.monotonic() - t0 > 10.0:
                raise TimeoutError("frames never got through")

    # (c) ------------------------------------------------------------------------------------
    def restarts(self, count: int, rate: float) -> dict[str, Any]:
        vms = list(self.tb.vms)
        flows = [  # (sender, dst, allowed receivers, forbidden receivers)
            ("vm1-1", self.mac["vm2-1"], {"vm2-1"}, set()),
            ("vm3-2-1", BROADCAST, {"vm1-2", "vm3-2-2", "vm5-2"}, set()),
            ("vm1-2", self.mac["vm1-1"], set(), {"vm1-1", "vm2-1", "vm4-1", "vm2-3", "vm3-3", "vm4-3", "vm5-3"}),
            ("vm2-3", BROADCAST, set(), {v for v in vms if v not in ("vm2-3", "vm3-3", "vm4-3", "vm5-3")}),
        ]
        hosts = list(self.tb.hosts)
        per: list[dict[str, Any]] = []
        with Probe() as probe:
            for name, vm in self.tb.vms.items():
                probe.attach(name, vm.netns)
            for i in range(count):
                host = hosts[i % len(hosts)]
                stream = Stream(probe, [(s, self.mac[s], d) for s, d, _, _ in flows], rate)
                stream.start()
                time.sleep(0.5)
                t = time.monotonic()
                self.tb.kill(f"agent:{host}")
                time.sleep(1.0)
                restart_s = self.tb.restart_agent(host)
                down_s = time.monotonic() - t
                time.sleep(0.5)
                stream.stop()
                sent = stream.sent
                allowed = sum(sent[j] * len(a) for j, (_, _, a, _) in enumerate(flows))
                received = sum(stream.got.get((j, r), 0) for j, (_, _, a, _) in enumerate(flows) for r in a)
                leaked = sum(stream.got.get((j, r), 0) for j, (_, _, _, f) in enumerate(flows) for r in f)
                per.append(
                    {
                        "host": host,
                        "agent_down_s": round(down_s, 3),
                        "restart_to_in_sync_s": round(restart_s, 3),
                        "allowed_expected": allowed,
                        "allowed_received": received,
                        "allowed_lost": allowed - received,
                        "cross_lnid_delivered": leaked,
                    }
                )
        return {
            "agent_restart": {
                "restarts": count,
                "rate_per_flow_fps": rate,
                "allowed_expected": sum(p["allowed_expected"] for p in per),
                "allowed_lost": sum(p["allowed_lost"] for p in per),
                "cross_lnid_delivered": sum(p["cross_lnid_delivered"] for p in per),
                "each": per,
            }
        }


@dataclass
class _Flow:
    sender: str
    src: Mac
    dst: Mac


class Stream(threading.Thread):
    """One frame per flow every 1/rate s until stopped; counts arrivals per (flow, receiver)."""

    def __init__(self, probe: Probe, flows: Sequence[tuple[str, Mac, Mac]], rate: float) -> None:
        super().__init__(daemon=True)
        self.probe = probe
        self.flows = [_Flow(*f) for f in flows]
        self.period = 1.0 / rate
        self.sent = [0] * len(self.flows)
        self.got: dict[tuple[int, str], int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        self.probe.drain()
        k, next_t = 0, time.monotonic()
        while not self._halt.is_set():
            for i, f in enumerate(self.flows):
                self.probe.send(f.sender, frame(f.dst, f.src, f"s/{k}/{i}", vlan=100))
                self.sent[i] += 1
            k += 1
            self._count(0.0)
            next_t += self.period
            time.sleep(max(0.0, next_t - time.monotonic()))
        self._count(0.2)

    def _count(self, settle: float) -> None:
        for receiver, frames in self.probe.collect(settle=settle).items():
            for fr in frames:
                parts = fr.tag.split("/")
                if len(parts) == 3 and parts[0] == "s":
                    key = (int(parts[2]), receiver)
                    self.got[key] = self.got.get(key, 0) + 1

    def stop(self) -> None:
        self._halt.set()
        self.join(10.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--rate", type=float, default=200.0)
    args = ap.parse_args()
    topo = parse_topology(TOPOLOGY, "control_latency")
    out: dict[str, Any] = {
        "hosts": len(topo.hosts),
        "vms": sum(len(h.vms) for h in topo.hosts),
        "trial": f"reg {LNID} {JOINER} on host1; affected hosts: {', '.join(AFFECTED)}",
        "trials": args.trials,
    }
    t0 = time.monotonic()
    with Testbed(topo) as tb:
        out["testbed_up_s"] = round(time.monotonic() - t0, 2)
        bench = Bench(tb)
        try:
            out.update(bench.trials_sync(args.trials))
            out.update(bench.trials_frames(args.trials))
            out.update(bench.restarts(args.restarts, args.rate))
        finally:
            bench.close()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
