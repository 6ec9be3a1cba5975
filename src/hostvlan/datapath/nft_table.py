"""The nftables table shared by the back ends that filter with nftables (bridge, macvtap).

One table `hostvlan` per family holds the model's facts verbatim as sets, a one-element
set `digest` (the digest of all of them, rewritten in every transaction, so a restarted
agent can tell in one tiny read whether the kernel holds what it wants), per-port drop
counters selected by objref maps, and the receive/send rule lists both back ends hook
into their chains:

  receive (port = the meta key naming the output port)
      ether saddr . port @pairs accept              ONE lookup for tenant traffic
      port @global_ports ether saddr @known accept
      ether saddr @global_src port @ports accept
      port @ports counter rx:<port> drop
      counter rx_unbound drop
  send (port = the meta key naming the input port)
      port . ether saddr @bound accept              the port's own vNIC MAC
      port @uplinks accept                          uplink: exempt
      port @ports counter tx:<port> drop             forged (counted per port)
      counter tx_unbound drop

With drop events (`events=True`, `logged`), each counted drop rule is preceded by a rule with
the same matches that logs the frame (`limit name "events" log group 0x4856 prefix "hv <reason>
<iif|oif>"`: a named limit of the table, 64 a second with a burst of 64, shared by every log
rule; over it the rule just ends and the drop rule below still counts). The log rules come
after every accept: an allowed frame never reaches one. `nft_events.NftEvents` reads them.

`NftTable` is a helper a back end holds (composition, not a base class): the back end gives
it the chains of its layout (at install), per-port chain commands (in the same batch as the
elements) and a check of its chains on read-back. A layout is named by a `version` counter
in the table and mixed into the stored digest. Atomicity: install, every change and removal
is one libnftables JSON batch, which the kernel commits as one transaction or not at all.
"""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

from hostvlan.datapath.base import DatapathError, PortCounters
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.model.facts import Facts, FactsDelta
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.verdict import FORGED_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

TABLE = "hostvlan"
PRIORITY = -200
UNBOUND_RX = "rx_unbound"
UNBOUND_TX = "tx_unbound"

SETS: dict[str, str | list[str]] = {
    "known": "ether_addr",
    "global_src": "ether_addr",
    "ports": "ifname",
    "global_ports": "ifname",
    "uplinks": "ifname",
    "bound": ["ifname", "ether_addr"],
    "pairs": ["ether_addr", "ifname"],
}

SADDR = {"payload": {"protocol": "ether", "field": "saddr"}}
IIF = {"meta": {"key": "iifname"}}
OIF = {"meta": {"key": "oifname"}}
ACCEPT: dict[str, Any] = {"accept": None}
DROP: dict[str, Any] = {"drop": None}

Rule = list[dict[str, Any]]
Cmd = dict[str, Any]

EVENT_GROUP = 0x4856  # the NFLOG group of the drop rules' log statements (OVS's meter has the same id)
EVENT_LIMIT = "events"  # the table's named limit object every log rule takes from
EVENT_RATE = 64  # frames logged a second (and as many in a burst), all log rules together
EVENT_PREFIX = "hv"  # NFULA_PREFIX: "hv <reason> <iif|oif>" (the side names the port)
# a drop rule's counter (map or named counter) -> the reason its frames are dropped for
_REASON_OF = {
    "@rx_drops": NO_SHARED_LNID,
    "@ru_drops": UNKNOWN_SOURCE,
    "@tx_drops": FORGED_SOURCE,
    UNBOUND_RX: UNBOUND_PORT,
    UNBOUND_TX: UNBOUND_PORT,
}


def match(left: dict[str, Any], setname: str) -> dict[str, Any]:
    return {"match": {"op": "==", "left": left, "right": f"@{setname}"}}


def concat(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"concat": list(parts)}


def jump(target: str) -> Rule:
    return [{"jump": {"target": target}}]


