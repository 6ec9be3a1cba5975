"""The address guard of a Linux bridge: `bpf/hv_guard.c` at the tcx ingress of each VM port.

A part of `backend.BridgeFilter` (with the send check `locked`, which shares its bridge ports)
that owns the program `hv_guard` and its maps, pinned beside the receive filter's in a
directory of its own (`<pins>-guard`). It enforces `model.guardfacts.GuardFacts`:

  gports  every bound VM port (by ifindex): its MAC, guarded or not, router / DHCP-server
          flags, up to `MAX_PREFIXES` prefixes per family (host addresses go to src4/src6)
  src4, src6    {ifindex, address}: the host addresses (and the EUI-64 link-local) it may use
  ans4, ans6    {ifindex, address} -> holder MAC: the ARP requests / NS the host answers
  reg4, reg6    the registered host addresses: a request for one not answered is dropped
  gstats  per port: drops per reason, and the requests answered

The program runs FIRST at the port's tcx ingress (attached with BPF_F_BEFORE), ahead of the
closing part's `hv_fwd`: a frame it passes goes on (TCX_NEXT) to the fast path and the
bridge; a frame it drops never reaches them; a request it answers goes straight back out of
the port. Uplinks have no gports entry: exempt.

Order: BPF maps have no transaction. `sync` runs before the back end's nftables batch, so a
port about to be opened carries its program and its entry first; within it, entries that
tighten are written before those that loosen (a port's new gports entry, removals, then the
additions). A failed step leaves the guard stricter or as it was, and the next apply
re-reads every map (`_have`) and repairs. May import `hostvlan.datapath` and `hostvlan.model` only.
"""

from __future__ import annotations

import ipaddress
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.bridge.tc import BPFFS, default_pins, object_tag
from hostvlan.datapath.kernel import bpf as bpflib
from hostvlan.datapath.kernel.brports import BridgePorts
from hostvlan.model import verdict as V
from hostvlan.model.addresses import IPAddr
from hostvlan.model.guardfacts import GuardFacts, PortGuard
from hostvlan.model.ids import Mac, PortName

OBJECT = Path(__file__).parent.parent / "bpf" / "hv_guard.o"
PROG = "hv_guard"
MAPS = ("gports", "src4", "src6", "ans4", "ans6", "reg4", "reg6", "gstats")
MAX_PREFIXES = 4
G_GUARDED, G_ROUTER, G_DHCP, A_ROUTER = 1, 2, 4, 1
REASONS = (V.ARP_SPOOF, V.ND_SPOOF, V.IP_SPOOF, V.RA_GUARD, V.DHCP_GUARD, V.MALFORMED, V.NO_SHARED_LNID)
ANSWERED = len(REASONS)
GPORT = struct.Struct("=6sBBB7s" + "II" * MAX_PREFIXES + "QQQQ" * MAX_PREFIXES)
GSTAT = struct.Struct(f"={len(REASONS) + 1}Q16s")
K4, K6, ANS = struct.Struct("=I4s"), struct.Struct("=I16s"), struct.Struct("=6sH")
SIZES = {"gports": 1 << 12, "src4": 1 << 14, "src6": 1 << 14, "ans4": 1 << 16, "ans6": 1 << 16}
SIZES |= {"reg4": 1 << 16, "reg6": 1 << 16, "gstats": 1 << 12}
KEY = {"gports": 4, "src4": K4.size, "src6": K6.size, "ans4": K4.size, "ans6": K6.size, "reg4": 4, "reg6": K6.size}
VALUE = {"gports": GPORT.size, "src4": 1, "src6": 1, "ans4": ANS.size, "ans6": ANS.size, "reg4": 1, "reg6": 1}


def _mac(m: Mac) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def _u32(v: int) -> bytes:
    return struct.pack("=I", v)


def gport_value(g: PortGuard) -> bytes:
    """The gports value of a port; more than MAX_PREFIXES prefixes of a family: DatapathError."""
    flags = (G_GUARDED if g.guarded else 0) | (G_ROUTER if g.router else 0) | (G_DHCP if g.dhcp_server else 0)
    p4 = sorted(n for n in g.nets if isinstance(n, ipaddress.IPv4Network) and n.prefixlen < 32)
    p6 = sorted(n for n in g.nets if isinstance(n, ipaddress.IPv6Network) and n.prefixlen < 128)
    if len(p4) > MAX_PREFIXES or len(p6) > MAX_PREFIXES:
        raise DatapathError(f"the bridge's guard takes at most {MAX_PREFIXES} prefixes per family per vNIC ({g.mac})")
    v4: list[int] = []
    for n in p4:  # the program compares raw (network order) words: pack them as they lie in the frame
        v4 += [struct.unpack("=I", n.network_address.packed)[0], struct.unpack("=I", n.netmask.packed)[0]]
    v4 += [0, 0] * (MAX_PREFIXES - len(p4))
    v6: list[int] = []
    for n6 in p6:
        a, m = n6.network_address.packed, n6.netmask.packed
        v6 += [*struct.unpack("=QQ", a), *struct.unpack("=QQ", m)]
    v6 += [0, 0, 0, 0] * (MAX_PREFIXES - len(p6))
    return GPORT.pack(_mac(g.mac), flags, len(p4), len(p6), b"", *v4, *v6)


