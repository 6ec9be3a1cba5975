"""The one place that builds a tenant-filter back end from its name and options.

The agent, the testbed, the bench and the integration tests all call `build_backend`; no
module outside `hostvlan.datapath` constructs a back-end class (the in-memory reference
filter of the tests aside). Call it inside the host's network namespace: the back ends bind
their kernel contexts (nftables, netlink, the namespace's BPF pins) when they are built.
May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hostvlan.datapath.base import TenantFilter

KINDS = ("bridge", "ovs", "macvtap")
SEND_CHECKS = ("locked", "nft")
RECEIVE_FILTERS = ("tc", "nft")


@dataclass(frozen=True)
class BackendSpec:
    """What back end a host runs, and where its switch lives.

    `kind`: `bridge` (Linux bridge), `ovs` (Open vSwitch, OpenFlow) or `macvtap`.
    Bridge only: `send_check` `locked` (the bridge's locked ports, default) or `nft`;
    `receive_filter` `tc` (default with `locked`) or `nft` (default with send check `nft`);
    `bpf_pins` where the tc filter pins its maps (default: one directory per namespace).
    OVS only: the bridge, the OVSDB remote (default `unix:<ovs_rundir>/db.sock`) and the run
    directory holding the bridge's OpenFlow socket and ovs-vswitchd's control socket.
    """

    kind: str = "bridge"
    send_check: str = "locked"
    receive_filter: str | None = None
    bpf_pins: Path | None = None
    ovs_bridge: str = "br0"
    ovs_db: str | None = None
    ovs_rundir: str = "/run/openvswitch"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown back end {self.kind!r} (one of {', '.join(KINDS)})")
        if self.send_check not in SEND_CHECKS:
            raise ValueError(f"unknown send check {self.send_check!r} (one of {', '.join(SEND_CHECKS)})")
        if self.receive_filter is not None and self.receive_filter not in RECEIVE_FILTERS:
            raise ValueError(f"unknown receive filter {self.receive_filter!r} (one of {', '.join(RECEIVE_FILTERS)})")
        if self.send_check == "nft" and self.receive_filter == "tc":
            raise ValueError("--receive-filter tc needs --send-check locked (the tc filter has no send check)")


def build_backend(spec: BackendSpec) -> TenantFilter:
    """A back end for `spec`, built in the calling thread's network namespace (see module doc)."""
    if spec.kind == "ovs":
        from hostvlan.datapath.ovs import OvsFilter
        from hostvlan.datapath.ovs_proc import OvsTools
        from hostvlan.datapath.ovsdb import OvsDb

        tools = OvsTools(rundir=spec.ovs_rundir, db=spec.ovs_db)
        return OvsFilter(spec.ovs_bridge, tools, OvsDb(tools.db_remote), own_db=True)
    if spec.kind == "macvtap":
        from hostvlan.datapath.macvtap import MacvtapFilter

        return MacvtapFilter()
    from hostvlan.datapath.nft_bridge import bridge_filter

    return bridge_filter(spec.send_check, spec.receive_filter, spec.bpf_pins)
