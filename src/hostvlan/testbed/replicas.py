"""The testbed's replicated control plane: `control: {managers: N, store: etcd}`.

    root namespace                                   <prefix>-mg (management switch)
    etcd e0 e1 e2 ── 127.0.0.1 (client, peer ports) ◄── 10.201.0.1:2379+k (etcdlink, bound there)
      ▲  link i (testbed.etcdlink, one per replica: SIGSTOP = its link down)
    replica i ── 127.0.0.1:P_i (CLI)                 10.201.0.1:7080+i (agents)

A 3-member etcd cluster (`testbed.etcd`), N `hostvlan manager --store etcd://…` replicas
sharing one admin token file; agent j is given every replica's management URL starting
with replica j mod N, so the agents are spread over them and fail over in order. The
pids are in the testbed's `pids` (`etcd:<member>`, `manager:<i>`, `etcdlink:<i>`), so
`down` stops all of it, also from the state file after a crash.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Protocol

from hostvlan.client import Client, ManagerError
from hostvlan.testbed import control
from hostvlan.testbed.etcd import Cluster, free_ports

ETCD_MGMT_PORT = 2379  # member k's client URL on the management network: 10.201.0.1:2379+k


class Testbed(Protocol):
    """What the replicas take of the testbed they run in (`testbed.build.Testbed`)."""

    prefix: str
    workdir: Path
    mgmt_ns: str
    manager_url: str
    manager_token: str
    api: Client | None
    pids: dict[str, int]
    _procs: list[subprocess.Popen[bytes]]

    def kill(self, name: str, timeout: float = 10.0) -> None: ...


class Replicas:
    def __init__(self, tb: Testbed, n: int) -> None:
        self.tb = tb
        self.n = n
        self.cluster = Cluster(tb.workdir, 3, prefix=tb.prefix)
        self.urls: list[str] = [""] * n  # root-namespace URL of each replica
        self.link_ports: list[list[int]] = [free_ports(3) for _ in range(n)]
        self.token_file = tb.workdir / "manager.admin-token"
        self._clients: dict[str, Client] = {}

    @classmethod
    def attach(cls, tb: Testbed, data: dict[str, Any]) -> Replicas:
        """The replicas of a running testbed, from its state file (`managers`, `etcd`)."""
        r = cls(tb, len(data["managers"]))
        r.urls = [str(m["url"]) for m in data["managers"]]
        for m, rec in zip(r.cluster.members, data["etcd"]["members"], strict=True):
            m.name, m.pid = str(rec["name"]), int(rec["pid"])
            m.client_port = int(str(rec["client_url"]).rpartition(":")[2])
        tb.manager_url = r.urls[0]
        return r

    def mgmt_url(self, i: int) -> str:
        return f"http://{control.MGMT_NET}.1:{control.MGMT_PORT + i}"

    def agent_managers(self, index: int) -> str:
        """Agent `index`'s --manager: every replica, starting with `index mod N`."""
        order = [(index + k) % self.n for k in range(self.n)]
        return ",".join(self.mgmt_url(i) for i in order)

    # ----- starting -----------------------------------------------------------------------------
    def start(self) -> None:
        self.cluster.start()
        for m in self.cluster.members:
            self.tb.pids[f"etcd:{m.name}"] = m.pid
        for i in range(self.n):
            self._start_link(i)
        self._start_mgmt_link()
        self.start_replica(0)  # creates the admin token the others share
        pending = [self._spawn(i) for i in range(1, self.n)]
        for i, (proc, ready) in enumerate(pending, start=1):
            self._ready(i, proc, ready)
        self.tb.manager_url = self.urls[0]
        self.tb.manager_token = self.token_file.read_text().strip()
        self.tb.api = Client(",".join(self.urls), self.tb.manager_token)

    def _start_link(self, i: int) -> None:
        ready = self.tb.workdir / f"etcdlink{i}.ready"
        ready.unlink(missing_ok=True)
        pairs = [f"{p}={m.client_port}" for p, m in zip(self.link_ports[i], self.cluster.members, strict=True)]
        argv = [*control.hostvlan_argv()[:2], "hostvlan.testbed.etcdlink", "--ready", str(ready), *pairs]
        proc = control.start(argv, self.tb.workdir / f"etcdlink{i}.log")
        self.tb.pids[f"etcdlink:{i}"] = proc.pid
        self.tb._procs.append(proc)
        control.wait_file(ready, proc, f"the etcd link of replica {i}")

    def mgmt_client_url(self, k: int) -> str:
        """Member k's client URL on the management network (forwarded to its loopback one)."""
        return f"http://{control.MGMT_NET}.1:{ETCD_MGMT_PORT + k}"

    def _start_mgmt_link(self) -> None:
        ready = self.tb.workdir / "etcdlink-mgmt.ready"
        ready.unlink(missing_ok=True)
        pairs = [f"{ETCD_MGMT_PORT + k}={m.client_port}" for k, m in enumerate(self.cluster.members)]
        argv = [*control.hostvlan_argv()[:2], "hostvlan.testbed.etcdlink", "--ready", str(ready)]
        argv += ["--netns", self.tb.mgmt_ns, "--host", f"{control.MGMT_NET}.1", *pairs]
        proc = control.start(argv, self.tb.workdir / "etcdlink-mgmt.log")
        self.tb.pids["etcdlink:mgmt"] = proc.pid
        self.tb._procs.append(proc)
        control.wait_file(ready, proc, "the etcd link on the management network")

    def store_url(self, i: int) -> str:
        return "etcd://" + ",".join(f"127.0.0.1:{p}" for p in self.link_ports[i])

    def _spawn(self, i: int) -> tuple[subprocess.Popen[bytes], Path]:
        wd = self.tb.workdir
        ready = wd / f"manager{i}.ready"
        ready.unlink(missing_ok=True)
        mgmt = f"{self.tb.mgmt_ns}/{control.MGMT_NET}.1:{control.MGMT_PORT + i}"
        argv = control.hostvlan_argv(
            "manager", "--db", str(wd / f"manager{i}.db"), "--store", self.store_url(i),
            "--admin-token-file", str(self.token_file), "--audit-log", str(wd / f"manager{i}.audit.jsonl"),
            "--listen", "127.0.0.1:0", "--listen", mgmt, "--ready-file", str(ready), "--log-level", "info",
        )  # fmt: skip
        proc = control.start(argv, wd / f"manager{i}.log")
        self.tb.pids[f"manager:{i}"] = proc.pid
        self.tb._procs.append(proc)
        return proc, ready

    def _ready(self, i: int, proc: subprocess.Popen[bytes], ready: Path) -> None:
        info = control.wait_file(ready, proc, f"manager replica {i}", timeout=30.0)
        self.urls[i] = str(info["listen"][0]["url"])
        old = self._clients.pop(str(i), None)
        if old is not None:
            old.close()

    def start_replica(self, i: int) -> None:
        """Start replica `i` (again, after a kill) and wait until it serves."""
        self._ready(i, *self._spawn(i))
        if self.tb.api is not None and self.tb.manager_token:
            self.tb.api.close()
            self.tb.api = Client(",".join(self.urls), self.tb.manager_token)

    # ----- faults ---------------------------------------------------------------------------
    def kill_replica(self, i: int) -> None:
        """SIGKILL replica `i`, as a crash would."""
        self.tb.kill(f"manager:{i}")

    def cut(self, i: int, down: bool = True) -> None:
        """Replica `i`'s link to etcd down (frozen: its connections hang) or up again."""
        os.kill(self.tb.pids[f"etcdlink:{i}"], signal.SIGSTOP if down else signal.SIGCONT)

    def kill_member(self, name: str) -> None:
        m = next(x for x in self.cluster.members if x.name == name)
        self.cluster.kill(m)

    def start_member(self, name: str) -> None:
        m = next(x for x in self.cluster.members if x.name == name)
        self.cluster.start_member(m)
        self.tb.pids[f"etcd:{m.name}"] = m.pid

    # ----- reading ----------------------------------------------------------------------------
    def client(self, i: int) -> Client:
        c = self._clients.get(str(i))
        if c is None:
            c = self._clients[str(i)] = Client(self.urls[i], self.tb.manager_token)
        return c

    def alive(self) -> list[int]:
        return [i for i in range(self.n) if control.running(self.tb.pids.get(f"manager:{i}", 0) or -1)]

    def revision(self) -> int:
        return max(int(self.client(i).call("GET", "/v1/revision")["revision"]) for i in self.alive())

    def tables(self, at: int | None = None) -> dict[int, list[dict[str, Any]]]:
        """Each live replica's table once it reflects revision `at` (default: the highest)."""
        rev = self.revision() if at is None else at
        params = {"min_revision": str(rev)}
        return {i: self.client(i).call("GET", "/v1/macs", params=params) for i in self.alive()}

    def wait_synced(self, hosts: list[str], timeout: float = 15.0) -> float:
        """Until every host is in sync on the replica it is connected to (at the latest revision)."""
        t0 = time.monotonic()
        while True:
            rev = self.revision()
            synced: set[str] = set()
            for i in self.alive():
                got = self.client(i).call("GET", "/v1/hosts", params={"min_revision": str(rev)})
                synced |= {h["name"] for h in got if h["in_sync"]}
            lagging = [h for h in hosts if h not in synced]
            if not lagging:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"agents not in sync after {timeout}s: {', '.join(lagging)}")
            time.sleep(0.02)

    def wait_applied(
        self, hosts: list[str], revision: int, timeout: float = 15.0, on: list[int] | None = None
    ) -> float:
        """Until every host's agent is connected to a live replica (one of `on`) and enforces
        `revision` or later (while commands go on, "in sync" may never hold for long)."""
        t0 = time.monotonic()
        while True:
            done: set[str] = set()
            for i in self.alive() if on is None else on:
                try:
                    got = self.client(i).hosts()
                except ManagerError:
                    continue
                done |= {h["name"] for h in got if h["connected"] and h["revision_applied"] >= revision}
            lagging = [h for h in hosts if h not in done]
            if not lagging:
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"agents not at r{revision} after {timeout}s: {', '.join(lagging)}")
            time.sleep(0.01)

    def record(self) -> dict[str, Any]:
        """The testbed JSON's `managers` and `etcd`."""
        managers = [{"url": u, "pid": self.tb.pids.get(f"manager:{i}", 0)} for i, u in enumerate(self.urls)]
        etcd = self.cluster.record()
        for k, m in enumerate(etcd["members"]):
            m["mgmt_url"] = self.mgmt_client_url(k)
        return {"managers": managers, "etcd": etcd}

    def close(self) -> None:
        for c in self._clients.values():
            c.close()
        self._clients.clear()


__all__ = ["Replicas"]