def receive_rules(port: dict[str, Any]) -> list[Rule]:
    """The model's receive filter (`Facts.receive`), `port` naming the output port."""
    return [
        [match(concat(SADDR, port), "pairs"), ACCEPT],
        [match(port, "global_ports"), match(SADDR, "known"), ACCEPT],
        [match(SADDR, "global_src"), match(port, "ports"), ACCEPT],
        [match(port, "ports"), {"counter": {"map": {"key": port, "data": "@rx_drops"}}}, DROP],
        [{"counter": UNBOUND_RX}, DROP],
    ]


def send_rules(port: dict[str, Any]) -> list[Rule]:
    """The model's send check (`Facts.send`), `port` naming the input port."""
    return [
        [match(concat(port, SADDR), "bound"), ACCEPT],
        [match(port, "uplinks"), ACCEPT],
        [match(port, "ports"), {"counter": {"map": {"key": port, "data": "@tx_drops"}}}, DROP],
        [{"counter": UNBOUND_TX}, DROP],
    ]


def _elem(name: str, item: object) -> object:
    if isinstance(SETS[name], list):
        assert isinstance(item, tuple)
        return {"concat": list(item)}
    return item


def _rx(port: str) -> str:
    return f"rx:{port}"


def _tx(port: str) -> str:
    return f"tx:{port}"


def _ru(port: str) -> str:
    return f"ru:{port}"


def unknown_source_rule(port: dict[str, Any]) -> Rule:
    """A receive-filter rule placed before the per-port drop (`split_unknown` tables): a frame whose
    source is not in the table, counted apart (`ru:<port>`, reason unknown_source)."""
    unknown = {"match": {"op": "!=", "left": SADDR, "right": "@known"}}
    return [match(port, "ports"), unknown, {"counter": {"map": {"key": port, "data": "@ru_drops"}}}, DROP]


def receive_chain(port: dict[str, Any]) -> list[Rule]:
    """The receive filter with the drops of unknown sources counted apart (`ru:<port>`)."""
    rules = receive_rules(port)
    return [*rules[:3], unknown_source_rule(port), *rules[3:]]


def logged(rules: list[Rule], port: dict[str, Any]) -> list[Rule]:
    """`rules` (receive or send rules on the meta key `port`) with, before each counted drop, a
    rule of the same matches that logs the frame under the table's limit (module doc): only
    frames on their way to that drop reach it."""
    side = "iif" if port == IIF else "oif"
    out: list[Rule] = []
    for rule in rules:
        if rule and rule[-1] == DROP:
            counter = next(e["counter"] for e in rule if "counter" in e)
            reason = _REASON_OF[counter if isinstance(counter, str) else str(counter["map"]["data"])]
            log = {"log": {"group": EVENT_GROUP, "prefix": f"{EVENT_PREFIX} {reason} {side}"}}
            out.append([*(e for e in rule if "match" in e), {"limit": EVENT_LIMIT}, log])
        out.append(rule)
    return out


def _missing(exc: DatapathError) -> bool:
    return exc.errno == errno.ENOENT


ChainCmds = tuple[list[Cmd], list[Cmd]]  # per-port chains to delete (after elements leave), to add (at the end)
NO_CHAINS: ChainCmds = ([], [])


