"""The command line, as a user runs it: `hostvlan testbed up/check/list/down` subprocesses.

Every run gets its own state directory (HOSTVLAN_TESTBED_DIR) and an explicit `--prefix`
under this session's root, so concurrent runs never see each other's testbeds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostvlan.testbed import netns

from .support import new_prefix

pytestmark = pytest.mark.root

HOSTVLAN = Path(sys.executable).parent / "hostvlan"
MAX = 2**63 - 1

TOPOLOGY = f"""\
hosts:
  - name: h1
    backend: bridge
    vms:
      - {{name: vm-a, mac: "52:54:00:2a:00:01", lnids: [1]}}
      - {{name: vm-b, mac: "52:54:00:2a:00:02", lnids: [{MAX}]}}
      - {{name: vm-g, mac: "52:54:00:2a:00:03", lnids: [global]}}
  - name: h2
    backend: none
    vms:
      - {{name: vm-n, mac: "52:54:00:2b:00:01", lnids: [1]}}
  - name: h3
    backend: bridge
    vms:
      - {{name: vm-c, mac: "52:54:00:2c:00:01", lnids: [1, {MAX}]}}
      - {{name: vm-u, mac: "52:54:00:2c:00:02", lnids: []}}
external:
  - {{name: gw, mac: "52:54:00:ff:02:01", lnids: [global]}}
  - {{name: cl, mac: "52:54:00:ff:02:02", lnids: []}}
