"""The address guard and the host's ARP/ND answers of every back end, against the model.

Each back end gets the same state (`guardframes.guard_state`) and the same forged and honest
frames from a guarded and an unguarded VM, untagged and with one and two VLAN tags; for each
frame `verdict.send_frame` and `guard.answer` say whether it reaches the wire, is dropped, or
is answered on the host (the reply back at the asking VM, nothing on the wire).
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from hostvlan.model import frames, guard, verdict

from .guardframes import BCAST, PEER, Sockets, battery, guard_state, seen, untag
from .ovsnet import OvsHost
from .switchhost import OUTSIDE, SwitchHost

pytestmark = pytest.mark.root

GUARDED_BACKENDS = ["bridge-closed", "ovs", "macvtap"]
ANSWERS_ARP = {"bridge-closed": True, "ovs": True, "macvtap": False}  # macvtap answers nothing: it goes on
ANSWERS_ND = {"bridge-closed": True, "ovs": False, "macvtap": False}  # OVS answers ARP only
COUNTS_AS_MODEL = {"bridge-closed": True, "ovs": False, "macvtap": False}  # see docs/address-guard.md
SMALL = {"bridge-closed": 0, "ovs": 80, "macvtap": 160}  # one port's guard: bridge BPF maps; macvtap its chain
READS_TAGS = {"bridge-closed": True, "ovs": True, "macvtap": False}  # macvtap drops a guarded vNIC's tagged frames


@pytest.mark.parametrize("backend", GUARDED_BACKENDS)
def test_guard_matches_model(backend: str, make_host: Callable[[int], SwitchHost]) -> None:
    host = make_host(3)
    if isinstance(host, OvsHost):  # let OVS parse two VLAN tags (its default: one)
        host.tools.vsctl("set", "Open_vSwitch", ".", "other_config:vlan-limit=2")
    state = guard_state(host.vms)
    filt = host.boot(state)
    socks = Sockets({vm.name: vm.ns for vm in host.vms} | {OUTSIDE: host.outside_ns})
    host._closers.append(socks.close)
    socks.collect(0.3)
    # the guard's own counts: the receive filter also counts (no_shared_lnid) the copies of
    # these broadcasts it keeps from other LNIDs' ports, which are not the guard's drops
    guard_counts = filt.guard.counts if backend == "bridge-closed" else filt.drops  # type: ignore[attr-defined]
    before = Counter(guard_counts())
    wrong: list[str] = []
    want_drops: Counter[tuple[str, str]] = Counter()
    want_replies: dict[str, Counter[bytes]] = {vm.name: Counter() for vm in host.vms}
    cases = battery(host.vms)
    for case in cases:  # one burst, one collection: every frame differs from the others
        socks.send(case.sender, case.data)
        time.sleep(host.PACE)
    got = socks.collect(0.5)
    for case in cases:
        v = verdict.send_frame(state, case.port, case.data)
        ans = guard.answer(state, case.port, case.data) if v.allow else guard.Answer()
        if ans.reply is not None and not (ANSWERS_ARP if frames.parse(ans.reply).l3 == "arp" else ANSWERS_ND)[backend]:
            ans = guard.Answer()
        tagged = frames.parse(case.data).tags > 0
        if not READS_TAGS[backend] and tagged:
            if state.addresses.get(state.bindings[case.port].mac):
                v, ans = verdict.Verdict(False, "tagged, from a guarded vNIC", verdict.MALFORMED), guard.Answer()
            elif v.code == verdict.NO_SHARED_LNID:  # the request is behind a tag: not read
                v = verdict.Verdict(True, "tagged request of an unguarded vNIC")
        on_wire = seen(got[OUTSIDE], case.data)
        if on_wire != (v.allow and ans.holder is None):
            wrong.append(f"{case.label}: on the wire {on_wire}, model {v.reason} ({v.code})")
        if ans.reply is not None:
            want_replies[case.sender][untag(ans.reply)] += 1
        if not v.allow:
            want_drops[(str(case.port), v.code)] += 1
    for vm in host.vms:
        own = bytes.fromhex(vm.mac.replace(":", ""))
        replies = Counter(f for f in got[vm.name] if f[0:6] == own)  # the test sends broadcasts only
        if replies != want_replies[vm.name]:
            wrong.append(f"{vm.name}: replies {replies} != model {want_replies[vm.name]}")
    answered = sum(sum(c.values()) for c in want_replies.values())
    codes = Counter(code for _, code in want_drops.elements())
    assert not wrong, "\n".join(wrong)
    assert answered >= 12 or not ANSWERS_ARP[backend]
    assert set(codes) >= set(verdict.DROP_REASONS[4:]) | {verdict.NO_SHARED_LNID}, codes
    after = Counter(guard_counts())
    if not COUNTS_AS_MODEL[backend]:
        return
    delta = {k: n for k, n in (after - before).items() if k[1] in verdict.DROP_REASONS[4:] or k[1] == "no_shared_lnid"}
    want = {k: n for k, n in want_drops.items() if k[1] != verdict.FORGED_SOURCE}
    assert delta == want


@pytest.mark.parametrize("backend", GUARDED_BACKENDS)
def test_an_address_change_is_one_small_transaction(backend: str, make_host: Callable[[int], SwitchHost]) -> None:
    """A new address of a running vNIC is in force after one small transaction (bridge: BPF
    map updates, no nftables batch); a restarted agent with the same view pushes nothing
    (macvtap: rewrites its guard chains once)."""
    host = make_host(3)
    state = guard_state(host.vms)
    filt = host.boot(state)
    vm = host.vms[0]
    socks = Sockets({vm.name: vm.ns, OUTSIDE: host.outside_ns})
    host._closers.append(socks.close)
    new = bytes(Ether(src=vm.mac, dst=BCAST) / IP(src="10.66.0.99", dst=PEER) / UDP(sport=1, dport=2) / Raw(b"new!"))

    def on_wire() -> bool:
        socks.collect(0.1)
        socks.send(vm.name, new)
        return seen(socks.collect(0.3)[OUTSIDE], new)

    assert not on_wire()  # not its address yet: ip_spoof
    host.calls(filt)
    addrs = state.addresses[vm.mac]
    more = replace(addrs, nets=addrs.nets | {ipaddress.ip_network("10.66.0.99/32")})
    filt.set_addrs(vm.mac, more)
    filt.apply()
    txns = [size for kind, size in host.calls(filt) if kind == "txn"]
    assert len(txns) <= 1 and sum(txns) <= SMALL[backend], txns
    assert on_wire()

    restarted = host.new_filter()
    restarted.sync(replace(state, addresses={**state.addresses, vm.mac: more}))
    restarted.apply()
    txns = [size for kind, size in host.calls(restarted) if kind == "txn"]
    assert txns == [] or (backend == "macvtap" and len(txns) == 1), txns
    assert on_wire()
