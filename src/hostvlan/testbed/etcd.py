"""An etcd cluster for a replicated control plane (testbed key `control: {managers: N, store: etcd}`).

Three `etcd` members (Debian's etcd-server, 3.4) on the root namespace's loopback, data
in the run's work directory, short Raft timers (heartbeat 50 ms, election 500 ms) so a
killed leader is replaced within about a second, and limits large enough for the bulk
commands (`--max-txn-ops`, `--max-request-bytes`: one `hostvlan batch` is one txn).
Every member is its own session (stopped on teardown, also after a crash: `record.py`
keeps the pids).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ETCD = "/usr/bin/etcd"
MAX_TXN_OPS = 1 << 20
MAX_REQUEST_BYTES = 128 << 20


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class Cluster:
    """`n` etcd members under `workdir/etcd/` (see the module's doc)."""

    def __init__(self, workdir: Path, n: int = 3, prefix: str = "hv") -> None:
        ports = free_ports(2 * n)
        base = workdir / "etcd"
        base.mkdir(parents=True, exist_ok=True)
        self.token = f"{prefix}-{int(time.time() * 1000)}"
        self.members = [
            Member(f"{prefix}-e{i}", ports[2 * i], ports[2 * i + 1], base / f"e{i}", base / f"e{i}.log")
            for i in range(n)
        ]

    @property
    def store_url(self) -> str:
        """The managers' `--store`."""
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def argv(self, m: Member, state: str) -> list[str]:
        peers = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        return [
            ETCD, "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", peers, "--initial-cluster-state", state, "--initial-cluster-token", self.token,
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--max-txn-ops", str(MAX_TXN_OPS), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--quota-backend-bytes", str(8 << 30), "--logger", "zap", "--log-level", "warn",
        ]  # fmt: skip

    def start(self, timeout: float = 20.0) -> None:
        for m in self.members:
            self.start_member(m)
        self.wait_healthy(timeout)

    def start_member(self, m: Member) -> None:
        state = "existing" if (m.data_dir / "member").exists() else "new"
        with m.log.open("ab") as fh:
            m.proc = subprocess.Popen(
                self.argv(m, state), stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True
            )
        m.pid = m.proc.pid

    def wait_healthy(self, timeout: float = 20.0, members: list[Member] | None = None) -> None:
        """Until every (running) member answers a linearizable read."""
        end = time.monotonic() + timeout
        for m in members or [x for x in self.members if x.proc is not None]:
            while True:
                try:
                    _post(m.client_url + "/v3/kv/range", {"key": "aGVhbHRo"}, 1.0)
                    break
                except OSError:
                    if m.proc is not None and m.proc.poll() is not None:
                        raise RuntimeError(f"etcd member {m.name} exited ({m.proc.returncode}); see {m.log}") from None
                    if time.monotonic() > end:
                        raise TimeoutError(f"etcd member {m.name} not healthy after {timeout}s") from None
                    time.sleep(0.05)

    def leader(self) -> Member:
        """The member that is Raft leader now."""
        for m in self.members:
            if m.proc is None:
                continue
            try:
                st = _post(m.client_url + "/v3/maintenance/status", {}, 1.0)
            except OSError:
                continue
            if st.get("leader") == st.get("header", {}).get("member_id"):
                return m
        raise RuntimeError("no etcd member is leader")

    def kill(self, m: Member) -> None:
        """SIGKILL one member (its data stays; `start_member` brings it back)."""
        if m.proc is not None:
            m.proc.kill()
            m.proc.wait()
            m.proc = None

    def stop(self) -> None:
        for m in self.members:
            if m.proc is not None:
                m.proc.terminate()
        for m in self.members:
            if m.proc is not None:
                try:
                    m.proc.wait(5)
                except subprocess.TimeoutExpired:
                    m.proc.kill()
                    m.proc.wait()
                m.proc = None

    def db_size(self) -> int:
        """Bytes of the backend database (the largest of the members')."""
        sizes = []
        for m in self.members:
            if m.proc is not None:
                try:
                    sizes.append(int(_post(m.client_url + "/v3/maintenance/status", {}, 1.0).get("dbSize", 0)))
                except OSError:
                    pass
        return max(sizes, default=0)

    def record(self) -> dict[str, Any]:
        """The testbed JSON's `etcd`."""
        return {"members": [{"name": m.name, "pid": m.pid, "client_url": m.client_url} for m in self.members]}


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url}: {exc.code}") from None


__all__ = ["Cluster", "Member"]
