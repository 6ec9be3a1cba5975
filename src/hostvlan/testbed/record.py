"""The state record of testbeds left running by `hostvlan testbed up`: one JSON file per
testbed in STATE_DIR (`<prefix>.json`), and what finds and removes them.

A record holds the plan's names, the manager's URL and token, the pids of every process the
testbed started, its work dir and topology (`build.Testbed.to_json`; `build.from_record`
re-attaches to it). `down_recorded` removes what a record names even when the process that
built it is gone (killed `up`, crash): processes, namespaces, BPF pins, work dir.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from hostvlan.testbed import control, guestvms, netns
from hostvlan.testbed.plan import BPFFS

STATE_DIR = Path(os.environ.get("HOSTVLAN_TESTBED_DIR", "/run/hostvlan/testbeds"))


class PrefixInUse(RuntimeError):
    """`testbed up` on a prefix a running testbed (or leftover namespaces) already use."""


def path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def save(prefix: str, data: dict[str, Any]) -> None:
    """Write a testbed's record atomically."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE_DIR / f".{prefix}.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path(prefix))


def forget(prefix: str) -> None:
    path(prefix).unlink(missing_ok=True)


def recorded() -> list[dict[str, Any]]:
    """State files of testbeds left running by `hostvlan testbed up` (an unreadable one: its prefix only)."""
    out = []
    for p in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.exists() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            out.append({"prefix": p.stem})
    return out


def prefix_in_use(prefix: str) -> str | None:
    """Why `prefix` is taken (a recorded testbed, or namespaces named `<prefix>-…`), or None."""
    if path(prefix).exists():
        return f"testbed {prefix} is up (remove it with `hostvlan testbed down --prefix {prefix}`)"
    names = netns.owned(prefix)
    if names:
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        return f"network namespaces of prefix {prefix} exist ({shown})"
    return None


def check_free(prefix: str) -> None:
    why = prefix_in_use(prefix)
    if why is not None:
        raise PrefixInUse(f"prefix {prefix} is in use: {why}")


def down_recorded(prefix: str | None = None) -> list[str]:
    """Remove recorded testbeds (all, or the one with `prefix`): stop their processes, remove their
    namespaces and files. Returns the namespaces removed. Idempotent."""
    gone: list[str] = []
    for st in recorded():
        p = str(st.get("prefix", ""))
        if not p or (prefix and p != prefix):
            continue
        if st.get("workdir"):  # libvirt guests: their domains, while their daemons still answer
            guestvms.destroy_recorded(Path(str(st["workdir"])))
        control.stop_pids([int(x) for x in st.get("pids", {}).values()])
        if st.get("workdir"):  # also what a killed `up` started but did not record
            control.stop_pids(control.pids_naming(str(st["workdir"])))
        gone += sweep(p)
        if st.get("workdir"):
            shutil.rmtree(str(st["workdir"]), ignore_errors=True)
        forget(p)
    if prefix:
        workdir = STATE_DIR / prefix
        if workdir.is_dir():  # a testbed that kept no record (a test's), or what a killed `up` left
            guestvms.destroy_recorded(workdir)
            control.stop_pids(control.pids_naming(str(workdir)))  # its manager runs outside its namespaces
            shutil.rmtree(workdir, ignore_errors=True)
        gone += sweep(prefix)
    return gone


def sweep(prefix: str) -> list[str]:
    """Stop what runs inside a prefix's namespaces, remove them and its BPF pins; the names removed."""
    control.stop_pids(control.pids_in_netns(netns.owned(prefix)))
    gone = netns.sweep(prefix)
    sweep_pins(prefix)
    return gone


def sweep_pins(prefix: str) -> None:
    """Remove the tc receive filter's pins of a testbed's hosts (their maps go with them)."""
    if BPFFS.is_dir():
        for d in BPFFS.glob(f"{prefix}-*"):
            shutil.rmtree(d, ignore_errors=True)
