"""Compatibility: `hostvlan.datapath.kernel.nft` under its old name, for src/hostvlan/testbed and
src/hostvlan/bench until they build through `factory.build_backend`; delete then."""

from hostvlan.datapath.kernel.nft import Nft as Nft

__all__ = ["Nft"]
