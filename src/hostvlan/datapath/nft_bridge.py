"""Tenant filter for a Linux bridge, on nftables (bridge family).

Layout of the one table `bridge hostvlan` (the kernel here lacks `meta ibrname`, so the
table covers every bridge of the network namespace: one managed bridge per host netns):

  prerouting (before FDB learning, so forged frames also cannot poison the FDB)
      iifname @uplinks accept                       uplink: send check exempt
      iifname . ether saddr @bound accept           the port's own vNIC MAC
      iifname @ports counter tx:<port> drop          forged (counted per port)
      counter tx_unbound drop                       unbound port: fail closed
  forward, output (run once per output port, also per copy of a flood) -> rx
      ether saddr . oifname @pairs accept           ONE lookup for tenant traffic
      oifname @global_ports ether saddr @known accept
      ether saddr @global_src oifname @ports accept
      oifname @ports counter rx:<port> drop
      counter rx_unbound drop
  input (the host's own stack, a `global` member)
      ether saddr @known accept ; counter rx_host drop

Every base chain has policy drop. The sets are the model's facts
(`hostvlan.model.facts`) verbatim; the one-element set `digest` holds the digest of
them all, rewritten in every transaction, so a restarted agent can tell in one tiny
read whether the kernel holds what it wants. Atomicity: install, every change and removal is one
libnftables JSON batch, which the kernel commits as one transaction or not at all.
"""

from __future__ import annotations

from typing import Any

from hostvlan.datapath.base import DatapathError, PortCounters, TenantFilter
from hostvlan.datapath.nftlib import Nft
from hostvlan.model.facts import Facts, FactsDelta
from hostvlan.model.ids import Mac, PortName

TABLE = "hostvlan"
FAMILY = "bridge"
VERSION = "layout_v1"  # a counter of this name marks the table layout
PRIORITY = -200

UNBOUND_RX = "rx_unbound"
UNBOUND_TX = "tx_unbound"
HOST_RX = "rx_host"

_T = {"family": FAMILY, "table": TABLE}

_SETS: dict[str, str | list[str]] = {
    "known": "ether_addr",
    "global_src": "ether_addr",
    "ports": "ifname",
    "global_ports": "ifname",
    "uplinks": "ifname",
    "bound": ["ifname", "ether_addr"],
    "pairs": ["ether_addr", "ifname"],
}

_SADDR = {"payload": {"protocol": "ether", "field": "saddr"}}
_IIF = {"meta": {"key": "iifname"}}
_OIF = {"meta": {"key": "oifname"}}
_ACCEPT: dict[str, Any] = {"accept": None}
_DROP: dict[str, Any] = {"drop": None}


