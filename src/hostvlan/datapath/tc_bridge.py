"""Compatibility: the old constructor of the tc bridge back end, for src/hostvlan/testbed and
src/hostvlan/bench until they build through `factory.build_backend`; delete then."""

from __future__ import annotations

from pathlib import Path

from hostvlan.datapath.bridge.backend import BridgeFilter
from hostvlan.datapath.bridge.locked import LockedPorts
from hostvlan.datapath.bridge.tc import BPFFS, TcReceiveFilter
from hostvlan.datapath.kernel.brports import BridgePorts
from hostvlan.datapath.kernel.nft import Nft

__all__ = ["BPFFS", "TcBridgeFilter"]


class TcBridgeFilter(BridgeFilter):
    """`build_backend(BackendSpec(), nft=nft, ports=ports)` with the pins `pins`."""

    def __init__(self, nft: Nft | None = None, ports: BridgePorts | None = None, pins: Path | None = None) -> None:
        ports = ports or BridgePorts()
        super().__init__(nft or Nft(), LockedPorts(ports), TcReceiveFilter(ports, pins))
