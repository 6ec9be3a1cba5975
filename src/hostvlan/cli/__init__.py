"""`hostvlan …`: the command line, one module per command group.

  common    the root group `main`, exit codes, the manager connection, output helpers
  manage    reg, unreg, rm, move, show, hosts, trace, host … (the manager's HTTP API only)
  testbed   testbed up/down/list/check, demo (the emulated data center; root)
  guests    testbed exec (a command inside a VM: libvirt guest or namespace)
  bench     bench data-path, bench control-plane
  daemons   manager, agent
  observe   drops, status (docs/observability.md)

Entry point: `hostvlan = hostvlan.cli:main`; `python -m hostvlan.cli` runs it too.
"""

from __future__ import annotations

from hostvlan.cli import addr, bench, daemons, guests, manage, observe, testbed
from hostvlan.cli.common import main

__all__ = ["addr", "bench", "daemons", "guests", "main", "manage", "observe", "testbed"]
