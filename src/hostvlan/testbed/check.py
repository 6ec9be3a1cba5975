"""Send real frames from every endpoint and compare what arrives with the model.

The oracle composes the model's verdicts along the path a frame takes: the send check
at the sender's port, the receive filter at the sender's uplink when it leaves the
host, and the receive filter at the receiver's port. An unfiltered (`none`) host
passes everything. Deliveries the model forbids are leaks; frames the model allows
that never arrived are misses.
"""

from __future__ import annotations

import struct
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from hostvlan.client import ManagerUnreachable
from hostvlan.model.ids import Mac, PortName
from hostvlan.model.ports import FilterState
from hostvlan.model.verdict import receive, send
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.traffic import BROADCAST, ETH_P_PROBE, MULTICAST, Probe, frame

KINDS = ("broadcast", "multicast", "tagged", "unicast")
UNKNOWN_MAC = Mac("02:de:ad:be:ef:01")


@dataclass(frozen=True)
class Place:
    """Where an endpoint is cabled: a host and port, or the physical switch (host None)."""

    host: str | None
    port: PortName | None


def places(tb: Testbed) -> dict[str, Place]:
    out = {n: Place(vm.host, vm.port) for n, vm in tb.vms.items()}
    out.update({n: Place(None, None) for n in tb.external})
    return out


def guarded_macs(tb: Testbed) -> frozenset[Mac]:
    """The MACs registered with addresses now (the manager's view: `addr`/`reg` change it);
    with the manager down (a test of that), the topology's (guarded unless `addresses: []`)."""
    try:
        if tb.api is not None:
            return frozenset(Mac(r["mac"]) for r in tb.api.macs() if r.get("guarded"))
    except ManagerUnreachable:
        pass
    return frozenset(e.mac for e in tb.topology.endpoints() if e.name in tb.vms and e.addresses != () and e.lnids)


def tags_dropped(tb: Testbed, sender: str, guarded: frozenset[Mac]) -> bool:
    """A VLAN-tagged frame of `sender` is dropped where the model lets it go: the macvtap address
    guard cannot read past a tag and drops a guarded vNIC's tagged frames (stricter than the
    model, docs/address-guard.md)."""
    vm = tb.vms.get(sender)
    return vm is not None and tb.hosts[vm.host].switch == "macvtap" and vm.mac in guarded


def expected(
    tb: Testbed,
    states: Mapping[str, FilterState | None],
    sender: str,
    src: Mac,
    receiver: str,
    tag: str = "",
    guarded: frozenset[Mac] = frozenset(),
) -> bool:
    """Does the model let a frame with source `src`, sent by `sender`, reach `receiver`?
    (`tag`: the probe's, whose kind `tagged/` says the frame carries a VLAN tag; `guarded`:
    `guarded_macs`.)"""
    where = places(tb)
    s, r = where[sender], where[receiver]
    if tag.startswith("tagged/") and tags_dropped(tb, sender, guarded):
        return False
    if s.host is not None:
        st = states[s.host]
        assert s.port is not None
        if st is not None and not send(st, s.port, src).allow:
            return False
        if r.host != s.host and st is not None and not receive(st, src, tb.hosts[s.host].uplink).allow:
            return False
    if r.host is None:
        return True
    st = states[r.host]
    assert r.port is not None
    return st is None or receive(st, src, r.port).allow


@dataclass
class Report:
    sent: int = 0
    delivered: int = 0
    leaks: list[str] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)
    forged_delivered: list[str] = field(default_factory=list)
    # who received whose broadcast: matrix[sender][receiver]
    matrix: dict[str, dict[str, bool]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.leaks or self.misses or self.forged_delivered)

    def summary(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "delivered": self.delivered,
            "leaks": len(self.leaks),
            "misses": len(self.misses),
            "forged_delivered": len(self.forged_delivered),
        }


def run_check(
    tb: Testbed,
    kinds: Iterable[str] = KINDS,
    *,
    forged: bool = True,
    senders: Iterable[str] | None = None,
    settle: float = 0.4,
) -> Report:
    """Send every kind of frame from every endpoint (and forged ones from VMs); judge."""
    kinds = tuple(kinds)
    states = tb.states()
    guarded = guarded_macs(tb)
    # libvirt guests have no namespace for the probe: `guestcheck` checks them from inside
    names = [n for n, vm in tb.vms.items() if vm.netns] + list(tb.external)
    macs = {n: tb.endpoint(n).mac for n in names}
    senders = [s for s in senders if s in macs] if senders is not None else names
    rep = Report()
    intended: list[tuple[str, Mac, str, str]] = []  # (sender, src, receiver, tag)
    with Probe() as probe:
        for n in names:
            ns = tb.vms[n].netns if n in tb.vms else tb.external[n].netns
            probe.attach(n, ns)
        probe.drain()
        for s in senders:
            src = macs[s]
            for kind in kinds:
                if kind == "unicast":
                    for r in names:
                        if r != s:
                            tag = f"unicast/{s}/{r}"
                            probe.send(s, frame(macs[r], src, tag))
                            intended.append((s, src, r, tag))
                            rep.sent += 1
                    continue
                tag = f"{kind}/{s}"
                dst = MULTICAST if kind == "multicast" else BROADCAST
                probe.send(s, frame(dst, src, tag, vlan=100 if kind == "tagged" else None))
                rep.sent += 1
                intended += [(s, src, r, tag) for r in names if r != s]
            time.sleep(0.002)
        # Forged frames go last: a VM of an unfiltered (`none`) host really forges, the
        # bridges learn the forged source there, and genuine unicast sent afterwards would
        # follow that poisoned FDB entry (the model judges filters, not MAC learning).
        victims: set[str] = set()
        for s in senders if forged else []:
            if s in tb.vms:
                others = [o for o in names if o != s]
                victims.update(others[:1])
                for i, fake in enumerate([*(macs[o] for o in others[:1]), UNKNOWN_MAC]):
                    tag = f"forged/{s}/{i}/{fake}"
                    probe.send(s, frame(BROADCAST, fake, tag))
                    rep.sent += 1
                    intended += [(s, fake, r, tag) for r in names if r != s]
                time.sleep(0.002)
        got = probe.collect(settle=settle)
        for v in sorted(victims):  # re-teach the FDBs where forged MACs really are (unmarked: not counted)
            hello = bytes.fromhex("ff" * 6 + macs[v].replace(":", "")) + struct.pack("!H", ETH_P_PROBE)
            probe.send(v, hello + bytes(46))
    seen: Counter[tuple[str, str]] = Counter()
    for r, frames in got.items():
        for fr in frames:
            seen[(r, fr.tag)] += 1
            rep.delivered += 1
            parts = fr.tag.split("/")
            sender = parts[1]
            if sender not in macs or sender == r:
                continue
            if not expected(tb, states, sender, fr.src, r, fr.tag, guarded):
                line = f"{fr.tag} from {sender} (src {fr.src}) reached {r}"
                (rep.forged_delivered if parts[0] == "forged" else rep.leaks).append(line)
    for s, src, r, tag in intended:
        ok = expected(tb, states, s, src, r, tag, guarded)
        if tag == f"broadcast/{s}":
            rep.matrix.setdefault(s, {})[r] = seen[(r, tag)] > 0
        if ok and not seen[(r, tag)]:
            rep.misses.append(f"{tag} from {s} (src {src}) never reached {r}")
    return rep