"""


class Cli:
    """Runs `hostvlan` with a private state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.env = {**os.environ, "HOSTVLAN_TESTBED_DIR": str(state_dir)}

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HOSTVLAN), *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(HOSTVLAN), *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # its own process group: we can wait for every child
        )

    def state_files(self) -> list[str]:
        """Every entry of the state directory (state files `<prefix>.json`, work dirs `<prefix>/`)."""
        return sorted(p.name for p in self.state_dir.iterdir()) if self.state_dir.exists() else []

    def processes(self) -> list[str]:
        """Live processes started for this state directory's testbeds (manager, agents): their
        command lines name files under it."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
            except OSError:
                continue
            cmd = raw.replace(b"\0", b" ").decode(errors="replace")
            if str(self.state_dir) in cmd and state != "Z":
                out.append(f"{entry}: {cmd}")
        return out


def _out(res: subprocess.CompletedProcess[str]) -> str:
    return f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path / "state")


@pytest.fixture
def prefix(cli: Cli) -> Iterator[str]:
    """A fresh `--prefix`; afterwards nothing of it may be left (namespaces, processes)."""
    p = new_prefix("c")
    assert p.isalnum() and len(p) <= 12
    try:
        yield p
    finally:
        left_ns, left_procs = netns.owned(p), cli.processes()
        if left_ns or left_procs:  # clean up after a failed test, then fail
            cli.run("testbed", "down", "--prefix", p)
            for line in cli.processes():  # started by this test's `up`
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(line.split(":")[0]), signal.SIGKILL)
            netns.sweep(p)
        assert not left_ns, f"namespaces of {p} left behind: {left_ns}"
        assert not left_procs, f"processes of {p} left behind: {left_procs}"


def test_up_json_check_list_down(cli: Cli, prefix: str, tmp_path: Path) -> None:
    topo = tmp_path / "cli.yaml"
    topo.write_text(TOPOLOGY)
    res = cli.run("testbed", "up", str(topo), "--json", "--prefix", prefix)
    assert res.returncode == 0, _out(res)
    data = json.loads(res.stdout)
    assert data["prefix"] == prefix

    vms = data["vms"]
    assert set(vms) == {"vm-a", "vm-b", "vm-g", "vm-n", "vm-c", "vm-u"}
    assert vms["vm-a"]["mac"] == "52:54:00:2a:00:01"
    ips = set()
    for name, vm in vms.items():
        assert vm["ifname"] == "eth0"
        assert vm["netns"].startswith(prefix + "-"), vm
        ips.add(vm["ip"])
        res_ip = subprocess.run(
            ["ip", "netns", "exec", vm["netns"], "ip", "-j", "addr", "show", "eth0"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        (link,) = json.loads(res_ip.stdout)
        assert link["address"] == vm["mac"], (name, link)
        assert link["operstate"] == "UP", (name, link)
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == [vm["ip"]], (name, link)
    assert len(ips) == len(vms), "every VM has its own IP"

    hosts = data["hosts"]
    assert {n: h["backend"] for n, h in hosts.items()} == {"h1": "bridge", "h2": "none", "h3": "bridge"}
    assert all(h["netns"] == f"{prefix}-h-{n}" for n, h in hosts.items())
    assert set(data["external"]) == {"gw", "cl"}
    expected_ns = (
        {vm["netns"] for vm in vms.values()}
        | {h["netns"] for h in hosts.values()}
        | {e["netns"] for e in data["external"].values()}
        | {data["switch"]["netns"]}
    )
    assert set(netns.owned(prefix)) >= expected_ns
    assert f"{prefix}.json" in cli.state_files()

    res = cli.run("testbed", "list", "--json")
    assert res.returncode == 0, _out(res)
    assert [r["prefix"] for r in json.loads(res.stdout)] == [prefix]

    # the only testbed of this state directory: no --prefix needed
    res = cli.run("testbed", "check")
    assert res.returncode == 0, _out(res)
    assert "leaks=0 misses=0 forged_delivered=0" in res.stdout, _out(res)
    res = cli.run("testbed", "check", "--prefix", prefix, "--json")
    assert res.returncode == 0, _out(res)
    report = json.loads(res.stdout)
    assert (report["leaks"], report["misses"], report["forged"]) == ([], [], [])
    assert report["delivered"] > 0

    res = cli.run("testbed", "down")
    assert res.returncode == 0, _out(res)
    assert "removed" in res.stdout, _out(res)
    assert netns.owned(prefix) == []
    assert cli.state_files() == []
    assert cli.processes() == []

    res = cli.run("testbed", "down")
    assert res.returncode == 0, _out(res)
    assert "nothing to remove" in res.stdout, _out(res)
    res = cli.run("testbed", "down", "--prefix", prefix)
    assert res.returncode == 0, _out(res)
    assert "nothing to remove" in res.stdout, _out(res)


# ----- invalid topology files: nothing is created ---------------------------------------------
VALID_LINES = [
    "hosts:",  # 1
    "  - name: h1",  # 2
    "    backend: bridge",  # 3
    "    vms:",  # 4
    '      - {name: vm1, mac: "52:54:00:3a:00:01", lnids: [1]}',  # 5
    '      - {name: vm2, mac: "52:54:00:3a:00:02", lnids: [2]}',  # 6
    "  - name: h2",  # 7
    "    backend: bridge",  # 8
    "    vms:",  # 9
    '      - {name: vm3, mac: "52:54:00:3a:00:03", lnids: [1]}',  # 10
]

# (id, line number to replace, its new text, words the error must contain)
INVALID = [
    ("bad-mac", 6, '      - {name: vm2, mac: "52:54:00:3a:00:zz", lnids: [2]}', "malformed MAC"),
    ("multicast-mac", 6, '      - {name: vm2, mac: "01:00:5e:00:00:01", lnids: [2]}', "multicast"),
    ("lnid-0", 10, '      - {name: vm3, mac: "52:54:00:3a:00:03", lnids: [0]}', "out of range"),
    ("lnid-2^63", 10, f'      - {{name: vm3, mac: "52:54:00:3a:00:03", lnids: [{2**63}]}}', "out of range"),
    ("lnid-word", 10, '      - {name: vm3, mac: "52:54:00:3a:00:03", lnids: [globl]}', "LNID"),
    ("duplicate-mac", 10, '      - {name: vm3, mac: "52:54:00:3a:00:01", lnids: [1]}', "duplicate MAC"),
    ("duplicate-vm-name", 10, '      - {name: vm1, mac: "52:54:00:3a:00:03", lnids: [1]}', "duplicate endpoint name"),
    ("unknown-backend", 8, "    backend: hyperv", "unknown backend"),
]


def test_the_valid_base_file_is_valid(tmp_path: Path) -> None:
    from hostvlan.testbed.topology import load_topology

    path = tmp_path / "ok.yaml"
    path.write_text("\n".join(VALID_LINES) + "\n")
    assert [vm.name for h in load_topology(path).hosts for vm in h.vms] == ["vm1", "vm2", "vm3"]


@pytest.mark.parametrize(("line", "text", "words"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_topology_fails_naming_the_line_and_creates_nothing(
    cli: Cli, prefix: str, tmp_path: Path, line: int, text: str, words: str
) -> None:
    lines = list(VALID_LINES)
    lines[line - 1] = text
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    res = cli.run("testbed", "up", str(path), "--prefix", prefix, "--json")
    assert res.returncode != 0, _out(res)
    assert f"{path}:{line}:" in res.stderr, _out(res)
    assert words in res.stderr, _out(res)
    assert res.stdout == "", _out(res)
    assert netns.owned(prefix) == []
    assert not [n for n in netns.list_netns() if n.startswith(prefix)]
    assert cli.state_files() == []


def test_invalid_prefix_creates_nothing(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("\n".join(VALID_LINES) + "\n")
    bad = new_prefix("c") + "-x"
    res = cli.run("testbed", "up", str(path), "--prefix", bad)
    assert res.returncode != 0, _out(res)
    assert "--prefix" in res.stderr, _out(res)
    assert not [n for n in netns.list_netns() if n.startswith(bad)]
    assert cli.state_files() == []


# ----- a crash of `up` -------------------------------------------------------------------------
def _big_topology(hosts: int = 4, vms: int = 6) -> str:
    lines = ["hosts:"]
    for h in range(hosts):
        lines += [f"  - name: h{h}", "    vms:"]
        lines += [
            f'      - {{name: v{h}-{k}, mac: "52:54:00:4{h}:00:{k:02x}", lnids: [{k % 3 + 1}]}}' for k in range(vms)
        ]
    lines += ["external:", '  - {name: gw, mac: "52:54:00:ff:03:01", lnids: [global]}']
    return "\n".join(lines) + "\n"


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the killed `up`'s process group is left (e.g. a forked
    pyroute2 helper finishing a namespace it was creating)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process group {pgid} of the killed `up` is still alive")


def _session_children(pid: int) -> list[int]:
    """Children of `pid` that run in a session of their own (how `up` starts manager and agents)."""
    out = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            with contextlib.suppress(OSError):
                if int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[-1].split()[3]) != pid:
                    out.append(int(child))
    return out


# when to SIGKILL `up`: as soon as its first namespace exists, ~0.3 s later, the instant it has
# forked the manager (before it could record the manager's pid in the state file: the manager
# runs in the root namespace, so only that record finds it), or once VMs are being cabled
# (manager and agents running)
KILL_POINTS = ["first-netns", "first-netns+0.3s", "manager-forked", "vms-cabling"]


@pytest.mark.parametrize("when", KILL_POINTS)
def test_down_cleans_up_after_up_is_killed_mid_build(cli: Cli, prefix: str, tmp_path: Path, when: str) -> None:
    path = tmp_path / "big.yaml"
    path.write_text(_big_topology())
    proc = cli.popen("testbed", "up", str(path), "--prefix", prefix)
    try:
        end = time.monotonic() + 20
        if when == "manager-forked":
            while not _session_children(proc.pid) and proc.poll() is None and time.monotonic() < end:
                pass  # busy: the window is a few milliseconds wide
        elif when == "vms-cabling":
            while not any("-v-" in n for n in netns.owned(prefix)) and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.005)
        else:
            while not netns.owned(prefix) and proc.poll() is None and time.monotonic() < end:
                time.sleep(0.01)
            time.sleep(0.3 if when.endswith("0.3s") else 0.0)
        assert proc.poll() is None, "`up` finished before it could be killed: use a larger topology"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    _wait_group_gone(proc.pid)
    assert proc.returncode == -signal.SIGKILL
    partial = netns.owned(prefix)
    assert partial, "the kill should have left a half-built testbed behind"
    assert f"{prefix}.json" in cli.state_files()  # written before the build starts

    res = cli.run("testbed", "down", "--prefix", prefix)
    assert res.returncode == 0, _out(res)
    assert netns.owned(prefix) == []
    assert not [n for n in netns.list_netns() if n.startswith(prefix)]
    assert cli.state_files() == []
    assert cli.processes() == [], "`down` must stop the processes the killed `up` started"
    res = cli.run("testbed", "down", "--prefix", prefix)
    assert res.returncode == 0, _out(res)
    assert "nothing to remove" in res.stdout, _out(res)


# ----- prefixes in use, several testbeds, exit codes ---------------------------------------------
def _manager_env(cli: Cli, data: dict[str, object]) -> dict[str, str]:
    mgr = data["manager"]
    assert isinstance(mgr, dict)
    return {**cli.env, "HOSTVLAN_MANAGER": str(mgr["url"]), "HOSTVLAN_TOKEN": str(mgr["token"])}


def test_prefix_in_use_is_refused_and_down_needs_a_choice(cli: Cli, prefix: str, tmp_path: Path) -> None:
    topo = tmp_path / "ok.yaml"
    topo.write_text("\n".join(VALID_LINES) + "\n")
    res = cli.run("testbed", "up", str(topo), "--json", "--prefix", prefix)
    assert res.returncode == 0, _out(res)
    first = json.loads(res.stdout)
    before = sorted(netns.owned(prefix))

    # a second `up` on the same prefix: refused (conflict), the running testbed untouched
    res = cli.run("testbed", "up", str(topo), "--prefix", prefix)
    assert res.returncode == 4, _out(res)
    assert f"prefix {prefix} is in use" in res.stderr and res.stdout == "", _out(res)
    assert sorted(netns.owned(prefix)) == before
    assert json.loads((cli.state_dir / f"{prefix}.json").read_text())["pids"] == first["pids"]
    res = cli.run("testbed", "check", "--prefix", prefix)
    assert res.returncode == 0 and "leaks=0 misses=0 forged_delivered=0" in res.stdout, _out(res)

    # the exit codes of the management commands, against this testbed's manager
    env = _manager_env(cli, first)
    hv = [str(HOSTVLAN)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*hv, *args], env=env, capture_output=True, text=True, timeout=30, check=False)

    assert run("show", "--host", "h1").returncode == 0
    res = run("show", "--host", "nosuch")
    assert res.returncode == 3 and "unknown host 'nosuch'" in res.stderr, _out(res)
    assert run("move", "52:54:00:3a:00:99", "h2").returncode == 3  # an unknown MAC
    res = run("host", "add", "h1")
    assert res.returncode == 4 and "already exists" in res.stderr, _out(res)
    assert run("reg", "1", "52:54:00:3a:00:01", "h2").returncode == 4  # registered on h1: `move` it
    assert run("host", "rm", "h1").returncode == 4  # it still has vNICs
    assert run("reg", "1").returncode == 2
    assert run("reg", "0", "52:54:00:3a:00:55", "h1").returncode == 1  # a bad value: refused
    assert run("trace", "52:54:00:3a:00:01", "52:54:00:3a:00:02").returncode == 0  # DROP is an answer

    # namespaces of a prefix with no record are in use too
    stray = new_prefix("c")
    netns.create(f"{stray}-x")
    try:
        res = cli.run("testbed", "up", str(topo), "--prefix", stray)
        assert res.returncode == 4 and "network namespaces" in res.stderr, _out(res)
        assert netns.owned(stray) == [f"{stray}-x"]
    finally:
        netns.sweep(stray)

    # two testbeds up: `down` without --prefix refuses and lists them; --all removes both
    second = new_prefix("c")
    try:
        res = cli.run("testbed", "up", str(topo), "--prefix", second)
        assert res.returncode == 0, _out(res)
        res = cli.run("testbed", "down")
        assert res.returncode == 2, _out(res)
        assert prefix in res.stderr and second in res.stderr and "--all" in res.stderr, _out(res)
        assert sorted(netns.owned(prefix)) == before and netns.owned(second)
        res = cli.run("testbed", "down", "--prefix", prefix, "--all")
        assert res.returncode == 2, _out(res)
        res = cli.run("testbed", "down", "--all")
        assert res.returncode == 0 and "removed" in res.stdout, _out(res)
        assert netns.owned(prefix) == [] and netns.owned(second) == []
        assert cli.state_files() == [] and cli.processes() == []
    finally:
        if netns.owned(second):
            cli.run("testbed", "down", "--prefix", second)
            netns.sweep(second)
