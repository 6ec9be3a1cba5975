"""Compatibility: `hostvlan.datapath.kernel.ovs_proc` under its old name, for src/hostvlan/testbed and
src/hostvlan/bench until they build through `factory.build_backend`; delete then."""

from hostvlan.datapath.kernel.ovs_proc import OvsTools as OvsTools

__all__ = ["OvsTools"]
