"""A private Open vSwitch (ovsdb-server + ovs-vswitchd) inside one network namespace.

The testbed's OVS hosts and the integration tier both run one per host: the database,
unix sockets, pid files and logs live in a directory of their own (`OVS_RUNDIR`,
`OVS_DBDIR`, `OVS_LOGDIR`, `OVS_SYSCONFDIR` point there), no systemd, nothing in the
root namespace. The bridge's ports are the host namespace's interfaces. Here the kernel
has no openvswitch module, so bridges use the userspace datapath (`netdev`); where the
module exists, the kernel datapath (`system`) works unchanged.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from hostvlan.datapath.kernel.ovs_proc import OvsTools

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class OvsDaemonError(RuntimeError):
    """An OVS daemon did not start; the message carries the end of its logs."""


class OvsDaemons:
    """ovsdb-server + ovs-vswitchd run in network namespace `ns`, state in `directory`.

    Keep `directory` short: unix socket paths are limited to 107 bytes.
    """

    def __init__(self, ns: str, directory: Path) -> None:
        self.ns = ns
        self.dir = directory
        self.procs: list[subprocess.Popen[bytes]] = []
        self.tools = OvsTools(
            rundir=str(self.dir), db=f"unix:{self.dir}/db.sock", vswitchd_ctl=f"{self.dir}/ovs-vswitchd.ctl"
        )

    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}

    def _spawn(self, argv: list[str]) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.procs.append(proc)

    def start(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ovsdb-tool", "create", f"{d}/conf.db", SCHEMA], check=True, env=self.env, capture_output=True)
        self._spawn(
            [
                "ovsdb-server",
                f"{d}/conf.db",
                f"--remote=punix:{d}/db.sock",
                f"--pidfile={d}/ovsdb-server.pid",
                f"--unixctl={d}/ovsdb-server.ctl",
                f"--log-file={d}/ovsdb-server.log",
                "--no-chdir",
            ]
        )
        self._wait("ovsdb-server's socket", d / "db.sock")
        self.tools.vsctl("--no-wait", "init")
        self._spawn(
            [
                "ovs-vswitchd",
                f"unix:{d}/db.sock",
                f"--pidfile={d}/ovs-vswitchd.pid",
                f"--unixctl={d}/ovs-vswitchd.ctl",
                f"--log-file={d}/ovs-vswitchd.log",
                "--no-chdir",
            ]
        )
        self._wait("ovs-vswitchd's control socket", d / "ovs-vswitchd.ctl")

    def _wait(self, what: str, path: Path, timeout: float = 20.0) -> None:
        end = time.monotonic() + timeout
        while not path.exists():
            if any(p.poll() is not None for p in self.procs):
                raise OvsDaemonError(f"an OVS daemon died at start:\n{self.logs()}")
            if time.monotonic() > end:
                raise OvsDaemonError(f"timed out waiting for {what}:\n{self.logs()}")
            time.sleep(0.02)

    def logs(self, tail: int = 2000) -> str:
        return "".join(f"--- {f.name}\n{f.read_text(errors='replace')[-tail:]}" for f in sorted(self.dir.glob("*.log")))

    def log(self, name: str = "ovs-vswitchd") -> str:
        path = self.dir / f"{name}.log"
        return path.read_text() if path.exists() else ""

    def stop(self, remove_dir: bool = True) -> list[int]:
        """Stop both daemons (vswitchd first); returns the pids that would not die (none, normally)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        alive = [p.pid for p in self.procs if p.poll() is None or Path(f"/proc/{p.pid}").exists()]
        if remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return alive
