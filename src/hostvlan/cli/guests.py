"""`hostvlan testbed exec`: run a command inside a testbed VM (a libvirt guest or a namespace).

See docs/libvirt.md; the work is done by `hostvlan.testbed.guestvms.exec_in`.
"""

from __future__ import annotations

import sys

import click

from hostvlan.cli.common import EXIT_NOT_FOUND, fail, need_root
from hostvlan.cli.testbed import testbed


@testbed.command("exec")
@click.option("--prefix", help="Which testbed (default: the only one up).")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds the command may run.")
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def testbed_exec(prefix: str | None, timeout: float, name: str, argv: tuple[str, ...]) -> None:
    """Run ARGV inside VM (or external endpoint, or host) NAME: `testbed exec vm1 -- ping -c1 IP`.

    A libvirt guest runs it through its virtio-serial exec channel, anything else in its
    network namespace. Prints its output; exits with its status (3: no such testbed or NAME).
    """
    import subprocess

    from hostvlan.testbed.guestvms import GuestError, NoSuchTarget, exec_in
    from hostvlan.testbed.record import recorded

    need_root()
    recs = [r for r in recorded() if "vms" in r and (prefix is None or r["prefix"] == prefix)]
    if not recs:
        fail("not_found", f"testbed {prefix} is not up" if prefix else "no testbed is up", EXIT_NOT_FOUND)
    if len(recs) > 1:
        raise click.UsageError(f"{len(recs)} testbeds are up; pass --prefix P")
    try:
        status, out, err = exec_in(recs[0], name, list(argv), timeout)
    except NoSuchTarget as exc:
        fail("not_found", str(exc), EXIT_NOT_FOUND)
    except (GuestError, OSError, subprocess.TimeoutExpired) as exc:
        raise click.ClickException(f"{name}: {exc}") from None
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.stderr.buffer.write(err)
    sys.exit(status)
