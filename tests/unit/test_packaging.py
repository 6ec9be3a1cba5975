"""The service units and the example configuration under packaging/ match the code.

`systemd-analyze verify` checks the units (keys, sections, the ExecStart binary); every
variable of the example environment file names a real option of `hostvlan manager` or
`hostvlan agent` (click's HOSTVLAN_<COMMAND>_<OPTION>, or an option's own envvar).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from hostvlan.cli import main

ROOT = Path(__file__).resolve().parents[2]
PACKAGING = ROOT / "packaging"
UNITS = sorted((PACKAGING / "systemd").glob("*.service"))


def _env_names(command: click.Command, name: str) -> set[str]:
    out = set()
    for p in command.params:
        if not isinstance(p, click.Option):
            continue
        out.add(f"HOSTVLAN_{name.upper()}_{(p.name or '').upper()}")
        envvar = p.envvar
        if isinstance(envvar, str):
            out.add(envvar)
        elif envvar:
            out.update(envvar)
    return out


def test_units_exist() -> None:
    assert {u.name for u in UNITS} == {"hostvlan-manager.service", "hostvlan-agent.service"}


def test_units_verify(tmp_path: Path) -> None:
    """(systemd-analyze comes with Debian's `systemd` package, installed by `make setup`.)"""
    exe = Path(sys.executable).with_name("hostvlan")
    assert exe.exists(), exe
    for unit in UNITS:
        text = unit.read_text().replace("/usr/local/bin/hostvlan", str(exe))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *[str(tmp_path / u.name) for u in UNITS]],
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "Unknown" not in out and "Failed" not in out and "arning" not in out, out


def test_example_environment_names_real_options() -> None:
    ctx = click.Context(main)
    known: set[str] = set()
    for name in ("manager", "agent"):
        cmd = main.get_command(ctx, name)
        assert cmd is not None, name
        known |= _env_names(cmd, name)
    known |= {"HOSTVLAN_MANAGER", "HOSTVLAN_CACERT"}
    names = []
    for line in (PACKAGING / "hostvlan.env").read_text().splitlines():
        line = line.strip().lstrip("#")
        if "=" in line and line.split("=", 1)[0].isupper() and line.startswith("HOSTVLAN_"):
            names.append(line.split("=", 1)[0])
    assert names, "the example configuration sets nothing"
    unknown = [n for n in names if n not in known]
    assert not unknown, f"packaging/hostvlan.env names options that do not exist: {unknown}"


def test_environment_file_variables_reach_the_options(tmp_path: Path) -> None:
    """`HOSTVLAN_MANAGER_LOG_LEVEL` is `hostvlan manager --log-level` (the units' EnvironmentFile contract):
    a bad value from the environment is refused like one on the command line, before anything is created."""
    from click.testing import CliRunner

    db = tmp_path / "m.db"
    res = CliRunner().invoke(
        main, ["manager", "--db", str(db)], env={"HOSTVLAN_MANAGER_LOG_LEVEL": "loud"}, catch_exceptions=False
    )
    assert res.exit_code == 2, res.output
    assert "log-level" in res.output or "log_level" in res.output, res.output
    assert not db.exists()
