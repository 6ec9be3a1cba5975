"""The one choke point to Open vSwitch's tools and control sockets (ovs-ofctl, ovs-vsctl, unixctl).

Every OVS process hostvlan runs goes through `run`: an argv list (never a shell string),
optional stdin text, and a `DatapathError` naming the command and its stderr when it
fails. The unixctl call (`OvsTools.flush_datapath_cache`) talks JSON-RPC to
ovs-vswitchd's control socket in-process, through the `ovs` library.

Where OVS lives is explicit (`OvsTools`): the OVSDB remote, the run directory that holds
each bridge's OpenFlow management socket (`<bridge>.mgmt`) and ovs-vswitchd's control
socket. The defaults are a system install's; a test runs its own daemons in a temporary
directory and passes that. May import `hostvlan.datapath.base` only.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hostvlan.datapath.base import DatapathError

DEFAULT_RUNDIR = "/var/run/openvswitch"
TIMEOUT = 60.0  # seconds; a bundle of the paper's worst-case table takes well under one


def run(argv: Sequence[str], stdin: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """Run one OVS tool; return its stdout. Failure raises DatapathError with the command and stderr."""
    try:
        done = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else None,
            timeout=TIMEOUT,
            check=False,
        )
    except OSError as exc:
        raise DatapathError(f"{' '.join(argv)}: {exc}", errno=exc.errno) from exc
    except subprocess.TimeoutExpired as exc:
        raise DatapathError(f"{' '.join(argv)}: {exc}", errno=errno.ETIMEDOUT) from exc
    if done.returncode != 0:
        lines = stdin.count("\n") if stdin else 0
        what = f" (stdin: {lines} lines)" if stdin else ""
        raise DatapathError(f"{' '.join(argv)}{what} failed (rc={done.returncode}): {done.stderr.strip()}")
    return done.stdout


@dataclass(frozen=True)
class OvsTools:
    """Where one Open vSwitch instance listens (see module doc)."""

    rundir: str = DEFAULT_RUNDIR
    db: str | None = None  # OVSDB remote, e.g. "unix:/run/openvswitch/db.sock"; None: <rundir>/db.sock
    vswitchd_ctl: str | None = None  # ovs-vswitchd's unixctl socket; None: from <rundir>/ovs-vswitchd.pid

    @property
    def db_remote(self) -> str:
        return self.db or f"unix:{self.rundir}/db.sock"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OVS_RUNDIR": self.rundir}

    def of_target(self, bridge: str) -> str:
        """The OpenFlow management socket of `bridge` (what ovs-ofctl connects to)."""
        return f"unix:{self.rundir}/{bridge}.mgmt"

    def ofctl(self, *args: str, stdin: str | None = None) -> str:
        """`ovs-ofctl …` with port numbers, never names, in its input and output."""
        return run(["ovs-ofctl", "--no-names", *args], stdin=stdin, env=self._env())

    def vsctl(self, *args: str) -> str:
        return run(["ovs-vsctl", f"--db={self.db_remote}", "--timeout=30", *args], env=self._env())

    def ctl_socket(self) -> str:
        if self.vswitchd_ctl:
            return self.vswitchd_ctl
        fixed = Path(self.rundir) / "ovs-vswitchd.ctl"  # ovs-vswitchd --unixctl=<rundir>/ovs-vswitchd.ctl
        if fixed.exists():
            return str(fixed)
        pidfile = Path(self.rundir) / "ovs-vswitchd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError) as exc:
            err = exc.errno if isinstance(exc, OSError) else None
            raise DatapathError(f"cannot find ovs-vswitchd's control socket: {pidfile}: {exc}", errno=err) from exc
        return f"{self.rundir}/ovs-vswitchd.{pid}.ctl"

    def appctl(self, command: str, *args: str) -> str:
        """One unixctl command to ovs-vswitchd, in-process (JSON-RPC on its control socket)."""
        import ovs.unixctl.client  # the `ovs` library; imported here so only OVS users load it

        path = self.ctl_socket()
        err, client = ovs.unixctl.client.UnixctlClient.create(path)
        if err:
            raise DatapathError(f"ovs-appctl {command}: cannot connect to {path}: {os.strerror(err)}", errno=err)
        try:
            err, error, result = client.transact(command, list(args))
        finally:
            client.close()
        if err:
            raise DatapathError(f"ovs-appctl {command}: {path}: {os.strerror(err)}", errno=err)
        if error is not None:
            raise DatapathError(f"ovs-appctl {command}: {error}")
        return str(result or "")

    def flush_datapath_cache(self) -> None:
        """Drop every cached datapath flow (`revalidator/purge`), synchronously.

        OVS caches the verdict of its OpenFlow tables per flow in the datapath and
        revalidates the cache asynchronously after a table change; until then a frame can
        still get the old verdict. Purging makes the next frame of every flow go through the
        new tables: a change is in force when the call returns.
        """
        self.appctl("revalidator/purge")
