"""Compatibility: `hostvlan.datapath.kernel.ovsdb` under its old name, for src/hostvlan/testbed and
src/hostvlan/bench until they build through `factory.build_backend`; delete then."""

from hostvlan.datapath.kernel.ovsdb import OvsDb as OvsDb

__all__ = ["OvsDb"]
