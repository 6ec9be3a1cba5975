"""macvtap closed by construction: a guard on every macvtap, bound or not, agent or no agent.

`MacvtapFilter` filters a macvtap only once its port is bound (per-port chains); an unbound
macvtap that is up is open (its broadcasts reach its siblings without passing any hook of the
lower device), so alone it relies on a contract: nobody brings a macvtap up before its port is
bound. With the agent down, libvirt creating and raising a macvtap breaks it.

What the kernel allows (6.16+): a netdev base chain whose hook names a device-name PREFIX
(`NFTA_DEVICE_PREFIX`) is attached to every device whose name starts with it, present or
created later, before the device can come up. `MacvtapGuard`, a part the factory composes into
`MacvtapFilter` by default (`build_backend(..., guard=False)`, the agent's `--no-macvtap-guard`,
leave it out), owns two such chains on `macvtap*` (the name the kernel and libvirt give
macvtaps; configurable), both policy drop:

    table netdev hostvlan_guard
        set ports { type ifname }                   = Facts.ports, kept in the SAME
                                                      transaction as the binding
        counter guard_in, counter guard_out         what each chain drops (`drops`)
        set unbound { type ifname; flags dynamic }  the same per device (a counter each)
        chain guard_in   hook ingress devices macvtap*   iifname @ports accept  (copies to the VM)
                                                         counter name guard_in
                                                         update @unbound { iifname counter }
        chain guard_out  hook egress  devices macvtap*   oifname @ports accept  (what the VM sends)
                                                         counter name guard_out
                                                         update @unbound { oifname counter }

so a macvtap no binding names receives nothing and sends nothing, whatever its admin state;
the per-port chains of `MacvtapFilter` keep doing the exact checks of a bound one.

How, and what it costs. nft 1.0.6 cannot express a prefix hook, so the two chains are created
through raw nfnetlink (`kernel/nfnl.py`) once, right after the table and set (libnftables); the
set's elements then move with every libnftables batch of `MacvtapFilter`. The guard lives in its
own table because nft 1.0.6 cannot LIST a prefix chain (it hangs; so do `nft list ruleset`,
`list tables`, `list counters` and `list counter …` while the guard exists, whatever table they
name): hostvlan reads its own table by name, the guard's set by name, and the guard's chains and
every counter over raw nfnetlink (`Nfnl.counters`, `Nfnl.rule_count`). Each macvtap frame
passes one more hook per direction (an ifname set lookup). A macvtap not named `<prefix>…` is
not guarded. May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

import errno
from typing import Any

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.kernel.nfnl import NFPROTO_NETDEV, GuardChain, Nfnl
from hostvlan.datapath.kernel.nft import Nft
from hostvlan.datapath.nft_table import Cmd
from hostvlan.model.facts import Facts, FactsDelta

GUARD_TABLE = "hostvlan_guard"
GUARD_SET = "ports"
PREFIX = "macvtap"
VERSION = "layout_macvtap_v5_guard"  # the macvtap table's layout with the guard
GUARD_RULES = 3  # per chain: the accept of bound ports, the counter of the rest, the same per device
SEEN = "unbound"  # dynamic set: every device the guard dropped frames of, with a counter each
SEEN_SIZE = 1024  # when full, a new device's drops are only in the chains' counters


class MacvtapGuard:
    """The guard chains and their set (see module doc); `nfnl` is owned and closed here."""

    def __init__(self, nfnl: Nfnl, prefix: str = PREFIX) -> None:
        self._nfnl = nfnl  # in the caller's namespace, like the nftables context
        self._prefix = prefix
        self._g = {"family": "netdev", "table": GUARD_TABLE, "name": GUARD_SET}

    def _guards(self) -> list[GuardChain]:
        return [
            GuardChain("guard_in", "ingress", self._prefix, GUARD_SET, "guard_in", SEEN),
            GuardChain("guard_out", "egress", self._prefix, GUARD_SET, "guard_out", SEEN),
        ]

    @property
    def nfnl(self) -> Nfnl:
        return self._nfnl

    def batch(self, delta: FactsDelta, cmds: list[Cmd], *, fresh: bool) -> list[Cmd]:
        """The macvtap table's batch `cmds` with the guard's set moved along (same transaction):
        an install (re)creates the table and set and rewrites it; removals first, additions last."""
        g = self._g
        if fresh:
            table = {"family": "netdev", "name": GUARD_TABLE}
            counters = [{"add": {"counter": {**g, "name": c.counter}}} for c in self._guards()]
            head = [{"add": {"table": table}}, {"add": {"set": {**g, "type": "ifname"}}}, {"flush": {"set": g}}]
            cmds = [*head, *counters, *cmds]
        elif delta.ports.remove:
            cmds = [{"delete": {"element": {**g, "elem": sorted(delta.ports.remove)}}}, *cmds]
        if delta.ports.add:
            cmds = [*cmds, {"add": {"element": {**g, "elem": sorted(delta.ports.add)}}}]
        return cmds

    def _rules(self) -> dict[str, int | None]:
        """Chain name → its number of rules (None: no such chain)."""
        out: dict[str, int | None] = {}
        for c in self._guards():
            there = self._nfnl.chain_exists(NFPROTO_NETDEV, GUARD_TABLE, c.name)
            out[c.name] = self._nfnl.rule_count(NFPROTO_NETDEV, GUARD_TABLE, c.name) if there else None
        return out

    def guarded(self) -> bool:
        return all(n == GUARD_RULES for n in self._rules().values())

    def installed(self, nft: Nft) -> None:
        """After an install's batch: the set `unbound` (nft syntax: 1.0.6's JSON has no `dynamic`
        flag; `add` of an existing one is a no-op), the prefix chains if missing, their rules if not
        this layout's (a chain that exists keeps its hook: its rules are replaced in the same
        transaction)."""
        nft.run_text(f"add set netdev {GUARD_TABLE} {SEEN} {{ type ifname ; flags dynamic ; size {SEEN_SIZE} ; }}")
        rules = self._rules()
        if any(n != GUARD_RULES for n in rules.values()):
            self._nfnl.add_guards(GUARD_TABLE, self._guards(), existing={c for c, n in rules.items() if n is not None})

    def check(self, nft: Nft, facts: Facts) -> bool:
        """The chains (with this layout's rules) and counters exist, the set holds exactly `facts.ports`."""
        if not self.guarded():
            return False
        try:
            items: list[dict[str, Any]] = nft.list_obj({"set": self._g}).get("nftables", [])
        except DatapathError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        elems = {str(e) for item in items for e in item.get("set", {}).get("elem", [])}
        return elems == set(facts.ports) and set(self.counters()) == {c.counter for c in self._guards()}

    def counters(self) -> dict[str, int]:
        """Frames each guard chain dropped (counter name → packets), over nfnetlink."""
        return self._nfnl.counters(NFPROTO_NETDEV, GUARD_TABLE)

    def by_device(self, nft: Nft) -> dict[str, int]:
        """Frames dropped per device (both chains), from the set `unbound` listed by name (which
        nft 1.0.6 does beside the prefix chains); absent: {}."""
        try:
            items: list[dict[str, Any]] = nft.list_counted({"set": {**self._g, "name": SEEN}}).get("nftables", [])
        except DatapathError as exc:
            if exc.errno == errno.ENOENT:
                return {}
            raise
        out: dict[str, int] = {}
        for item in items:
            for e in item.get("set", {}).get("elem", []):
                elem = e.get("elem", {}) if isinstance(e, dict) else {}
                if "val" in elem:
                    out[str(elem["val"])] = int((elem.get("counter") or {}).get("packets", 0))
        return out

    @staticmethod
    def remove_cmds() -> list[Cmd]:
        """Delete the guard's table (absent: no error)."""
        t = {"family": "netdev", "name": GUARD_TABLE}
        return [{"add": {"table": t}}, {"delete": {"table": t}}]

    def close(self) -> None:
        self._nfnl.close()