def _k(ifindex: int, addr: IPAddr) -> tuple[str, bytes]:
    if isinstance(addr, ipaddress.IPv4Address):
        return "4", K4.pack(ifindex, addr.packed)
    return "6", K6.pack(ifindex, addr.packed)


class AddressGuard:
    """The bridge's address guard (see module doc); `ports` are the send check's (not owned)."""

    name = "guard"

    def __init__(self, ports: BridgePorts, pins: Path | None = None) -> None:
        self._ports = ports
        base = pins or default_pins()
        self.pins = Path(f"{base}-guard")
        if not self.pins.is_relative_to(BPFFS):
            raise ValueError(f"BPF pins must be under {BPFFS}, not {self.pins}")
        self.fd: dict[str, int] = {}
        self._rev = -1  # the back end's guard revision last enforced
        self._names: dict[int, str] = {}  # ifindex -> port name, as gstats records it

    # ----- the pinned objects ---------------------------------------------------------------
    def _open(self) -> bool:
        if self.fd:
            return True
        tag = object_tag(OBJECT)
        if tag is None:
            return False
        fds = bpflib.obj_get_all(self.pins, (PROG, *MAPS), tag)
        if fds is None:
            return False
        self.fd = fds
        return True

    def _load(self) -> None:
        tag = object_tag(OBJECT)
        if tag is None:
            raise DatapathError(f"BPF object {OBJECT} missing: build it with `make setup` (needs clang)")
        bpflib.ensure_bpffs(BPFFS)
        self.pins.mkdir(mode=0o700, exist_ok=True)
        bpflib.load_and_pin(OBJECT, self.pins, [PROG], SIZES, suffix=f"-{tag}")
        if not self._open():
            raise DatapathError(f"BPF objects vanished from {self.pins} right after pinning")
        for old in self.pins.iterdir():  # an older build's pins: its program is replaced below
            if not old.name.endswith(f"-{tag}"):
                old.unlink()

    def ready(self) -> bool:
        return self._open()

    def links(self) -> dict[PortName, int]:
        """The bridge's ports as they exist now (name -> ifindex)."""
        return {name: p.index for name, p in self._ports.ports().items()}

    # ----- desired and actual ----------------------------------------------------------------
    @staticmethod
    def want(facts: GuardFacts, links: Mapping[PortName, int]) -> dict[str, dict[bytes, bytes]]:
        """Every map's elements for `facts` on the ports as they exist (`links`)."""
        out: dict[str, dict[bytes, bytes]] = {m: {} for m in KEY}
        for port, g in facts.ports.items():
            if port not in links:
                continue
            i = links[port]
            out["gports"][_u32(i)] = gport_value(g)
            if g.guarded:
                for n in g.nets:
                    if n.prefixlen == n.max_prefixlen:
                        fam, key = _k(i, n.network_address)
                        out["src" + fam][key] = b"\1"
        for port, addr, mac in facts.answers:
            if port in links:
                fam, key = _k(links[port], addr)
                out["ans" + fam][key] = ANS.pack(_mac(mac), A_ROUTER if mac in facts.routers else 0)
        for addr in facts.registered:
            if isinstance(addr, ipaddress.IPv4Address):
                out["reg4"][addr.packed] = b"\1"
            else:
                out["reg6"][K6.pack(0, addr.packed)] = b"\1"
        return out

    def _have(self) -> dict[str, dict[bytes, bytes]]:
        return {m: dict(bpflib.dump(self.fd[m], KEY[m], VALUE[m])) for m in KEY}

    # ----- the part's steps -------------------------------------------------------------------
    def sync(self, facts: GuardFacts, links: Mapping[PortName, int]) -> int:
        """Make the maps enforce `facts` on `links` and attach the program to every VM port of
        them; returns the elements and attachments changed."""
        if not self._open():
            self._load()
        want = self.want(facts, links)
        have = self._have()
        fd, n = self.fd, 0
        # tighten first: the ports' entries (a port becoming guarded), then removals
        put = {k: v for k, v in want["gports"].items() if have["gports"].get(k) != v}
        bpflib.update(fd["gports"], b"".join(put), b"".join(put.values()), 4, GPORT.size)
        n += len(put)
        self._stats(facts, links)
        for m in KEY:
            gone = [k for k in have[m] if k not in want[m]]
            bpflib.delete(fd[m], b"".join(gone), KEY[m])
            n += len(gone)
        for m in KEY:
            if m == "gports":
                continue
            new = {k: v for k, v in want[m].items() if have[m].get(k) != v}
            bpflib.update(fd[m], b"".join(new), b"".join(new.values()), KEY[m], VALUE[m])
            n += len(new)
        prog = bpflib.prog_info(fd[PROG])[0]
        for port in facts.ports:
            if port in links:
                n += self._ports.call(self._attach, links[port], prog)
        return n

    def _stats(self, facts: GuardFacts, links: Mapping[PortName, int]) -> None:
        """A gstats entry (zeroed) for each port that has none; entries of ports gone are deleted."""
        fd = self.fd["gstats"]
        have = {k: v for k, v in bpflib.dump(fd, 4, GSTAT.size)}
        want = {_u32(links[p]): str(p) for p in facts.ports if p in links}
        bpflib.delete(fd, b"".join(k for k in have if k not in want), 4)
        new = {k: n for k, n in want.items() if k not in have or GSTAT.unpack(have[k])[-1].rstrip(b"\0") != n.encode()}
        zero = [0] * (len(REASONS) + 1)
        bpflib.update(fd, b"".join(new), b"".join(GSTAT.pack(*zero, n.encode()) for n in new.values()), 4, GSTAT.size)

    def _attach(self, ifindex: int, prog: int) -> int:
        placed, changed = False, 0
        for prog_id, name, fd in bpflib.tcx_egress_programs(ifindex, bpflib.TCX_INGRESS):
            if name != PROG:
                continue
            if prog_id == prog and not placed:
                placed = True
            elif not placed:
                bpflib.tcx_attach(self.fd[PROG], ifindex, replace_fd=fd, hook=bpflib.TCX_INGRESS)
                placed, changed = True, changed + 1
            else:
                bpflib.tcx_detach(fd, ifindex, bpflib.TCX_INGRESS)
                changed += 1
        if not placed:
            bpflib.tcx_attach(self.fd[PROG], ifindex, hook=bpflib.TCX_INGRESS, flags=bpflib.F_BEFORE)
            changed += 1
        return changed

    def check(self, facts: GuardFacts, links: Mapping[PortName, int]) -> bool:
        """The maps and programs enforce `facts` on `links`."""
        if not self._open():
            return False
        if self.want(facts, links) != self._have():
            return False
        prog = bpflib.prog_info(self.fd[PROG])[0]
        ids = (self._ports.call(bpflib.tcx_egress_ids, links[p], bpflib.TCX_INGRESS) for p in facts.ports if p in links)
        return all(prog in i for i in ids)

    def counts(self) -> dict[tuple[str, str], int]:
        """Drops per (port, reason) since each port got its entry."""
        if not self._open():
            return {}
        out: dict[tuple[str, str], int] = {}
        for _, v in bpflib.dump(self.fd["gstats"], 4, GSTAT.size):
            *drops, raw = GSTAT.unpack(v)
            name = raw.split(b"\0", 1)[0].decode()
            for reason, count in zip(REASONS, drops, strict=False):
                if count:
                    out[(name, reason)] = out.get((name, reason), 0) + count
        return out

    def answered(self) -> dict[str, int]:
        """Requests answered on the host, per port."""
        if not self._open():
            return {}
        out: dict[str, int] = {}
        for _, v in bpflib.dump(self.fd["gstats"], 4, GSTAT.size):
            *drops, raw = GSTAT.unpack(v)
            out[raw.split(b"\0", 1)[0].decode()] = drops[ANSWERED]
        return out

    def remove(self) -> None:
        for ifindex in self._ports.link_indexes():
            self._ports.call(_detach, ifindex)
        self.close()
        shutil.rmtree(self.pins, ignore_errors=True)

    def close(self) -> None:
        for fd in self.fd.values():
            bpflib.close(fd)
        self.fd = {}


def _detach(ifindex: int) -> int:
    n = 0
    for _, name, fd in bpflib.tcx_egress_programs(ifindex, bpflib.TCX_INGRESS):
        if name == PROG:
            bpflib.tcx_detach(fd, ifindex, bpflib.TCX_INGRESS)
            n += 1
    return n
