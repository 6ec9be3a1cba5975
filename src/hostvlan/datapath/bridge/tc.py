"""The bridge's receive filter in tc/eBPF: no netfilter hook on the bridge's forward path.

`TcReceiveFilter` (the default, `--receive-filter tc`, composed with the send check
`locked.LockedPorts` whose bridge ports it shares) owns a BPF program at the tcx egress hook
of every bridge port (`bpf/hv_rx.c`) and the pinned maps it reads: the bridge hands each
frame copy it sends out of a port, each copy of a flood too, to that port's egress hook, so
the program decides `Facts.receive(src, port)` per copy with ONE hash lookup, and the
bridge's forward path has no netfilter hook at all.
Measured on this VM (`bench/frame_cost.py`): +35 ns per frame where the nftables receive
filter costs +93-122 ns and an empty netfilter hook alone +30-40 ns.

What stays in nftables (table `bridge hostvlan`, layout `layout_v3_tc`): the facts as sets
with their digest (the record a restarted agent reconciles against) and the input chain
that guards the host's own stack (the back end's own, `backend`). The BPF side (pinned in a bpffs of the agent's own,
`/run/hostvlan/bpf/<name>`):

  maps      pairs {ifindex, mac}, srcs {mac} -> known/global, ports ifindex -> global flag,
            name, drop counts per reason (`REASONS`); stats[0] = drops at ports no binding
            names; events + evstate: a ring of sampled drops (`drop_events`), written on
            the drop path only, at most 64 per ~1 s
  programs  hv_rx on every bridge port, hv_rx_global on ports in `global` (the uplink):
            each one lookup in the common case; a port with neither is fixed on the next
            link event or audit

Maps are keyed by ifindex, so this back end follows links: a bound port that is re-created
gets its keys moved (`refresh_ports`, on every link event), a port that leaves has them
deleted (its ifindex may be reused).

Order and failure: each apply removes elements from the maps before the nftables batch
(`prepare`) and adds after it (`complete`), so the filter is never looser than the facts in force; a failed step leaves
it stricter, and the next apply repairs from a read-back, which checks the maps and
programs too (any mismatch: reinstall, which overwrites without clearing).

Alone, this leaves a port that joins the bridge open (the bridge's defaults) until an agent
attaches its program; the agent's default composes it with `closing.Closing`, which closes
such ports by construction (and loads `hv_fwd.o`, this object plus its fast path).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

from hostvlan.datapath.base import DatapathError, PortCounters
from hostvlan.datapath.bridge.parts import Change, Layout, Undo
from hostvlan.datapath.kernel import bpf as bpflib
from hostvlan.datapath.kernel.brports import BridgePorts
from hostvlan.model.facts import Facts, FactsDelta, FactsIndex
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.verdict import FORGED_SOURCE, MALFORMED, NO_SHARED_LNID, UNBOUND_PORT, UNKNOWN_SOURCE

OBJECT = Path(__file__).parent.parent / "bpf" / "hv_rx.o"
BPFFS = Path("/run/hostvlan/bpf")
PROG, PROG_GLOBAL = "hv_rx", "hv_rx_global"
PROGS = (PROG, PROG_GLOBAL)
INGRESS_PROGS = ("hv_fwd", "hv_guard")  # closing.py's fast path, guard.py's guard, at tcx ingress
SRC_KNOWN, SRC_GLOBAL, PORT_GLOBAL = 1, 2, 1
PAIR, SRC, PORT, STAT = 12, 8, 4, 8  # key sizes (stats: value size)
REASONS = (UNKNOWN_SOURCE, NO_SHARED_LNID, UNBOUND_PORT, FORGED_SOURCE, MALFORMED)  # hv_rx.c's R_* indexes
PORT_VALUE = struct.Struct(f"=II{len(REASONS)}Q16s")  # flags, pad, drops per reason, name
EVENT = struct.Struct("=QQIHBx6s6s4x")  # seq, ns (monotonic), ifindex, ethertype (network order), reason, src, dst
EVENT_SLOTS = 256
MIN_SIZES = {"pairs": 1 << 14, "srcs": 1 << 12, "ports": 1 << 10, "stats": 1, "events": EVENT_SLOTS, "evstate": 1}


def _mac(m: Mac) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def pair_key(ifindex: int, mac: Mac) -> bytes:
    return struct.pack("=I6sH", ifindex, _mac(mac), 0)


def src_key(mac: Mac) -> bytes:
    return _mac(mac) + b"\0\0"


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


_TAGS: dict[tuple[int, int], str] = {}


def object_tag(obj: Path = OBJECT) -> str | None:
    """A digest of the built object (pins carry it: a rebuilt program is loaded afresh, not
    the pinned one of an older build); None when it is not built."""
    try:
        st = obj.stat()
    except FileNotFoundError:
        return None
    key = (st.st_mtime_ns, st.st_size)
    if key not in _TAGS:
        _TAGS[key] = hashlib.sha256(obj.read_bytes()).hexdigest()[:12]
    return _TAGS[key]


def _detach(ifindex: int) -> int:
    n = 0
    for _, name, fd in bpflib.tcx_egress_programs(ifindex):
        if name in PROGS:
            bpflib.tcx_detach(fd, ifindex)
            n += 1
    for _, name, fd in bpflib.tcx_egress_programs(ifindex, bpflib.TCX_INGRESS):
        if name in INGRESS_PROGS:
            bpflib.tcx_detach(fd, ifindex, bpflib.TCX_INGRESS)
            n += 1
    return n


def release_programs(ports: BridgePorts, every_link: bool = False) -> int:
    """Detach hostvlan's tc programs from every bridge port of `ports`' namespace (a host moving
    to a netfilter flavour), or from every link (`every_link`: a cleanup); returns how many.
    Their pinned maps stay until removed."""
    indexes = ports.link_indexes() if every_link else [p.index for p in ports.ports().values()]
    return sum(ports.call(_detach, i) for i in indexes)


def default_pins() -> Path:
    """Pins of this network namespace (the calling thread's): one filter per namespace."""
    return BPFFS / f"netns-{os.stat('/proc/thread-self/ns/net').st_ino}"


class TcReceiveFilter:
    """The receive filter `tc` (see module doc); `ports` are the send check's (not owned here).
    `obj`, `extra`: the object it loads and what more of it to pin (programs and maps with
    their sizes) for a part that builds on it (`closing.Closing`)."""

    name = "tc"

    def __init__(
        self,
        ports: BridgePorts,
        pins: Path | None = None,
        obj: Path = OBJECT,
        extra: tuple[tuple[str, ...], dict[str, int]] = ((), {}),
    ) -> None:
        self._ports = ports
        self.obj = obj
        self._progs, self._maps = (*PROGS, *extra[0]), {**MIN_SIZES, **extra[1]}
        self.pins = pins or default_pins()
        if not self.pins.is_relative_to(BPFFS) or self.pins == BPFFS:
            raise ValueError(f"BPF pins must be a directory under {BPFFS} (the agent's bpffs), not {self.pins}")
        self.fd: dict[str, int] = {}  # the pinned maps and programs, open
        self._at: dict[PortName, int] = {}  # ifindex each bound port's keys use in the maps
        self._touched: dict[PortName, int] | None = None  # a change's ports, read in `prepare`

    # ----- the pinned objects ---------------------------------------------------------------
    def _open(self) -> bool:
        """Open the pinned maps and programs (all or none)."""
        if self.fd:
            return True
        tag = object_tag(self.obj)
        if tag is None:
            return False
        fds = bpflib.obj_get_all(self.pins, (*self._progs, *self._maps), tag)
        if fds is None:
            return False
        self.fd = fds
        return True

    def _load(self, facts: Facts) -> None:
        """Load fresh maps sized for `facts` (twice what they hold) and pin them over any old ones."""
        sizes = {
            "pairs": max(MIN_SIZES["pairs"], _pow2(2 * len(facts.pairs))),
            "srcs": max(MIN_SIZES["srcs"], _pow2(2 * len(facts.known))),
            "ports": max(MIN_SIZES["ports"], _pow2(2 * len(facts.ports))),
            "stats": 1,
            "events": EVENT_SLOTS,
            "evstate": 1,
            **{k: v for k, v in self._maps.items() if k not in MIN_SIZES},
        }
        bpflib.ensure_bpffs(BPFFS)
        self.pins.mkdir(mode=0o700, exist_ok=True)
        self._close_fds()
        tag = object_tag(self.obj)
        if tag is None:
            raise DatapathError(f"BPF object {self.obj} missing: build it with `make setup` (needs clang)")
        bpflib.load_and_pin(self.obj, self.pins, list(self._progs), sizes, suffix=f"-{tag}")
        if not self._open():
            raise DatapathError(f"BPF objects vanished from {self.pins} right after pinning")
        for old in self.pins.iterdir():  # an older build's pins: its programs get replaced below
            if not old.name.endswith(f"-{tag}"):
                old.unlink()

    def _close_fds(self) -> None:
        for fd in self.fd.values():
            bpflib.close(fd)
        self.fd = {}

    # ----- what the maps and programs should hold -------------------------------------------
    def _links(self) -> dict[PortName, int]:
        return {name: p.index for name, p in self._ports.ports().items()}

    def _want(
        self, facts: Facts, links: dict[PortName, int]
    ) -> tuple[set[bytes], dict[bytes, bytes], dict[bytes, tuple[int, str]]]:
        pairs = {pair_key(links[p], m) for m, p in facts.pairs if p in links}
        srcs = {src_key(m): _u32(SRC_KNOWN | (SRC_GLOBAL if m in facts.global_src else 0)) for m in facts.known}
        ports = {
            _u32(links[p]): (PORT_GLOBAL if p in facts.global_ports else 0, str(p)) for p in facts.ports if p in links
        }
        return pairs, srcs, ports

    def _have(self) -> tuple[set[bytes], dict[bytes, bytes], dict[bytes, tuple[int, str]]]:
        pairs = {k for k, _ in bpflib.dump(self.fd["pairs"], PAIR, 1)}
        srcs = dict(bpflib.dump(self.fd["srcs"], SRC, 4))
        ports: dict[bytes, tuple[int, str]] = {}
        for k, v in bpflib.dump(self.fd["ports"], PORT, PORT_VALUE.size):
            flags, *_, name = PORT_VALUE.unpack(v)
            ports[k] = (flags, name.split(b"\0", 1)[0].decode())
        return pairs, srcs, ports

    def _sync_maps(self, facts: Facts, links: dict[PortName, int]) -> int:
        """Make the maps equal to `facts` on the bridge ports `links` (removals, then additions;
        nothing cleared). Returns the elements changed."""
        want = self._want(facts, links)
        have = self._have()
        pw, sw, portw = want
        ph, sh, porth = have
        fd = self.fd
        gone_pairs = ph - pw
        gone_srcs = [k for k in sh if k not in sw]
        gone_ports = [k for k in porth if k not in portw]
        bpflib.delete(fd["pairs"], b"".join(gone_pairs), PAIR)
        bpflib.delete(fd["srcs"], b"".join(gone_srcs), SRC)
        bpflib.delete(fd["ports"], b"".join(gone_ports), PORT)
        new_srcs = {k: v for k, v in sw.items() if sh.get(k) != v}
        new_ports = {k: v for k, v in portw.items() if porth.get(k) != v}
        new_pairs = pw - ph
        self._put(new_srcs, new_ports, new_pairs)
        self._at = {PortName(name): struct.unpack("=I", k)[0] for k, (_, name) in portw.items()}
        return len(gone_pairs) + len(gone_srcs) + len(gone_ports) + len(new_srcs) + len(new_ports) + len(new_pairs)

    def _put(self, srcs: Mapping[bytes, bytes], ports: Mapping[bytes, tuple[int, str]], pairs: set[bytes]) -> None:
        fd = self.fd
        bpflib.update(fd["srcs"], b"".join(srcs), b"".join(srcs.values()), SRC, 4)
        zero = (0,) * len(REASONS)
        values = b"".join(PORT_VALUE.pack(f, 0, *zero, n.encode()) for f, n in ports.values())
        bpflib.update(fd["ports"], b"".join(ports), values, PORT, PORT_VALUE.size)
        bpflib.update(fd["pairs"], b"".join(pairs), bytes(len(pairs)), PAIR, 1)

    def _attach_all(self, links: Mapping[PortName, int], want: FactsIndex) -> int:
        """Every bridge port runs exactly one of our programs, the right one; returns the changes."""
        ours = {name: bpflib.prog_info(self.fd[name])[0] for name in PROGS}
        changed = 0
        for port, ifindex in links.items():
            prog = PROG_GLOBAL if want.port_view(port)[1] else PROG
            changed += self._ports.call(self._attach, ifindex, prog, ours)
        return changed

    def _attach(self, ifindex: int, want: str, ours: dict[str, int]) -> int:
        changed = 0
        placed = False
        for prog_id, name, fd in bpflib.tcx_egress_programs(ifindex):
            if name not in PROGS:
                continue  # someone else's program: not ours to touch
            if prog_id == ours[want] and not placed:
                placed = True
            elif not placed:
                bpflib.tcx_attach(self.fd[want], ifindex, replace_fd=fd)  # atomic swap
                placed, changed = True, changed + 1
            else:
                bpflib.tcx_detach(fd, ifindex)
                changed += 1
        if not placed:
            bpflib.tcx_attach(self.fd[want], ifindex)
            changed += 1
        return changed

    def _attached_right(self, links: dict[PortName, int], facts: Facts) -> bool:
        ours = {name: bpflib.prog_info(self.fd[name])[0] for name in PROGS}
        for port, ifindex in links.items():
            want = ours[PROG_GLOBAL if port in facts.global_ports else PROG]
            if want not in self._ports.call(bpflib.tcx_egress_ids, ifindex):
                return False
        return True

    # ----- the part's two phases ----------------------------------------------------------
    def layout(self, layout: Layout) -> None:
        return None  # no chain: the programs are the filter

    def ready(self) -> bool:
        """No maps pinned: the table's digest says nothing about the data path."""
        return self._open()

    def prepare(self, change: Change) -> Undo | None:
        """Before the batch: an install loads the maps if none are pinned; a change removes
        elements (the filter only gets stricter) and reads the ifindex of the ports it adds."""
        delta = change.delta
        if change.fresh:
            if not self._open():
                self._load(change.added())
            return None
        touched = delta.ports.add | delta.global_ports.add | delta.global_ports.remove
        self._touched = self._ports.indexes(touched) if touched else None
        self._shrink(delta)
        return None

    def complete(self, change: Change, want: FactsIndex) -> None:
        """After the batch: the additions (a map outgrown: fresh maps twice the size)."""
        if change.fresh:
            self._fill(change.added(), want)
            return
        links, self._touched = self._touched, None
        try:
            self._grow(change.delta, links, want)
        except DatapathError as exc:
            if exc.errno != errno.E2BIG:
                raise
            self._fill(want.facts(), want)

    def _fill(self, facts: Facts, want: FactsIndex) -> None:
        links = self._links()
        try:
            self._sync_maps(facts, links)
        except DatapathError as exc:
            if exc.errno != errno.E2BIG:
                raise
            self._load(facts)  # outgrown: fresh maps twice the size, swapped in port by port
            self._sync_maps(facts, links)
        self._attach_all(links, want)

    def _shrink(self, delta: FactsDelta) -> None:
        """The removals of a change: the filter only gets stricter."""
        fd, at = self.fd, self._at
        gone = [pair_key(at[p], m) for m, p in delta.pairs.remove if p in at]
        bpflib.delete(fd["pairs"], b"".join(gone), PAIR)
        bpflib.delete(fd["srcs"], b"".join(src_key(m) for m in delta.known.remove), SRC)
        demoted = {src_key(m): _u32(SRC_KNOWN) for m in delta.global_src.remove if m not in delta.known.remove}
        bpflib.update(fd["srcs"], b"".join(demoted), b"".join(demoted.values()), SRC, 4)
        unbound = [p for p in delta.ports.remove if p in at]
        bpflib.delete(fd["ports"], b"".join(_u32(at[p]) for p in unbound), PORT)
        for p in unbound:
            del at[p]
        for p in delta.global_ports.remove:
            if p in at:  # still bound: no longer global
                self._put({}, {_u32(at[p]): (0, p)}, set())

    def _grow(self, delta: FactsDelta, links: dict[PortName, int] | None, want: FactsIndex) -> None:
        """The additions of a change, then program swaps of ports whose `global` flag changed."""
        at = self._at
        if links is not None:
            for p in delta.ports.add:
                if p in links:
                    at[p] = links[p]
        srcs = {src_key(m): _u32(SRC_KNOWN | (SRC_GLOBAL if m in delta.global_src.add else 0)) for m in delta.known.add}
        srcs.update({src_key(m): _u32(SRC_KNOWN | SRC_GLOBAL) for m in delta.global_src.add})
        ports = {_u32(at[p]): (PORT_GLOBAL if want.port_view(p)[1] else 0, p) for p in delta.ports.add if p in at}
        ports.update({_u32(at[p]): (PORT_GLOBAL, p) for p in delta.global_ports.add if p in at})
        pairs = {pair_key(at[p], m) for m, p in delta.pairs.add if p in at}
        self._put(srcs, ports, pairs)
        swap = {p for p in delta.global_ports.add | delta.global_ports.remove | delta.ports.add if p in at}
        if swap and links is not None:
            self._attach_all({p: links[p] for p in swap if p in links}, want)

    def follow(self, links: Mapping[PortName, int] | None, want: FactsIndex) -> int:
        """After the locks (link event, first apply): attach the program to every port, and move
        the keys of bound ports whose ifindex changed (or drop those of ports gone: their
        ifindex may be reused), from the one read of the ports the locks took (`links`)."""
        if not self._open():
            return 0
        links = dict(links) if links is not None else self._links()
        bound, uplinks = want.port_facts()
        names = {p for p, _ in bound} | set(uplinks)
        moved = [p for p in names if links.get(p) != self._at.get(p)] + [p for p in self._at if p not in names]
        for p in moved:
            old, new = self._at.pop(p, None), links.get(p)
            is_bound, is_global, macs = want.port_view(p)
            if old is not None:
                bpflib.delete(self.fd["pairs"], b"".join(pair_key(old, m) for m in macs), PAIR)
                bpflib.delete(self.fd["ports"], _u32(old), PORT)
            if new is not None and is_bound:
                self._put({}, {_u32(new): (PORT_GLOBAL if is_global else 0, p)}, {pair_key(new, m) for m in macs})
                self._at[p] = new
        return len(moved) + self._attach_all(links, want)

    def check(self, facts: Facts) -> Facts | None:
        """The table's facts, or None (reinstall) when the maps or programs do not enforce them."""
        if not self._open():
            return None
        links = self._links()
        want = self._want(facts, links)
        if want != self._have() or not self._attached_right(links, facts):
            return None
        self._at = {PortName(name): struct.unpack("=I", k)[0] for k, (_, name) in want[2].items()}
        return facts

    def counters(self, table: dict[str, PortCounters]) -> dict[str, PortCounters]:
        """The receive drops from the maps, per port name; the host's stack from nftables."""
        nft = table
        out = {p: PortCounters(0, c.tx_dropped) for p, c in nft.items() if p not in ("(unbound)", "(host)")}
        if "(host)" in nft:
            out["(host)"] = nft["(host)"]
        if not self._open():
            return out
        forged = REASONS.index(FORGED_SOURCE)
        for (name, reason), n in self.drops(table).items():
            c = out.get(name, PortCounters())
            if name == "(unbound)":
                out[name] = PortCounters(n, 0)
            elif REASONS.index(reason) == forged:
                out[name] = PortCounters(c.rx_dropped, c.tx_dropped + n)
            else:
                out[name] = PortCounters(c.rx_dropped + n, c.tx_dropped)
        return dict(sorted(out.items()))

    def drops(self, table: Mapping[str, PortCounters]) -> dict[tuple[str, str], int]:
        """Drops per (port, reason) the programs counted: per bound port by reason, and at ports
        no binding names as ("(unbound)", unbound_port). Exact (atomic adds in the programs);
        the table's counters are not the programs' (the back end adds the host's)."""
        out: dict[tuple[str, str], int] = {}
        if not self._open():
            return out
        for _, v in bpflib.dump(self.fd["ports"], PORT, PORT_VALUE.size):
            _, _, *counts, raw = PORT_VALUE.unpack(v)
            name = raw.split(b"\0", 1)[0].decode()
            for reason, n in zip(REASONS, counts, strict=True):
                if n:
                    out[(name, reason)] = out.get((name, reason), 0) + n
        for _, v in bpflib.dump(self.fd["stats"], 4, STAT):
            n = struct.unpack("=Q", v)[0]
            if n:
                out[("(unbound)", UNBOUND_PORT)] = n
        return out

    def drop_events(self, after: int = 0) -> list[tuple[int, int, int, int, str, Mac, Mac]]:
        """The sampled drops in the ring with a sequence number above `after`, oldest first:
        (seq, monotonic ns, ifindex, ethertype, reason, source MAC, destination MAC)."""
        if not self._open():
            return []
        out = []
        for _, v in bpflib.dump(self.fd["events"], 4, EVENT.size):
            seq, ns, ifindex, proto, reason, src, dst = EVENT.unpack(v)
            if seq > after and reason < len(REASONS):
                out.append(
                    (
                        seq,
                        ns,
                        ifindex,
                        int.from_bytes(struct.pack("=H", proto), "big"),
                        REASONS[reason],
                        Mac(src.hex(":")),
                        Mac(dst.hex(":")),
                    )
                )
        return sorted(out)

    def remove(self) -> None:
        release_programs(self._ports)
        self._close_fds()
        shutil.rmtree(self.pins, ignore_errors=True)
        self._at = {}

    def close(self) -> None:
        self._close_fds()
