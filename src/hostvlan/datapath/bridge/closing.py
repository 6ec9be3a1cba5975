"""The bridge closed by construction: no port is open (the agent's default with `--receive-filter tc`).

`tc.TcReceiveFilter` alone leaves a port that joins the bridge open (the kernel's defaults:
unlocked, learning, flooded to) until an agent attaches its program and the send check locks
it; with the agent down it stays open. `Closing`, a third part of `backend.BridgeFilter`
composed with the send check `locked` and the receive filter `tc` (whose maps and programs
it shares: the receive filter then loads `bpf/hv_fwd.o`, hv_rx.c plus the fast path), adds:

1. Netfilter chains that close every port no binding names, whoever created it and whether an
   agent runs or not (table `bridge hostvlan`, every base chain policy drop, kernel state that
   outlives the agent):

       prerouting  iif @open accept ; counter tx_unbound drop   (before FDB learning: a new
                   port's frames are neither forwarded nor learned)
       forward     oif @open accept ; counter rx_unbound drop   (no copy of a flood, no
       output      the same, for the host's own frames           unicast reaches it)

   `open` holds the IFINDEXES of the bound ports (uplinks included) as they exist, rewritten
   in the one nftables transaction that binds them; by ifindex because a port re-created under
   a bound name while no agent runs (libvirt reuses `vnetN`) is a new device: closed until an
   agent has locked it and attached its programs (`follow`, at the link event or the agent's
   first apply). The exact checks stay where they were (the lock and its sticky entries, the
   egress program), which a bound port gets BEFORE that transaction (`prepare`).

2. A fast path so that the frames of the common case never reach those hooks: `hv_fwd`
   (`bpf/hv_fwd.c`) at the tcx INGRESS of every bridge port redirects a unicast frame whose
   destination is a bound vNIC MAC on another port and whose source passes its input port's
   send check straight to that port, where the egress program does the receive check as for
   any copy the bridge sends. Everything else (groups, the host, the wire, a miss) goes the
   exact slow way. It never drops and only delivers what the bridge would deliver there.
   Maps `fdb` (bound vNIC MAC -> its port's ifindex), `bound` ({ifindex, MAC}) and `vmports`
   (an array: ifindex -> 1 for the bound VM ports); removals before the nftables batch,
   additions after it, like every map. `fast_path=False` keeps the hooks alone
   (`bench/frame_cost.py` `closedhooks`).

3. The send check counted (`drops`): on a VM port (`vmports`) hv_fwd drops a frame whose source
   is not the port's bound vNIC MAC itself, counted as `forged_source` at that port (and
   sampled into the drop events), where the locked port would have dropped it uncounted; the
   bridge's lock stays as the enforcement of record (the slow path, ports past the array).
   Frames of ports no binding names are counted where the closing chains drop them
   (`tx_unbound` in prerouting, `rx_unbound` in forward/output): after every accept, so no
   allowed frame meets a counter.

May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

import errno
import struct
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hostvlan.datapath.base import DatapathError, PortCounters
from hostvlan.datapath.bridge.parts import Change, Layout
from hostvlan.datapath.bridge.tc import PAIR, PROG, PROG_GLOBAL, PROGS, SRC, TcReceiveFilter, _u32, pair_key, src_key
from hostvlan.datapath.kernel import bpf as bpflib
from hostvlan.datapath.nft_table import ACCEPT, DROP, UNBOUND_RX, UNBOUND_TX, Cmd, NftTable, match
from hostvlan.model.facts import Facts, FactsIndex
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.verdict import UNBOUND_PORT

FWD = "hv_fwd"
OPEN = "open"  # ifindexes of the bound ports as they exist now: what the closing chains let through
IIF_INDEX = {"meta": {"key": "iif"}}
OIF_INDEX = {"meta": {"key": "oif"}}
OBJECT = Path(__file__).parent.parent / "bpf" / "hv_fwd.o"
VMPORTS = 1 << 16  # the array `vmports`: ifindexes below this get the counted send check
FAST_MAPS = {"fdb": 1 << 13, "bound": 1 << 13, "vmports": VMPORTS}  # one entry per local vNIC (port)
EXTRA = ((FWD,), FAST_MAPS)  # what TcReceiveFilter loads more for this part


def _vm_ports(bound: frozenset[tuple[PortName, Mac]], uplinks: frozenset[PortName]) -> list[tuple[PortName, Mac]]:
    return [(p, m) for p, m in bound if p not in uplinks]


class Closing:
    """The closing chains and the fast path (see module doc); `rx` is the composed receive
    filter, built with `obj=OBJECT, extra=EXTRA` (not owned here)."""

    def __init__(self, rx: TcReceiveFilter, fast_path: bool = True) -> None:
        if rx.obj != OBJECT:
            raise ValueError("Closing needs a TcReceiveFilter loading hv_fwd.o (obj=closing.OBJECT, extra=EXTRA)")
        self.rx = rx
        self.fast_path = fast_path
        self._followed = False  # a new process compares every map once, at its first `follow`
        self._table: NftTable | None = None
        self._fwd = 0  # the id of the hv_fwd program this object last attached
        self._vm: set[int] | None = None  # what `vmports` holds (None: read it from the kernel)
        self._vm_load = 0  # the hv_fwd program id of the maps `_vm` describes

    def bind(self, table: NftTable) -> None:
        """The back end's table, which holds the chains and the set `open`."""
        self._table = table

    @property
    def table(self) -> NftTable:
        if self._table is None:
            raise RuntimeError("Closing is not bound to a table (BridgeFilter binds it)")
        return self._table

    # ----- the chains and the set `open` ----------------------------------------------------
    def layout(self, layout: Layout) -> None:
        closed_rx = [[match(OIF_INDEX, OPEN), ACCEPT], [{"counter": UNBOUND_RX}, DROP]]
        layout.sets[OPEN] = "iface_index"
        for chain, rules in (
            ("prerouting", [[match(IIF_INDEX, OPEN), ACCEPT], [{"counter": UNBOUND_TX}, DROP]]),
            ("forward", closed_rx),
            ("output", closed_rx),
        ):
            layout.hooks[chain] = chain
            layout.rules[chain] = rules

    @staticmethod
    def _names(bound: frozenset[tuple[PortName, Mac]], uplinks: frozenset[PortName]) -> set[PortName]:
        return {p for p, _ in bound} | set(uplinks)

    def _open_cmds(self, links: Mapping[PortName, int], want: FactsIndex) -> list[Cmd]:
        s = {**self.table.ref, "name": OPEN}
        elems = sorted({links[p] for p in self._names(*want.port_facts()) if p in links})
        return [{"flush": {"set": s}}, *([{"add": {"element": {**s, "elem": elems}}}] if elems else [])]

    def batch(self, change: Change, want: FactsIndex) -> list[Cmd]:
        """`open` rewritten in the facts' batch when bindings change (same transaction)."""
        if change.fresh or change.delta.ports:
            return self._open_cmds(self.rx._links(), want)
        return []

    def _open_have(self) -> set[str] | None:
        """The devices `open` holds, by the name nft resolves each ifindex to (a device that is
        gone shows as a number); None when there is no such set."""
        try:
            spec = {"set": {**self.table.ref, "name": OPEN}}
            out: dict[str, Any] = self.rx._ports.call(self.table.nft.list_obj, spec)
        except DatapathError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return {str(e) for item in out.get("nftables", []) for e in item.get("set", {}).get("elem", [])}

    # ----- the fast path's maps -------------------------------------------------------------
    def _fast_want(
        self, bound: frozenset[tuple[PortName, Mac]], uplinks: frozenset[PortName]
    ) -> tuple[dict[bytes, bytes], set[bytes], set[int]]:
        """fdb, bound and vmports of these bindings on the ports as the receive filter keys
        them; a MAC bound on two ports takes the slow path (the bridge's FDB decides)."""
        if not self.fast_path:
            return {}, set(), set()
        at = self.rx._at
        vm = [(p, m) for p, m in _vm_ports(bound, uplinks) if p in at]
        twice = {m for m, n in Counter(m for _, m in vm).items() if n > 1}
        fdb = {src_key(m): _u32(at[p]) for p, m in vm if m not in twice}
        return fdb, {pair_key(at[p], m) for p, m in vm}, {at[p] for p, _ in vm if at[p] < VMPORTS}

    def _fast_have(self, fresh: bool = True) -> tuple[dict[bytes, bytes], set[bytes], set[int]]:
        fd = self.rx.fd
        load = bpflib.prog_info(fd[FWD])[0]  # fresh maps (outgrown) come with a new program
        if fresh or self._vm is None or self._vm_load != load:
            rows = bpflib.dump(fd["vmports"], 4, 1)
            self._vm = {struct.unpack("=I", k)[0] for k, v in rows if v != b"\0"}
            self._vm_load = load
        fdb, bound = dict(bpflib.dump(fd["fdb"], SRC, 4)), {k for k, _ in bpflib.dump(fd["bound"], PAIR, 1)}
        return fdb, bound, set(self._vm)

    def _set_vm(self, ifindexes: set[int], on: bool) -> None:
        if ifindexes:
            keys = sorted(ifindexes)
            bpflib.update(self.rx.fd["vmports"], b"".join(_u32(i) for i in keys), bytes([on]) * len(keys), 4, 1)
        if self._vm is not None:
            self._vm = (self._vm | ifindexes) if on else (self._vm - ifindexes)

    def _sync_fast(self, want: FactsIndex, *, remove: bool = True, add: bool = True) -> int:
        fd = self.rx.fd
        (fdb_w, bound_w, vm_w), (fdb_h, bound_h, vm_h) = self._fast_want(*want.port_facts()), self._fast_have(False)
        n = 0
        if remove:  # a port leaves vmports before its bindings leave bound (never counted as forged)
            gone_b = bound_h - bound_w
            gone_f = [k for k, v in fdb_h.items() if fdb_w.get(k) != v]
            self._set_vm(vm_h - vm_w, False)
            bpflib.delete(fd["fdb"], b"".join(gone_f), SRC)
            bpflib.delete(fd["bound"], b"".join(gone_b), PAIR)
            n += len(gone_b) + len(gone_f) + len(vm_h - vm_w)
        if add:  # and joins it after them
            new_b = bound_w - bound_h
            new_f = {k: v for k, v in fdb_w.items() if fdb_h.get(k) != v}
            bpflib.update(fd["bound"], b"".join(new_b), bytes(len(new_b)), PAIR, 1)
            bpflib.update(fd["fdb"], b"".join(new_f), b"".join(new_f.values()), SRC, 4)
            self._set_vm(vm_w - vm_h, True)
            n += len(new_b) + len(new_f) + len(vm_w - vm_h)
        return n

    # ----- the programs: the receive filter's before a port opens, hv_fwd at tcx ingress -----
    def _attach_all(self, links: Mapping[PortName, int], global_ports: frozenset[PortName]) -> int:
        rx = self.rx
        ours = {name: bpflib.prog_info(rx.fd[name])[0] for name in PROGS}
        fwd = bpflib.prog_info(rx.fd[FWD])[0]
        changed = 0
        for port, ifindex in links.items():
            prog = PROG_GLOBAL if port in global_ports else PROG
            changed += rx._ports.call(rx._attach, ifindex, prog, ours)
            changed += rx._ports.call(self._attach_fwd, ifindex, fwd)
        return changed

    def _attach_fwd(self, ifindex: int, fwd: int) -> int:
        changed, placed = 0, False
        for prog_id, name, fd in bpflib.tcx_egress_programs(ifindex, bpflib.TCX_INGRESS):
            if name != FWD:
                continue  # someone else's program: not ours to touch
            if prog_id == fwd and not placed:
                placed = True
            elif not placed:
                bpflib.tcx_attach(self.rx.fd[FWD], ifindex, replace_fd=fd, hook=bpflib.TCX_INGRESS)
                placed, changed = True, changed + 1
            else:
                bpflib.tcx_detach(fd, ifindex, bpflib.TCX_INGRESS)
                changed += 1
        if not placed:
            bpflib.tcx_attach(self.rx.fd[FWD], ifindex, hook=bpflib.TCX_INGRESS)
            changed += 1
        return changed

    # ----- the part's steps (after the receive filter's own, see backend) ---------------------
    def prepare(self, change: Change, want: FactsIndex) -> None:
        """Before the batch: a port about to be opened gets its programs (an install: every
        port, the maps loaded first); the fast path's removals."""
        rx = self.rx
        if change.fresh:
            if not rx.ready():
                rx._load(change.added())
            self._attach_all(rx._links(), change.added().global_ports)
            self._fwd = bpflib.prog_info(rx.fd[FWD])[0]
            return
        if change.delta.ports.add:
            self._attach_all(rx._ports.indexes(change.delta.ports.add), want.facts().global_ports)
        self._sync_fast(want, add=False)

    def complete(self, change: Change, want: FactsIndex) -> None:
        """After the batch (and the receive filter's additions): the fast path's additions; if
        the receive filter loaded fresh maps (outgrown), hv_fwd of the new load on every port."""
        rx = self.rx
        fwd = bpflib.prog_info(rx.fd[FWD])[0]
        if fwd != self._fwd and not change.fresh:
            for ifindex in rx._links().values():
                rx._ports.call(self._attach_fwd, ifindex, fwd)
        self._fwd = fwd
        self._sync_fast(want, remove=change.fresh)

    def follow(self, links: Mapping[PortName, int] | None, want: FactsIndex) -> int:
        """After the locks and the receive filter's programs (link event, first apply): hv_fwd
        on every port, the fast path's entries, then `open` (a re-created bound port opens
        only now)."""
        rx = self.rx
        if not rx.ready():
            return 0
        links = dict(links) if links is not None else rx._links()
        n = 0
        if not self._followed:  # a new process: keys of a port re-created meanwhile are unknown to it
            self._followed = True
            n += rx._sync_maps(want.facts(), links)
        fwd = self._fwd = bpflib.prog_info(rx.fd[FWD])[0]
        n += sum(rx._ports.call(self._attach_fwd, ifindex, fwd) for ifindex in links.values())
        n += self._sync_fast(want)
        names = {str(p) for p in self._names(*want.port_facts()) if p in links}
        if self._open_have() != names:
            self.table.run(self._open_cmds(links, want))
            n += 1
        return n

    def check(self, facts: Facts) -> Facts | None:
        """The table's facts, or None (reinstall) when the fast path or `open` do not match
        them (after the receive filter's check, which keys `rx._at`)."""
        rx = self.rx
        if not rx.ready() or self._fast_want(facts.bound, facts.uplinks) != self._fast_have():
            return None
        links = rx._links()
        fwd = bpflib.prog_info(rx.fd[FWD])[0]
        if not all(fwd in rx._ports.call(bpflib.tcx_egress_ids, i, bpflib.TCX_INGRESS) for i in links.values()):
            return None
        at = rx._at
        names = {str(p) for p in self._names(facts.bound, facts.uplinks) if p in at}
        return facts if self._open_have() == names else None

    def drops(self, table: dict[str, PortCounters], out: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """The receive filter's (and hv_fwd's forged sources), plus what the closing chains
        dropped at ports no binding names (`table`: the table's counters)."""
        nft = table.get("(unbound)")
        if nft is not None and (nft.rx_dropped or nft.tx_dropped):
            key = ("(unbound)", UNBOUND_PORT)
            out[key] = out.get(key, 0) + nft.rx_dropped + nft.tx_dropped
        return out

    def counters(self, table: dict[str, PortCounters], out: dict[str, PortCounters]) -> dict[str, PortCounters]:
        """The receive filter's, plus what the closing chains dropped at ports no binding names."""
        nft = table.get("(unbound)")
        if nft is not None:
            c = out.get("(unbound)", PortCounters())
            out["(unbound)"] = PortCounters(c.rx_dropped + nft.rx_dropped, c.tx_dropped + nft.tx_dropped)
        return out
