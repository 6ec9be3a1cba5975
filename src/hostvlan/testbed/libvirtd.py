"""A private libvirtd inside one testbed host's network namespace (`guests: libvirt`).

Debian 12's libvirt (9.0) ships the monolithic `libvirtd` (no split `virtqemud`). A root
libvirtd is "privileged": its paths are fixed at build time (/etc/libvirt, /run/libvirt,
/var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt). So each host's daemon is started
with `ip netns exec <host-ns>` (a mount namespace of its own, `/` a slave of the root's)
and, in that mount namespace only, those five directories are bind mounts of
`<dir>/{etc,run,lib,cache,log}`. The daemon's config, sockets, domain state and logs
therefore live in the run's work dir, and nothing of one testbed's libvirt is visible to
another's or to a system libvirt:

  <dir>/etc/libvirtd.conf   unix sockets only, no auth (root-only 0700 socket)
  <dir>/etc/qemu.conf       run QEMU as root, no security driver, no cgroups, no private
                            /dev per domain, QEMU's stdout/stderr to a plain file (no virtlogd)
  <dir>/run/libvirt-sock    the socket: URI `qemu+unix:///system?socket=<dir>/run/libvirt-sock`

No network is defined in the private /etc/libvirt, so libvirt's `default` network
(virbr0 + dnsmasq) cannot autostart. The taps, OVS ports and macvtaps libvirt creates for
a domain are created in the host's network namespace, beside its bridge, OVS or uplink.

Open vSwitch: libvirt runs `ovs-vsctl` to add a `<virtualport type='openvswitch'/>`
port. ovs-vsctl's default database is `unix:$OVS_RUNDIR/db.sock` (else the compiled-in
/run/openvswitch): the daemon gets `OVS_RUNDIR` of the host's private OVS, and /run/openvswitch
of its mount namespace is a bind mount of that directory too (libvirt may not pass the
environment on).

libvirtd does not daemonize here (the testbed holds its process; it is started in a
session of its own so `down` stops its process group, QEMU children included). `stop()`
destroys every domain first (QEMU gone, taps removed by libvirt), then stops the daemon.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

LIBVIRT_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
OVS_SYSTEM_RUNDIR = "/run/openvswitch"

LIBVIRTD_CONF = """\
# hostvlan testbed: a private libvirtd (see hostvlan/testbed/libvirtd.py)
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

QEMU_CONF = """\
# hostvlan testbed: QEMU as root, nothing of the host's security or cgroup setup
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
cgroup_controllers = []
stdio_handler = "file"
"""


class LibvirtdError(RuntimeError):
    """libvirtd did not come up or did not answer; the message carries its log's end."""


class Libvirtd:
    """One libvirtd in network namespace `ns`, everything of it under `directory`.

    Keep `directory` short: the socket path is limited to 107 bytes.
    """

    def __init__(self, ns: str, directory: Path, ovs_rundir: str | None = None) -> None:
        self.ns = ns
        self.dir = directory.resolve()
        self.ovs_rundir = ovs_rundir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return uri_for(self.socket)

    @property
    def log(self) -> Path:
        return self.dir / "log" / "libvirtd.log"

    def _script(self) -> str:
        """The shell run inside the namespace: bind the private dirs, then exec libvirtd."""
        lines = ["set -e"]
        for sub, target in LIBVIRT_DIRS.items():
            lines.append(f"mkdir -p {target}")
            lines.append(f"mount --bind {shlex.quote(str(self.dir / sub))} {target}")
        if self.ovs_rundir:
            lines.append(f"mkdir -p {OVS_SYSTEM_RUNDIR}")
            lines.append(f"mount --bind {shlex.quote(self.ovs_rundir)} {OVS_SYSTEM_RUNDIR}")
        lines.append(f"exec libvirtd --pid-file {shlex.quote(str(self.dir / 'libvirtd.pid'))}")
        return "\n".join(lines)

    def start(self, timeout: float = 30.0) -> None:
        self.spawn()
        self.wait(timeout)

    def spawn(self) -> None:
        """Start the daemon (returns at once: `wait` for its socket; start several, then wait)."""
        for sub in LIBVIRT_DIRS:
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "etc" / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        (self.dir / "etc" / "qemu.conf").write_text(QEMU_CONF)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LIBVIRT", "VIR"))}
        if self.ovs_rundir:
            env |= {"OVS_RUNDIR": self.ovs_rundir, "OVS_DBDIR": self.ovs_rundir}
        with (self.dir / "libvirtd.stderr").open("ab") as err:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, "sh", "-c", self._script()],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

    def wait(self, timeout: float = 30.0) -> None:
        """Wait until the daemon answers on its socket (it probes QEMU's capabilities first: ~8 s)."""
        assert self.proc is not None
        end = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise LibvirtdError(f"libvirtd in {self.ns} exited with status {self.proc.returncode}{self.tail()}")
            if self.socket.exists():
                res = self.virsh("version", check=False, timeout=10)
                if res.returncode == 0:
                    return
            if time.monotonic() > end:
                raise LibvirtdError(f"libvirtd in {self.ns} did not answer within {timeout}s{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 15) -> str:
        out = []
        for p in (self.dir / "libvirtd.stderr", self.log):
            if p.exists():
                text = p.read_text(errors="replace").splitlines()[-lines:]
                if text:
                    out.append(f"\n--- {p} (last {len(text)} lines)\n" + "\n".join(text))
        return "".join(out)

    def virsh(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return virsh(self.uri, *args, check=check, timeout=timeout)

    def stop(self, remove_dir: bool = False) -> None:
        """Destroy every domain, then stop the daemon (idempotent; also after a crash of `up`)."""
        if self.proc is not None and self.proc.poll() is None and self.socket.exists():
            destroy_all(self.uri)
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
        if remove_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def uri_for(socket: Path | str) -> str:
    return f"qemu+unix:///system?socket={socket}"


def virsh(uri: str, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(
        ["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and res.returncode != 0:
        raise LibvirtdError(f"virsh {' '.join(args)}: {res.stderr.strip() or res.stdout.strip()}")
    return res


def destroy_all(uri: str) -> list[str]:
    """Destroy (and undefine) every domain libvirt at `uri` knows; returns their names."""
    try:
        res = virsh(uri, "list", "--all", "--name", check=False, timeout=15)
    except subprocess.TimeoutExpired:
        return []
    names = [n for n in res.stdout.split() if n]
    for name in names:
        try:
            virsh(uri, "destroy", name, check=False, timeout=30)
            virsh(uri, "undefine", name, check=False, timeout=15)
        except subprocess.TimeoutExpired:
            pass
    return names


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL what is left after `timeout`; reap."""
    import signal

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.poll()
