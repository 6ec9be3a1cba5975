"""Port bindings and the filter state one host's tenant filter enforces.

Design note: a binding ties a virtual-switch port to the vNIC MAC behind it; the port's
LNIDs are *not* copied into the binding but read from the host's LNID table entry of
that MAC, so a membership change of a running vNIC moves its port with it (SPEC §5,
"takes effect at once") and the two can never disagree. An uplink (the host's physical
NIC) is bound to the NIC's MAC and is always `global`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hostvlan.model.addresses import Addrs
from hostvlan.model.ids import GLOBAL, Lnid, Mac, PortName

_GLOBAL_SET: frozenset[Lnid] = frozenset({GLOBAL})
_EMPTY: frozenset[Lnid] = frozenset()


@dataclass(frozen=True)
class PortBinding:
    port: PortName
    mac: Mac
    uplink: bool = False


@dataclass(frozen=True)
class FilterState:
    """What one host's tenant filter enforces: its LNID table and its port bindings.

    `entries` maps every source MAC this host knows to the LNIDs that matter here
    (possibly empty: "known, shares nothing", which only `global` ports accept).
    `addresses` holds the addresses of the entries that have some (absent: unguarded).
    """

    entries: Mapping[Mac, frozenset[Lnid]] = field(default_factory=dict)
    bindings: Mapping[PortName, PortBinding] = field(default_factory=dict)
    addresses: Mapping[Mac, Addrs] = field(default_factory=dict)

    def port_lnids(self, port: PortName) -> frozenset[Lnid] | None:
        """The LNIDs of a port, or None when the port is not bound."""
        binding = self.bindings.get(port)
        if binding is None:
            return None
        if binding.uplink:
            return _GLOBAL_SET
        return self.entries.get(binding.mac, _EMPTY)
