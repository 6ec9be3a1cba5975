"""Compatibility: `hostvlan.datapath.kernel.brports` under its old name, for src/hostvlan/testbed and
src/hostvlan/bench until they build through `factory.build_backend`; delete then."""

from hostvlan.datapath.kernel.brports import BridgePorts as BridgePorts

__all__ = ["BridgePorts"]
