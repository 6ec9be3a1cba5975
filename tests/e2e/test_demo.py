"""`hostvlan demo`: the paper's Fig. 7 scenario end to end, as a user runs it.

The demo names its namespaces with a random prefix of its own, and other runs may build
namespaces at the same time, so "leaves no namespace behind" is observed in a private
mount namespace whose /run/netns is a fresh, empty tmpfs: there `ip netns list` shows
exactly the network namespaces the demo created and did not remove. (Network namespaces
themselves are untouched by this: only where their names are mounted is private.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root

HOSTVLAN = Path(sys.executable).parent / "hostvlan"

SCRIPT = r"""
mount -t tmpfs hostvlan-e2e /run/netns || exit 99
"$1" demo
rc=$?
echo "NETNS-AFTER:[$(ip netns list | tr '\n' ' ')]"
exit $rc
"""


def test_demo_passes_and_leaves_no_namespace() -> None:
    res = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SCRIPT, "sh", str(HOSTVLAN)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert res.returncode == 0, out
    assert "PASSED" in res.stdout, out
    assert "FAILED" not in res.stdout, out
    # the broadcast matrix and the forged-frame step really ran
    assert "0 cross-LNID deliveries, 0 missing same-LNID deliveries, 0 forged frames delivered" in res.stdout, out
    assert "vm1-1 (LNID 1,3) broadcast now reaches: vm2-1, vm2-3, vm3-3, router" in res.stdout, out
    # the address guard's step: the router's cache for vm1-2 is unchanged, the forgeries counted,
    # and vm1-1's resolution of vm2-1 answered on host1 with nothing on the wire
    lines = res.stdout.splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("6. Address guard: a VM tries to poison the router's"))
    step = lines[at : at + 9]
    assert any("router's cache before: 10.200.0.2 lladdr 52:54:00:00:01:02" in x for x in step), out
    after = [x for x in step if "router's cache after:" in x]
    assert after and "lladdr 52:54:00:00:01:02" in after[0], out
    assert any("lladdr 52:54:00:00:01:02" in x and x.endswith("(unchanged)") for x in step), out
    assert "52:54:00:00:01:01" not in "".join(x for x in step if "lladdr" in x), out  # the attacker's MAC
    assert "host1 [bridge] dropped them at vm1-1's port vnet0: arp_spoof 1, nd_spoof 1" in res.stdout, out
    answered = "ARP/ND answered on the host: vm1-1 resolves vm2-1 on host2"
    assert any(x.strip().startswith(answered) for x in step), out
    assert any(
        "ping replied, answered with 52:54:00:00:02:01 by host1; requests for them on the physical switch: 0" in x
        for x in step
    ), out
    assert "NETNS-AFTER:[]" in res.stdout, out
