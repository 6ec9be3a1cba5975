"""Remove every piece of kernel state hostvlan created on a host, and nothing else.

`clean_host(spec)` (what `hostvlan agent --cleanup` runs), in the calling thread's network
namespace, for the back end `spec` names:
- always: the nftables tables `bridge hostvlan` (with the closing chains and their set `open`),
  `netdev hostvlan` and `netdev hostvlan_guard` (the macvtap guard; the names are hostvlan's
  own), hostvlan's tc programs (`hv_rx`, `hv_rx_global`) at the tcx egress hook and its fast
  path (`hv_fwd`) at the tcx ingress hook of every link, and the BPF pins of the tc filter
  (`spec.bpf_pins`, else this namespace's default: maps and programs, the fast path's too);
- `bridge`: the locked-port flags and sticky static FDB entries of the locked send check
  (every bridge port unlocked and learning again, as the bridge's defaults are);
- `ovs`: the flows in hostvlan's cookie range and its guard group on `spec.ovs_bridge`.
Which tables exist is asked over nfnetlink (`kernel.nfnl`): nft 1.0.6 hangs in listings that
dump every chain while the guard's prefix chains exist. Someone else's tables, programs, flows
and groups are not touched. The switch is open
afterwards (the kernel's defaults): run it with the agent stopped, to uninstall. Idempotent.
May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from hostvlan.datapath.factory import BackendSpec, build_backend

if TYPE_CHECKING:
    from hostvlan.datapath.kernel.brports import BridgePorts
    from hostvlan.datapath.kernel.nfnl import Nfnl
    from hostvlan.datapath.kernel.nft import Nft
    from hostvlan.datapath.kernel.ovs_proc import OvsTools
    from hostvlan.datapath.kernel.ovsdb import OvsDb


def clean_host(
    spec: BackendSpec,
    *,
    nft: Nft | None = None,
    ports: BridgePorts | None = None,
    ovs_tools: OvsTools | None = None,
    ovsdb: OvsDb | None = None,
) -> list[str]:
    """Remove hostvlan's kernel state for `spec` (see module doc); returns what it removed.
    Given contexts are closed as the back ends close them (`nft`, `ports`) or kept (`ovsdb`)."""
    from hostvlan.datapath.bridge.tc import default_pins, release_programs
    from hostvlan.datapath.kernel.brports import BridgePorts
    from hostvlan.datapath.kernel.nfnl import Nfnl
    from hostvlan.datapath.kernel.nft import Nft
    from hostvlan.datapath.macvtap_guard import GUARD_TABLE, MacvtapGuard
    from hostvlan.datapath.nft_table import TABLE

    done: list[str] = []
    nft = nft or Nft()
    ports = ports or BridgePorts()
    nfnl = Nfnl()
    try:
        for family in ("bridge", "netdev"):
            if _has_table(nfnl, family, TABLE):
                nft.run([{"delete": {"table": {"family": family, "name": TABLE}}}])
                done.append(f"nft table {family} {TABLE}")
        if _has_table(nfnl, "netdev", GUARD_TABLE):
            nft.run(MacvtapGuard.remove_cmds())
            done.append(f"nft table netdev {GUARD_TABLE}")
        detached = release_programs(ports, every_link=True)
        if detached:
            done.append(f"{detached} tc program(s)")
        base = spec.bpf_pins or default_pins()
        for pins in (base, base.with_name(f"{base.name}-guard")):  # the tc filter's, the address guard's
            if pins.exists():
                shutil.rmtree(pins)
                done.append(f"BPF pins {pins}")
        if spec.kind == "bridge":
            before = ports.ports()
            sticky = ports.sticky(before)
            ports.release()
            locked = sum(1 for p in before.values() if p.locked or not p.learning)
            if locked or sticky:
                done.append(f"{locked} port lock(s), {len(sticky)} sticky FDB entr(y/ies)")
    finally:
        nft.close()
        ports.close()
        nfnl.close()
    if spec.kind == "ovs":
        from hostvlan.datapath.ovs import OvsFilter

        filt = build_backend(spec, ovs_tools=ovs_tools, ovsdb=ovsdb)
        try:
            assert isinstance(filt, OvsFilter)
            if filt.installed():
                filt.remove()  # one bundle: hostvlan's cookie range and its guard group
                done.append(f"OVS flows and group of hostvlan on bridge {spec.ovs_bridge}")
        finally:
            filt.close()
    return done


def _has_table(nfnl: Nfnl, family: str, name: str) -> bool:
    """Whether the table exists, asked over nfnetlink: nft 1.0.6 hangs in listings that dump every
    chain while the macvtap guard's prefix chains exist (docs/closed-ports.md)."""
    from hostvlan.datapath.kernel.nfnl import FAMILIES

    number = next(k for k, v in FAMILIES.items() if v == family)
    return nfnl.table_exists(number, name)