class NftTable:
    """The table `<family> hostvlan` of one back end (see module doc), on one libnftables
    context (bound to the network namespace it was created in)."""

    def __init__(
        self,
        nft: Nft,
        family: str,
        version: str,
        extra_counters: Mapping[str, str] | None = None,
        *,
        split_unknown: bool = False,
        events: bool = False,
    ) -> None:
        self.nft = nft
        self.family = family
        self.version = version  # a counter of this name marks the table layout
        self.extra_counters = dict(extra_counters or {})  # counter name -> bucket it is reported as (rx)
        # per-port counters `ru:<port>` (map ru_drops) for the receive drops of unknown sources
        # (`unknown_source_rule`), so `rx:<port>` counts only those of no shared LNID
        self._maps = ("rx_drops", "tx_drops", "ru_drops") if split_unknown else ("rx_drops", "tx_drops")
        self.events = events  # the table holds the named limit of the drop rules' log rules (`logged`)
        self._t = {"family": family, "table": TABLE}
        # mixed into the stored digest: an agent of another layout (flavour, version) never takes
        # the kernel's digest for its own, so it reinstalls instead of trusting a layout it does not run
        self._mask = int(hashlib.sha256(version.encode()).hexdigest()[:15], 16)

    @property
    def ref(self) -> dict[str, str]:
        """{"family", "table"}: the table part of every object's JSON spec."""
        return dict(self._t)

    # ----- transactions --------------------------------------------------------------------
    def element_cmds(self, delta: FactsDelta, digest: int, chains: ChainCmds = NO_CHAINS) -> list[Cmd]:
        """The batch that applies `delta` and stores `digest` (with a back end's per-port chains)."""
        t = self._t
        cmds: list[Cmd] = [
            {"flush": {"set": {**t, "name": "digest"}}},
            {"add": {"element": {**t, "name": "digest", "elem": [f"{digest ^ self._mask:015x}"]}}},
        ]
        # removals first: a counter must leave its map before it is deleted
        for name in SETS:
            items = getattr(delta, name).remove
            if items:
                cmds.append({"delete": {"element": {**t, "name": name, "elem": [_elem(name, i) for i in items]}}})
        gone = sorted(delta.ports.remove)
        if gone:
            for mapname in self._maps:
                cmds.append({"delete": {"element": {**t, "name": mapname, "elem": gone}}})
            for port in gone:
                for name in self._port_counters(port):
                    cmds.append({"delete": {"counter": {**t, "name": name}}})
        old_chains, new_chains = chains
        cmds.extend(old_chains)
        new = sorted(delta.ports.add)
        for port in new:
            for name in self._port_counters(port):
                cmds.append({"add": {"counter": {**t, "name": name}}})
        if new:
            for mapname, counter in zip(self._maps, (_rx, _tx, _ru), strict=False):
                cmds.append({"add": {"element": {**t, "name": mapname, "elem": [[p, counter(p)] for p in new]}}})
        for name in SETS:
            items = getattr(delta, name).add
            if items:
                cmds.append({"add": {"element": {**t, "name": name, "elem": [_elem(name, i) for i in items]}}})
        cmds.extend(new_chains)
        return cmds

    def install_cmds(
        self, layout: list[Cmd], delta: FactsDelta, digest: int, chains: ChainCmds = NO_CHAINS
    ) -> list[Cmd]:
        """The batch that (re)creates the table with the chains `layout`, holding `delta.add`."""
        t, table = self._t, {"family": self.family, "name": TABLE}
        cmds: list[Cmd] = [
            {"add": {"table": table}},
            {"delete": {"table": table}},  # replaces a stale table in the same transaction
            {"add": {"table": table}},
            {"add": {"counter": {**t, "name": self.version}}},
        ]
        for name, typ in SETS.items():
            cmds.append({"add": {"set": {**t, "name": name, "type": typ}}})
        cmds.append({"add": {"set": {**t, "name": "digest", "type": "ifname"}}})
        for name in self._maps:
            cmds.append({"add": {"map": {**t, "name": name, "type": "ifname", "map": "counter"}}})
        for name in (UNBOUND_RX, UNBOUND_TX, *self.extra_counters):
            cmds.append({"add": {"counter": {**t, "name": name}}})
        if self.events:
            limit = {**t, "name": EVENT_LIMIT, "rate": EVENT_RATE, "per": "second", "burst": EVENT_RATE}
            cmds.append({"add": {"limit": limit}})
        cmds.extend(layout)
        cmds.extend(self.element_cmds(delta, digest, chains))
        return cmds

    def _port_counters(self, port: str) -> list[str]:
        return [_rx(port), _tx(port), _ru(port)][: len(self._maps)]

    def run(self, cmds: list[Cmd]) -> None:
        """One batch: one kernel transaction."""
        self.nft.run(cmds)

    def remove(self) -> None:
        """Delete the table (absent: no error), in one transaction."""
        table = {"family": self.family, "name": TABLE}
        self.nft.run([{"add": {"table": table}}, {"delete": {"table": table}}])

    def close(self) -> None:
        self.nft.close()

    # ----- read-back -------------------------------------------------------------------------
    def digest(self) -> int | None:
        """The digest stored in the table; None when absent or of another layout."""
        try:
            out = self.nft.list_obj({"set": {**self._t, "name": "digest"}})
        except DatapathError as exc:
            if _missing(exc):
                return None
            raise
        for item in out.get("nftables", []):
            elems = item.get("set", {}).get("elem", [])
            if len(elems) == 1 and isinstance(elems[0], str):
                try:
                    return int(elems[0], 16) ^ self._mask
                except ValueError:
                    return None
        return None

    def read(self, layout_matches: Callable[[Facts, list[dict[str, Any]]], bool] | None = None) -> Facts | None:
        """The facts the table holds; None when it is absent, of another layout, or its chains do
        not fit its sets (`layout_matches`): the next apply then reinstalls it in one transaction."""
        try:
            items: list[dict[str, Any]] = self.nft.list(f"table {self.family} {TABLE}").get("nftables", [])
        except DatapathError as exc:
            if _missing(exc):
                return None
            raise
        single: dict[str, set[str]] = {name: set() for name, t in SETS.items() if isinstance(t, str)}
        double: dict[str, set[tuple[str, str]]] = {name: set() for name, t in SETS.items() if isinstance(t, list)}
        version = None
        for item in items:
            if "counter" in item and item["counter"]["name"] == self.version:
                version = self.version
            elif "set" in item:
                name = item["set"]["name"]
                for e in item["set"].get("elem", []):
                    if name in double and isinstance(e, dict):
                        a, b = e["concat"]
                        double[name].add((str(a), str(b)))
                    elif name in single:
                        single[name].add(str(e))
        if version != self.version:
            return None  # foreign or older layout: reinstall atomically
        facts = Facts(
            known=frozenset(Mac(m) for m in single["known"]),
            global_src=frozenset(Mac(m) for m in single["global_src"]),
            ports=frozenset(PortName(p) for p in single["ports"]),
            global_ports=frozenset(PortName(p) for p in single["global_ports"]),
            uplinks=frozenset(PortName(p) for p in single["uplinks"]),
            bound=frozenset((PortName(p), Mac(m)) for p, m in double["bound"]),
            pairs=frozenset((Mac(m), PortName(p)) for m, p in double["pairs"]),
        )
        return facts if layout_matches is None or layout_matches(facts, items) else None

    def counters(self, by_table: bool = False) -> dict[str, PortCounters]:
        """Drop counters per port name, `(unbound)` and the extra buckets. `by_table`: read them
        from a listing of this table by name (nft 1.0.6 hangs listing `counters` while the
        family holds a prefix-hook chain, the macvtap guard's)."""
        return self.port_counters(self.packets(by_table))

    def packets(self, by_table: bool = False) -> dict[str, int]:
        """Packets of each named counter of this table (absent: {}); `by_table` as in `counters`."""
        try:
            if by_table:
                items = self.nft.list(f"table {self.family} {TABLE}").get("nftables", [])
            else:
                items = self.nft.list_obj({"counters": self._t}).get("nftables", [])
        except DatapathError as exc:
            if _missing(exc):
                return {}
            raise
        return {str(i["counter"]["name"]): int(i["counter"].get("packets", 0)) for i in items if i.get("counter")}

    def port_counters(self, counts: Mapping[str, int]) -> dict[str, PortCounters]:
        """`counters()` from the packets of each named counter of this table (read otherwise,
        e.g. over nfnetlink); an `ru:<port>` counter adds to the port's receive drops."""
        rx: dict[str, int] = {}
        tx: dict[str, int] = {}
        for name, packets in counts.items():
            if name.startswith("ru:"):
                rx[name[3:]] = rx.get(name[3:], 0) + packets
            elif name.startswith("rx:"):
                rx[name[3:]] = rx.get(name[3:], 0) + packets
            elif name.startswith("tx:"):
                tx[name[3:]] = packets
            elif name == UNBOUND_RX:
                rx["(unbound)"] = packets
            elif name == UNBOUND_TX:
                tx["(unbound)"] = packets
            elif name in self.extra_counters:
                rx[self.extra_counters[name]] = packets
        return {p: PortCounters(rx.get(p, 0), tx.get(p, 0)) for p in sorted(set(rx) | set(tx))}
