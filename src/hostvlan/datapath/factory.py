"""The one place that builds a tenant-filter back end from its name and options.

The agent, the testbed, the bench and the integration tests all call `build_backend`; no
module outside `hostvlan.datapath` constructs a back-end class (the in-memory reference
filter of the tests aside). Call it inside the host's network namespace: the back ends bind
their kernel contexts (nftables, netlink, the namespace's BPF pins) when they are built.

A Linux bridge back end is composed here (`bridge.backend`): the table, a send check
(`locked` | `nft`), a receive filter (`tc` | `nft`) and, with `locked` + `tc`, the part that
closes every port no binding names (`bridge.closing`; keyword `closing=False` leaves it out,
`fast_path=False` keeps its chains without the fast path: the bench's `tc`, `closedhooks`)
and, with the send check `locked`, the address guard (`bridge.guard`, issue 13: tcx ingress of
every VM port; keyword `address_guard=False` leaves it out);
a macvtap back end is composed of its table, the address guard's chains (`macvtap_addr`;
keyword `address_guard=False` leaves them out) and the guard that closes every `macvtap*` no
binding names (`macvtap_guard`; keyword `guard=False`, the agent's `--no-macvtap-guard`,
leaves it out).
Callers that share or record kernel contexts (tests, the bench) pass them as keyword options:
`nft` (a libnftables context), `ports` (the bridge's netlink ports), `ovs_tools`,
`nfnl` (the macvtap back end's raw nfnetlink socket), `ovsdb` (an OVSDB connection the caller
keeps and closes; the factory then skips its open-time check of the bridge, the caller set
it up). The bridge and macvtap back ends own and close the `nft` and `ports` they are given.
`clean_host` (in `cleanup`) takes the same options. May import `hostvlan.datapath` and
`hostvlan.model` only.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hostvlan.datapath.base import DatapathError, TenantFilter

if TYPE_CHECKING:  # the kernel libraries load native code: imported where a back end needs them
    from hostvlan.datapath.kernel.brports import BridgePorts
    from hostvlan.datapath.kernel.nfnl import Nfnl
    from hostvlan.datapath.kernel.nft import Nft
    from hostvlan.datapath.kernel.ovs_proc import OvsTools
    from hostvlan.datapath.kernel.ovsdb import OvsDb

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

    @property
    def receive(self) -> str:
        """The receive filter in force: given, or the send check's default."""
        return self.receive_filter or ("tc" if self.send_check == "locked" else "nft")


def build_backend(
    spec: BackendSpec,
    *,
    nft: Nft | None = None,
    ports: BridgePorts | None = None,
    ovs_tools: OvsTools | None = None,
    ovsdb: OvsDb | None = None,
    nfnl: Nfnl | None = None,
    closing: bool = True,
    fast_path: bool = True,
    guard: bool = True,
    address_guard: bool = True,
) -> TenantFilter:
    """A back end for `spec`, built in the calling thread's network namespace (see module doc)."""
    if spec.kind == "ovs":
        return _ovs(spec, ovs_tools, ovsdb)
    from hostvlan.datapath.kernel.nft import Nft

    if spec.kind == "macvtap":
        from hostvlan.datapath.kernel.nfnl import Nfnl
        from hostvlan.datapath.macvtap import MacvtapFilter
        from hostvlan.datapath.macvtap_guard import MacvtapGuard

        # the guard closes every macvtap* no binding names; while it exists nft 1.0.6 hangs listing
        # counters, tables or the ruleset, so the back end reads counters over nfnetlink
        # (docs/closed-ports.md)
        link = nfnl or Nfnl()
        closer = MacvtapGuard(link) if guard else None
        if address_guard:  # issue 13: `macvtap_addr`, chains of its own table at each VM macvtap's egress
            from hostvlan.datapath.macvtap_addr import GuardedMacvtapFilter

            return GuardedMacvtapFilter(nft or Nft(), closer, None if guard else link)
        return MacvtapFilter(nft or Nft(), closer, None if guard else link)
    return _bridge(spec, nft or Nft(), ports, closing=closing, fast_path=fast_path, address_guard=address_guard)


def _bridge(
    spec: BackendSpec, nft: Nft, ports: BridgePorts | None, *, closing: bool, fast_path: bool, address_guard: bool
) -> TenantFilter:
    from hostvlan.datapath.bridge import closing as closing_part
    from hostvlan.datapath.bridge.backend import BridgeFilter
    from hostvlan.datapath.bridge.guard import AddressGuard
    from hostvlan.datapath.bridge.locked import LockedPorts
    from hostvlan.datapath.bridge.nft import NftReceiveFilter, NftSendCheck
    from hostvlan.datapath.bridge.parts import ReceiveFilter, SendCheck
    from hostvlan.datapath.bridge.tc import TcReceiveFilter
    from hostvlan.datapath.kernel.brports import BridgePorts

    send: SendCheck
    receive: ReceiveFilter
    closes: closing_part.Closing | None = None
    guard: AddressGuard | None = None
    if spec.send_check == "nft":
        send, receive = NftSendCheck(), NftReceiveFilter(inline=False)  # layout_v6_nft jumps to a chain rx
    else:
        ports = ports or BridgePorts()
        send = LockedPorts(ports)
        if spec.receive == "tc" and closing:  # the default: no port open until bound
            tc = TcReceiveFilter(ports, spec.bpf_pins, obj=closing_part.OBJECT, extra=closing_part.EXTRA)
            receive, closes = tc, closing_part.Closing(tc, fast_path=fast_path)
        elif spec.receive == "tc":
            receive = TcReceiveFilter(ports, spec.bpf_pins)
        else:
            receive = NftReceiveFilter(inline=True, ports=ports)
        if address_guard:  # issue 13: tcx ingress of every VM port, before the fast path
            guard = AddressGuard(ports, spec.bpf_pins)
    return BridgeFilter(nft, send, receive, closes, guard)


def _ovs(spec: BackendSpec, tools: OvsTools | None, db: OvsDb | None) -> TenantFilter:
    from hostvlan.datapath.kernel.ovs_proc import OvsTools
    from hostvlan.datapath.ovs import OvsFilter

    tools = tools or OvsTools(rundir=spec.ovs_rundir, db=spec.ovs_db)
    if db is not None:
        return OvsFilter(spec.ovs_bridge, tools, db)
    filt = OvsFilter(spec.ovs_bridge, tools, open_ovsdb(tools.db_remote), own_db=True)
    try:
        filt.check_bridge()
    except BaseException:
        filt.close()
        raise
    return filt


def open_ovsdb(remote: str) -> OvsDb:
    """A connection to the OVSDB at `remote`; a one-line DatapathError saying what to do if none."""
    from hostvlan.datapath.kernel.ovsdb import OvsDb

    try:
        return OvsDb(remote)
    except DatapathError as exc:
        code = exc.errno or errno.ECONNREFUSED
        raise DatapathError(
            f"no OVSDB answers at {remote} ({os.strerror(code)}): is Open vSwitch running (e.g. `systemctl start "
            "openvswitch-switch`)? Else name its socket (--ovs-db, --ovs-rundir)",
            errno=code,
        ) from exc
