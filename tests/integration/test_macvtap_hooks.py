"""The kernel facts the macvtap back end is built on, measured on real frames.

Which netdev hook of which device sees a frame a VM sends through /dev/tapN, and each
copy headed to a VM; how a netdev chain follows a device name; that a DOWN macvtap is
isolated (the fail-closed contract). If a kernel changes any of this, these tests say
so before the verdict tests do.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from hostvlan.model.ids import Mac
from hostvlan.testbed.traffic import BROADCAST, MULTICAST, frame

from .macvtapnet import OUTSIDE, OUTSIDE_MAC, UPLINK, Host, host_factory, host_state, received

pytestmark = pytest.mark.root

UNKNOWN = Mac("02:bb:00:00:00:99")


@pytest.fixture
def make_mvhost(prefix: str) -> Iterator[Callable[[int], Host]]:
    yield from host_factory(prefix)


def _counting_table(host: Host, devices: list[str]) -> None:
    """Table `netdev probe`: an accepting chain with a counter on both hooks of each device."""
    lines = ["table netdev probe {"]
    for dev in devices:
        for hook in ("ingress", "egress"):
            lines.append(f'  chain {dev}_{hook} {{ type filter hook {hook} device "{dev}" priority 0; counter; }}')
    lines.append("}")
    subprocess.run(
        ["ip", "netns", "exec", host.ns, "nft", "-f", "-"], input="\n".join(lines), text=True, check=True, timeout=30
    )


def _hook_counts(host: Host) -> Counter[str]:
    out = json.loads(host.nft_cli("-j", "list", "table", "netdev", "probe").stdout)["nftables"]
    counts: Counter[str] = Counter()
    for item in out:
        if "rule" in item:
            counts[item["rule"]["chain"]] = item["rule"]["expr"][0]["counter"]["packets"]
    return counts


def test_which_hook_sees_what(make_mvhost: Callable[[int], Host]) -> None:
    host = make_mvhost(3)
    a, b, c = host.vms
    _counting_table(host, [vm.port for vm in host.vms] + [UPLINK])
    host.up()  # no tenant filter here: only the counting table
    probe = host.probe()
    # let stray start-up frames (none expected: IPv6 is off) settle before measuring
    probe.collect(settle=0.2)

    def measure(sender: str, data: bytes) -> tuple[Counter[str], dict[str, list[str]]]:
        before = _hook_counts(host)
        probe.send(sender, data)
        got = received(probe.collect(settle=0.3))
        after = _hook_counts(host)
        return Counter({k: after[k] - before[k] for k in after if after[k] != before[k]}), got

    A, B, C, U = a.port, b.port, c.port, UPLINK
    cases = {
        "vm broadcast": (
            a.name,
            frame(BROADCAST, a.mac, "t1"),
            {f"{A}_egress", f"{B}_ingress", f"{C}_ingress", f"{U}_egress"},
        ),
        "vm multicast": (
            a.name,
            frame(MULTICAST, a.mac, "t2"),
            {f"{A}_egress", f"{B}_ingress", f"{C}_ingress", f"{U}_egress"},
        ),
        "vm to sibling": (a.name, frame(b.mac, a.mac, "t3"), {f"{A}_egress", f"{U}_ingress", f"{B}_ingress"}),
        "vm to wire": (a.name, frame(OUTSIDE_MAC, a.mac, "t4"), {f"{A}_egress", f"{U}_egress"}),
        "vm to unknown": (a.name, frame(UNKNOWN, a.mac, "t5"), {f"{A}_egress", f"{U}_egress"}),
        "wire broadcast": (
            OUTSIDE,
            frame(BROADCAST, OUTSIDE_MAC, "t6"),
            {f"{U}_ingress", f"{A}_ingress", f"{B}_ingress", f"{C}_ingress"},
        ),
        "wire multicast": (
            OUTSIDE,
            frame(MULTICAST, OUTSIDE_MAC, "t7"),
            {f"{U}_ingress", f"{A}_ingress", f"{B}_ingress", f"{C}_ingress"},
        ),
        "wire to vm": (OUTSIDE, frame(b.mac, OUTSIDE_MAC, "t8"), {f"{U}_ingress", f"{B}_ingress"}),
    }
    receivers = {
        "vm broadcast": {b.name, c.name, OUTSIDE},
        "vm multicast": {b.name, c.name, OUTSIDE},
        "vm to sibling": {b.name},
        "vm to wire": {OUTSIDE},
        "vm to unknown": {OUTSIDE},
        "wire broadcast": {a.name, b.name, c.name},
        "wire multicast": {a.name, b.name, c.name},
        "wire to vm": {b.name},
    }
    for label, (sender, data, hooks) in cases.items():
        counts, got = measure(sender, data)
        assert counts == Counter(dict.fromkeys(hooks, 1)), (label, counts)
        assert {n for n, tags in got.items() if tags} == receivers[label], (label, got)


def test_a_chain_follows_its_device_name(make_mvhost: Callable[[int], Host]) -> None:
    """A netdev chain may name a device that does not exist yet (kernel ≥ 6.16): it hooks
    the device when it is registered, stays when the device goes, and hooks it again."""
    host = make_mvhost(1)
    (vm,) = host.vms
    host.del_macvtap(vm.port)
    _counting_table(host, [vm.port])  # the device does not exist
    probe = host.probe(OUTSIDE)
    for round_ in range(2):
        host.add_macvtap(vm.port, vm.mac)
        host.start_vm(vm)
        probe.send(OUTSIDE, frame(BROADCAST, OUTSIDE_MAC, f"r{round_}"))
        probe.collect(settle=0.3)
        assert _hook_counts(host)[f"{vm.port}_ingress"] == round_ + 1
        host.stop_vm(vm)
        host.del_macvtap(vm.port)
        chains = host.nft_cli("list", "table", "netdev", "probe").stdout
        assert f"{vm.port}_ingress" in chains  # still there without its device


def test_a_down_macvtap_is_isolated(make_mvhost: Callable[[int], Host]) -> None:
    """The premise of the contract: an unbound macvtap kept DOWN neither sends nor
    receives, even with its tap open; `unguarded()` reports it once it is brought up."""
    host = make_mvhost(3)
    a, b, down = host.vms
    state = host_state({a.mac: [1], b.mac: [1], down.mac: [1]}, {a.port: a.mac, b.port: b.mac})
    filt = host.start(state)  # a and b are bound and up; `down` is unbound
    host.start_vm(down, up=False)  # its "QEMU" runs, its macvtap stays down
    assert filt.unguarded(host.links()) == []
    probe = host.probe()

    for vm in host.vms:
        probe.send(vm.name, frame(BROADCAST, vm.mac, f"from-{vm.name}"))
        probe.send(vm.name, frame(OUTSIDE_MAC, vm.mac, f"uc-{vm.name}"))
    probe.send(OUTSIDE, frame(BROADCAST, OUTSIDE_MAC, "from-wire"))
    probe.send(OUTSIDE, frame(down.mac, OUTSIDE_MAC, "to-down"))
    probe.send(a.name, frame(down.mac, a.mac, "a-to-down"))
    got = received(probe.collect())
    assert got[down.name] == []
    assert not any(down.name in t for ts in got.values() for t in ts)
    assert got[b.name] == ["from-vm0"] and got[OUTSIDE] == sorted(
        ["from-vm0", "from-vm1", "uc-vm0", "uc-vm1", "a-to-down"]  # a down macvtap's MAC is no local port
    )

    host.set_up(down.port)  # a contract violation: up and unbound
    assert filt.unguarded(host.links()) == [down.port]
    host.set_up(down.port, up=False)
    time.sleep(0.05)
    assert filt.unguarded(host.links()) == []