def _in(left: dict[str, Any], setname: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": f"@{setname}"}}


def _cat(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"concat": list(parts)}


def _rules() -> dict[str, list[list[dict[str, Any]]]]:
    return {
        "prerouting": [
            [_in(_IIF, "uplinks"), _ACCEPT],
            [_in(_cat(_IIF, _SADDR), "bound"), _ACCEPT],
            [_in(_IIF, "ports"), {"counter": {"map": {"key": _IIF, "data": "@tx_drops"}}}, _DROP],
            [{"counter": UNBOUND_TX}, _DROP],
        ],
        "forward": [[{"jump": {"target": "rx"}}]],
        "output": [[{"jump": {"target": "rx"}}]],
        "rx": [
            [_in(_cat(_SADDR, _OIF), "pairs"), _ACCEPT],
            [_in(_OIF, "global_ports"), _in(_SADDR, "known"), _ACCEPT],
            [_in(_SADDR, "global_src"), _in(_OIF, "ports"), _ACCEPT],
            [_in(_OIF, "ports"), {"counter": {"map": {"key": _OIF, "data": "@rx_drops"}}}, _DROP],
            [{"counter": UNBOUND_RX}, _DROP],
        ],
        "input": [
            [_in(_SADDR, "known"), _ACCEPT],
            [{"counter": HOST_RX}, _DROP],
        ],
    }


_HOOKS = {"prerouting": "prerouting", "forward": "forward", "output": "output", "input": "input"}


def _elem(name: str, item: object) -> object:
    if name in ("bound", "pairs"):
        assert isinstance(item, tuple)
        return {"concat": list(item)}
    return item


def _digest_text(digest: int) -> str:
    return f"{digest:015x}"


def _rx(port: str) -> str:
    return f"rx:{port}"


def _tx(port: str) -> str:
    return f"tx:{port}"


class NftBridgeFilter(TenantFilter):
    """HostVLAN on a Linux bridge. Create it inside the host's network namespace."""

    def __init__(self, nft: Nft | None = None) -> None:
        super().__init__()
        self._nft = nft or Nft()

    # ----- transactions -----------------------------------------------------------
    def _element_cmds(self, delta: FactsDelta, digest: int) -> list[dict[str, Any]]:
        cmds: list[dict[str, Any]] = [
            {"flush": {"set": {**_T, "name": "digest"}}},
            {"add": {"element": {**_T, "name": "digest", "elem": [_digest_text(digest)]}}},
        ]
        # removals first: a counter must leave its map before it is deleted
        for name in _SETS:
            items = getattr(delta, name).remove
            if items:
                elem = [_elem(name, i) for i in items]
                cmds.append({"delete": {"element": {**_T, "name": name, "elem": elem}}})
        gone = sorted(delta.ports.remove)
        if gone:
            for mapname in ("rx_drops", "tx_drops"):
                cmds.append({"delete": {"element": {**_T, "name": mapname, "elem": gone}}})
            for port in gone:
                cmds.append({"delete": {"counter": {**_T, "name": _rx(port)}}})
                cmds.append({"delete": {"counter": {**_T, "name": _tx(port)}}})
        new = sorted(delta.ports.add)
        for port in new:
            cmds.append({"add": {"counter": {**_T, "name": _rx(port)}}})
            cmds.append({"add": {"counter": {**_T, "name": _tx(port)}}})
        if new:
            cmds.append({"add": {"element": {**_T, "name": "rx_drops", "elem": [[p, _rx(p)] for p in new]}}})
            cmds.append({"add": {"element": {**_T, "name": "tx_drops", "elem": [[p, _tx(p)] for p in new]}}})
        for name in _SETS:
            items = getattr(delta, name).add
            if items:
                elem = [_elem(name, i) for i in items]
                cmds.append({"add": {"element": {**_T, "name": name, "elem": elem}}})
        return cmds

    def _install(self, delta: FactsDelta, digest: int) -> None:
        table = {"family": FAMILY, "name": TABLE}
        cmds: list[dict[str, Any]] = [
            {"add": {"table": table}},
            {"delete": {"table": table}},  # replaces a stale table in the same transaction
            {"add": {"table": table}},
            {"add": {"counter": {**_T, "name": VERSION}}},
        ]
        for name, typ in _SETS.items():
            cmds.append({"add": {"set": {**_T, "name": name, "type": typ}}})
        cmds.append({"add": {"set": {**_T, "name": "digest", "type": "ifname"}}})
        for name in ("rx_drops", "tx_drops"):
            cmds.append({"add": {"map": {**_T, "name": name, "type": "ifname", "map": "counter"}}})
        for name in (UNBOUND_RX, UNBOUND_TX, HOST_RX):
            cmds.append({"add": {"counter": {**_T, "name": name}}})
        cmds.append({"add": {"chain": {**_T, "name": "rx"}}})
        for chain, hook in _HOOKS.items():
            cmds.append(
                {
                    "add": {
                        "chain": {
                            **_T,
                            "name": chain,
                            "type": "filter",
                            "hook": hook,
                            "prio": PRIORITY,
                            "policy": "drop",
                        }
                    }
                }
            )
        for chain, rules in _rules().items():
            for expr in rules:
                cmds.append({"add": {"rule": {**_T, "chain": chain, "expr": expr}}})
        cmds.extend(self._element_cmds(delta, digest))
        self._nft.run(cmds)

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        self._nft.run(self._element_cmds(delta, digest))

    def _kernel_digest(self) -> int | None:
        try:
            out = self._nft.list_obj({"set": {**_T, "name": "digest"}})
        except DatapathError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        for item in out.get("nftables", []):
            elems = item.get("set", {}).get("elem", [])
            if len(elems) == 1 and isinstance(elems[0], str):
                try:
                    return int(elems[0], 16)
                except ValueError:
                    return None
        return None

    # ----- read-back ------------------------------------------------------------------
    def _list(self) -> list[dict[str, Any]] | None:
        try:
            out = self._nft.list(f"table {FAMILY} {TABLE}")
        except DatapathError as exc:
            if "No such file or directory" in str(exc):
                return None
            raise
        items: list[dict[str, Any]] = out.get("nftables", [])
        return items

    def read(self) -> Facts | None:
        items = self._list()
        if items is None:
            return None
        single: dict[str, set[str]] = {name: set() for name, t in _SETS.items() if isinstance(t, str)}
        double: dict[str, set[tuple[str, str]]] = {name: set() for name, t in _SETS.items() if isinstance(t, list)}
        version = None
        for item in items:
            if "counter" in item and item["counter"]["name"] == VERSION:
                version = VERSION
            elif "set" in item:
                name = item["set"]["name"]
                for e in item["set"].get("elem", []):
                    if name in double and isinstance(e, dict):
                        a, b = e["concat"]
                        double[name].add((str(a), str(b)))
                    elif name in single:
                        single[name].add(str(e))
        if version != VERSION:
            return None  # foreign or older layout: reinstall atomically
        return Facts(
            known=frozenset(Mac(m) for m in single["known"]),
            global_src=frozenset(Mac(m) for m in single["global_src"]),
            ports=frozenset(PortName(p) for p in single["ports"]),
            global_ports=frozenset(PortName(p) for p in single["global_ports"]),
            uplinks=frozenset(PortName(p) for p in single["uplinks"]),
            bound=frozenset((PortName(p), Mac(m)) for p, m in double["bound"]),
            pairs=frozenset((Mac(m), PortName(p)) for m, p in double["pairs"]),
        )

    def counters(self) -> dict[str, PortCounters]:
        try:
            items = self._nft.list_obj({"counters": {"family": FAMILY, "table": TABLE}}).get("nftables", [])
        except DatapathError as exc:
            if "No such file or directory" in str(exc):
                return {}
            raise
        rx: dict[str, int] = {}
        tx: dict[str, int] = {}
        for item in items:
            c = item.get("counter")
            if not c:
                continue
            name, packets = str(c["name"]), int(c.get("packets", 0))
            if name.startswith("rx:"):
                rx[name[3:]] = packets
            elif name.startswith("tx:"):
                tx[name[3:]] = packets
            elif name == UNBOUND_RX:
                rx["(unbound)"] = packets
            elif name == UNBOUND_TX:
                tx["(unbound)"] = packets
            elif name == HOST_RX:
                rx["(host)"] = packets
        return {p: PortCounters(rx.get(p, 0), tx.get(p, 0)) for p in sorted(set(rx) | set(tx))}

    def _remove(self) -> None:
        table = {"family": FAMILY, "name": TABLE}
        self._nft.run([{"add": {"table": table}}, {"delete": {"table": table}}])

    def close(self) -> None:
        self._nft.close()
