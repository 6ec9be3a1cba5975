"""Opening the OVS back end on a host where it cannot run fails with one line that names the
cause and what to do (never a traceback): OVSDB down, the bridge missing, the bridge in the
wrong fail mode."""

from __future__ import annotations

import errno
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.factory import BackendSpec, build_backend

from .ovsnet import BRIDGE, OvsHost, ovs_hosts

pytestmark = pytest.mark.root


@pytest.fixture
def make_ovs(prefix: str) -> Iterator[Callable[..., OvsHost]]:
    with ovs_hosts(prefix) as make:
        yield make


def _fails(spec: BackendSpec) -> DatapathError:
    with pytest.raises(DatapathError) as info:
        build_backend(spec).close()
    message = str(info.value)
    assert "\n" not in message, message
    return info.value


def test_ovsdb_down() -> None:
    with tempfile.TemporaryDirectory(prefix="hvovs-") as rundir:
        exc = _fails(BackendSpec(kind="ovs", ovs_rundir=rundir))
    assert exc.errno == errno.ENOENT
    assert f"no OVSDB answers at unix:{rundir}/db.sock" in str(exc)
    assert "is Open vSwitch running" in str(exc) and "--ovs-db" in str(exc)


def test_bridge_missing(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(1)
    tools = host.tools
    exc = _fails(BackendSpec(kind="ovs", ovs_bridge="nosuch0", ovs_db=tools.db_remote, ovs_rundir=tools.rundir))
    assert exc.errno == errno.ENODEV
    assert "OVS bridge nosuch0 does not exist" in str(exc)
    assert "ovs-vsctl add-br nosuch0 -- set-fail-mode nosuch0 secure" in str(exc)


def test_bridge_in_the_wrong_fail_mode(make_ovs: Callable[..., OvsHost]) -> None:
    host = make_ovs(1)
    tools = host.tools
    host.tools.vsctl("set", "Bridge", BRIDGE, "fail-mode=standalone")
    exc = _fails(BackendSpec(kind="ovs", ovs_bridge=BRIDGE, ovs_db=tools.db_remote, ovs_rundir=tools.rundir))
    assert exc.errno == errno.EINVAL
    assert f"OVS bridge {BRIDGE} has fail mode standalone" in str(exc)
    assert f"ovs-vsctl set-fail-mode {BRIDGE} secure" in str(exc)
    host.tools.vsctl("set", "Bridge", BRIDGE, "fail-mode=secure")
    build_backend(BackendSpec(kind="ovs", ovs_bridge=BRIDGE, ovs_db=tools.db_remote, ovs_rundir=tools.rundir)).close()


def test_the_agent_says_it_in_one_line() -> None:
    with tempfile.TemporaryDirectory(prefix="hvovs-") as rundir:
        argv = [sys.executable, "-m", "hostvlan.cli", "agent", "--manager", "http://127.0.0.1:9", "--host", "h1"]
        argv += ["--token", "t", "--uplink", "uplink0=02:00:00:00:0f:01", "--backend", "ovs"]
        argv += ["--ovs-db", f"unix:{rundir}/db.sock", "--ovs-rundir", rundir]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no OVSDB answers" in errors[0] and "is Open vSwitch running" in errors[0], done.stderr
