"""The testbed's control plane: a real `hostvlan manager` process and one real
`hostvlan agent` process per filtered host, on a management network of namespaces.

    root namespace            <prefix>-mg (management switch mg0, 10.201.0.1)
    manager ── 127.0.0.1:P    manager ── 10.201.0.1:7080  (one process, two listeners)
                                   │
              <prefix>-h-<host>: mgmt0 10.201.0.<i+2> ── agent

The CLI reaches the manager on the root namespace's loopback; agents reach it over
the management network; nothing is routed between the two and nothing touches the
machine's real NIC. Every process is started in its own session and stopped on
teardown; `reap` also kills stray processes found inside the run's namespaces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hostvlan.client import Client

MGMT_PORT = 7080
MGMT_NET = "10.201.0"


def hostvlan_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "hostvlan.cli", *args]


def manager_argv(db: Path, mgmt_ns: str, ready: Path) -> list[str]:
    """The testbed's manager: its database, a loopback listener for the CLI and one on the
    management network (inside `mgmt_ns`) for the agents."""
    mgmt = f"{mgmt_ns}/{MGMT_NET}.1:{MGMT_PORT}"
    return hostvlan_argv("manager", "--db", str(db), "--listen", "127.0.0.1:0", "--listen", mgmt,
                         "--ready-file", str(ready))  # fmt: skip


def agent_argv(
    host: str, backend: str, uplink: str, token_file: Path, ready: Path, extra: list[str], manager: str = ""
) -> list[str]:
    """A host's agent (run inside its namespace), reaching the manager on the management network
    (`manager`: the replicas' URLs, `testbed.replicas`)."""
    return hostvlan_argv(
        "agent", "--manager", manager or f"http://{MGMT_NET}.1:{MGMT_PORT}", "--host", host,
        "--token-file", str(token_file),
        "--uplink", uplink, "--backend", backend, *extra, "--ready-file", str(ready), "-v",
    )  # fmt: skip


def start(argv: list[str], log: Path, netns: str | None = None) -> subprocess.Popen[bytes]:
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]
    with log.open("ab") as fh:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=fh, start_new_session=True)


def wait_file(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            try:
                data: dict[str, Any] = json.loads(path.read_text())
                return data
            except json.JSONDecodeError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready")
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 20.0) -> None:
    """Wait until `proc` has written `text` to its log."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}: {log.read_text(errors='replace')[-500:]}")
        time.sleep(0.02)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def stop_pids(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after `grace` seconds."""
    alive = []
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
            alive.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    end = time.monotonic() + grace
    while alive and time.monotonic() < end:
        alive = [p for p in alive if _alive(p)]
        time.sleep(0.02)
    for pid in alive:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_group(pid: int, procs: list[subprocess.Popen[bytes]], name: str, timeout: float = 10.0) -> None:
    """SIGKILL process group `pid`, as a crash would, and return once it is gone (reaped if it is
    one of `procs`, our children; else polled, e.g. a testbed re-attached by `from_record`)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    mine = [p for p in procs if p.pid == pid]
    for proc in mine:
        proc.wait(timeout)
    end = time.monotonic() + timeout
    while not mine and running(pid):
        if time.monotonic() > end:
            raise TimeoutError(f"{name} (pid {pid}) still alive {timeout}s after SIGKILL")
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def running(pid: int) -> bool:
    """Is this process still running (not gone, not a zombie)? Reaps it if it is our child."""
    return _alive(pid)


def pids_in_netns(netns_names: list[str]) -> list[int]:
    """Processes whose network namespace is one of these (e.g. agents left by a crash)."""
    inodes = set()
    for name in netns_names:
        try:
            inodes.add(os.stat(f"/var/run/netns/{name}").st_ino)
        except OSError:
            pass
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                out.append(int(entry))
        except OSError:
            pass
    return out


def pids_naming(path: str) -> list[int]:
    """Session leaders (how `start` runs the manager and agents) whose command line names a file
    under `path`, a testbed's work dir. Finds a process whose pid was never recorded because
    `up` was killed right after starting it (the manager is in the root namespace, so
    `pids_in_netns` cannot find it)."""
    needle = os.fsencode(path.rstrip("/") + "/")
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{entry}/stat") as fh:
                session = int(fh.read().rsplit(")", 1)[-1].split()[3])
        except (OSError, ValueError, IndexError):
            continue
        if session == int(entry) and needle in cmdline:
            out.append(int(entry))
    return out


def wait_synced(api: Client, hosts: list[str], timeout: float = 15.0) -> float:
    """Wait until every listed host's agent is connected and has applied all that concerns it."""
    t0 = time.monotonic()
    while True:
        st = {h["name"]: h for h in api.hosts()}
        lagging = [h for h in hosts if not (h in st and st[h]["in_sync"])]
        if not lagging:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"agents not in sync after {timeout}s: {', '.join(lagging)}")
        time.sleep(0.01)


def read_from(path: Path, offset: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def log_tails(workdir: Path, lines: int = 15) -> str:
    """The last lines of every log in a testbed's work dir (for the error of a failed `up`)."""
    out = []
    for log in sorted(workdir.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        if tail:
            out.append(f"\n--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "".join(out)
