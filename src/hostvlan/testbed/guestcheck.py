"""Isolation checked from inside libvirt guests, against the model (`check.expected`).

A guest has no AF_PACKET probe of the testbed's: each source runs, through its exec
channel (`guestvms.exec_in`), one shell loop of `arping` (an ARP broadcast, the answer
unicast) and `ping` (IPv4 echo) to every other endpoint. An exchange needs both
directions, so the model's answer for (a, b) is `expected(a → b) and expected(b → a)`.
Sources run in parallel (one thread each: the guests are independent); a silent
destination costs each source ~3 s (arping waits 2 s: a cold TCG guest may take over 1 s).

Forged frames from inside a guest (`forge`): eth0 takes another endpoint's MAC (then an
unknown one) and arpings a same-LNID peer; the peer's neighbour table tells whether the
forged request was delivered (the send check must drop it).
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from hostvlan.model.ids import Mac
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.check import UNKNOWN_MAC, expected
from hostvlan.testbed.guestvms import exec_in


@dataclass
class GuestReport:
    # reach[src][dst] = (answered ARP, answered ping)
    reach: dict[str, dict[str, tuple[bool, bool]]] = field(default_factory=dict)
    wrong: list[str] = field(default_factory=list)
    forged_answered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.wrong or self.forged_answered)

    def summary(self) -> dict[str, int]:
        pairs = [(a, p) for row in self.reach.values() for a, p in row.values()]
        return {
            "pairs": len(pairs),
            "answered": sum(1 for a, p in pairs if a and p),
            "wrong": len(self.wrong),
            "forged_answered": len(self.forged_answered),
        }


def _ip(tb: Testbed, name: str) -> str:
    return tb.vms[name].ip if name in tb.vms else tb.external[name].ip


def run(tb: Testbed, name: str, script: str, timeout: float = 120.0) -> str:
    status, out, err = exec_in(tb.to_json(), name, ["sh", "-c", script], timeout)
    if status != 0:
        raise RuntimeError(f"{name}: `{script[:80]}…` exited {status}: {err.decode(errors='replace')}")
    return out.decode(errors="replace")


def probe(tb: Testbed, src: str, dsts: Iterable[str]) -> dict[str, tuple[bool, bool]]:
    """From inside `src` (a guest or a namespace endpoint): (ARP answered, ping answered) per destination."""
    dsts = list(dsts)
    script = "; ".join(
        f"arping -f -q -c2 -w2 -I eth0 {_ip(tb, d)} && echo arp {d}; "
        f"ping -q -c1 -W1 {_ip(tb, d)} >/dev/null 2>&1 && echo ping {d}"
        for d in dsts
    )
    words = run(tb, src, script + "; true").split()
    got = {(words[i], words[i + 1]) for i in range(0, len(words) - 1, 2)}
    return {d: (("arp", d) in got, ("ping", d) in got) for d in dsts}


def model_exchange(tb: Testbed, a: str, b: str) -> bool:
    """The model's answer for a request/answer exchange between a and b."""
    states = tb.states()
    return expected(tb, states, a, tb.endpoint(a).mac, b) and expected(tb, states, b, tb.endpoint(b).mac, a)


def check_guests(tb: Testbed, sources: Iterable[str] | None = None, *, forged: bool = False) -> GuestReport:
    """Every guest (or `sources`) arpings and pings every other endpoint; compare with the model."""
    srcs = list(sources) if sources is not None else [n for n, vm in tb.vms.items() if vm.domain]
    everyone = [*tb.vms, *tb.external]
    rep = GuestReport()
    if not srcs:
        return rep
    with ThreadPoolExecutor(max_workers=len(srcs)) as pool:
        rows = list(pool.map(lambda s: probe(tb, s, [d for d in everyone if d != s]), srcs))
    rep.reach = dict(zip(srcs, rows, strict=True))
    for src, row in rep.reach.items():
        for dst, (arp, ping) in row.items():
            want = model_exchange(tb, src, dst)
            if arp != want or ping != want:
                rep.wrong.append(f"{src} -> {dst}: arp={arp} ping={ping}, the model says {want}")
    for src in srcs if forged else []:  # one at a time: victims' tables are shared
        rep.forged_answered += forge(tb, src)
    return rep


def forge(tb: Testbed, src: str) -> list[str]:
    """`src` takes another endpoint's MAC (then an unknown one) and arpings a same-LNID peer.
    The model drops both at `src`'s send check; a delivered request would leave the forged
    MAC in the peer's neighbour table (an ARP request for its own address updates it), so
    that table, flushed before, is the witness. Returns the forgeries that were delivered."""
    states = tb.states()
    everyone = [*tb.vms, *tb.external]
    peers = [d for d in everyone if d != src and model_exchange(tb, src, d)]
    if not peers:
        return []
    victim = peers[0]
    own = tb.endpoint(src).mac
    others = [tb.endpoint(o).mac for o in everyone if o not in (src, victim)]
    fakes: list[Mac] = [*others[:1], UNKNOWN_MAC]
    out = []
    for fake in fakes:
        assert not expected(tb, states, src, fake, victim), f"the model lets {src} send as {fake}"
        run(tb, victim, "ip neigh flush dev eth0; true")
        run(
            tb,
            src,
            f"ip link set eth0 address {fake}; arping -q -c1 -w1 -I eth0 {_ip(tb, victim)}; "
            f"ip link set eth0 address {own}; true",
        )
        if fake.lower() in run(tb, victim, f"ip neigh show {_ip(tb, src)}; true").lower():
            out.append(f"{src} posing as {fake} reached {victim}")
    return out
