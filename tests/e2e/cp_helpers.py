"""Helpers of the control-plane e2e tests (`test_control_plane.py`).

- `until`: how long after a management call real frames deliver exactly as expected;
- `Streams`: steady background traffic (frames/s per flow) counted per receiver;
- `make_vm` + `plug` / `recable`: ports that appear later or move between hosts, made by hand inside
  the testbed's namespaces (names under its prefix, so teardown removes them);
- read-backs of a host's kernel filter (its facts, its table handle) and an `nft monitor`
  recorder that sees every change made to a host's ruleset.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hostvlan.datapath.kernel.nft import Nft
from hostvlan.model.facts import Facts
from hostvlan.model.ids import Mac, PortName, tap_mac
from hostvlan.testbed import netns
from hostvlan.testbed.build import BRIDGE, Testbed
from hostvlan.testbed.traffic import Probe, frame

from .support import bridge_port

ENFORCE_WITHIN = 1.0  # seconds: a management change must reach real frames this fast


def admin(tb: Testbed) -> httpx.Client:
    """An HTTP client on the manager's root-namespace URL with the admin token."""
    return httpx.Client(base_url=tb.manager_url, headers={"Authorization": f"Bearer {tb.manager_token}"}, timeout=10.0)


def post(tb: Testbed, path: str, body: dict[str, object]) -> float:
    """POST a management command (admin token); returns `time.monotonic()` when it was answered 200."""
    with admin(tb) as api:
        resp = api.post(path, json=body)
    t = time.monotonic()
    assert resp.status_code == 200, f"{path} {body}: {resp.status_code} {resp.text}"
    return t


def probe_on(tb: Testbed, extra: Mapping[str, str] | None = None) -> Probe:
    """A Probe attached to every VM of the testbed, plus `extra` {name: netns}."""
    probe = Probe()
    for name, vm in tb.vms.items():
        probe.attach(name, vm.netns)
    for name, ns in (extra or {}).items():
        probe.attach(name, ns)
    return probe


@dataclass(frozen=True)
class Flow:
    """Frames from `sender` (source `src`) to `dst`; `expect`: receiver -> should it get them?"""

    sender: str
    src: Mac
    dst: Mac
    expect: Mapping[str, bool]
    vlan: int | None = None


def flipped(flows: Sequence[Flow]) -> list[Flow]:
    return [dataclasses.replace(f, expect={r: not w for r, w in f.expect.items()}) for f in flows]


_labels = iter(range(1 << 30))


def until(
    probe: Probe,
    flows: Sequence[Flow],
    t0: float,
    *,
    timeout: float = 5.0,
    period: float = 0.004,
    grace: float = 0.03,
    confirm: float = 0.15,
) -> float:
    """Seconds from `t0` until real frames deliver exactly as every flow expects.

    From now on one frame per flow is sent every `period` s (a "round"). A round is judged
    `grace` s after it was sent (delivery on a veth/bridge path takes microseconds): it is
    good if each listed receiver got that round's frame iff expected. The answer is the
    send time of the first round from which on every round was good, for at least
    `confirm` s of rounds. Fails with the last bad round if that does not happen in `timeout`.
    """
    label = f"u{next(_labels)}"
    sent_at: list[float] = []
    got: set[tuple[int, int, str]] = set()
    judged = 0
    first_good: int | None = None
    last_bad = "no round judged yet"
    probe.drain()
    while True:
        k = len(sent_at)
        sent_at.append(time.monotonic())
        for i, f in enumerate(flows):
            probe.send(f.sender, frame(f.dst, f.src, f"{label}/{k}/{i}", vlan=f.vlan))
        time.sleep(period)
        for receiver, frames in probe.collect(settle=0).items():
            for fr in frames:
                parts = fr.tag.split("/")
                if len(parts) == 3 and parts[0] == label:
                    got.add((int(parts[1]), int(parts[2]), receiver))
        now = time.monotonic()
        while judged < len(sent_at) and now - sent_at[judged] > grace:
            wrong = [
                f"{f.sender}->{r}: {'missing' if want else 'delivered'}"
                for i, f in enumerate(flows)
                for r, want in f.expect.items()
                if ((judged, i, r) in got) != want
            ]
            if wrong:
                first_good = None
                last_bad = f"round {judged} (+{sent_at[judged] - t0:.3f}s): " + ", ".join(wrong)
            elif first_good is None:
                first_good = judged
            judged += 1
        if first_good is not None and sent_at[judged - 1] - sent_at[first_good] >= confirm:
            return max(0.0, sent_at[first_good] - t0)
        if now - t0 > timeout:
            raise AssertionError(f"frames did not settle as expected within {timeout}s; last bad {last_bad}")


@dataclass
class StreamResult:
    rounds: int = 0
    sent: dict[int, int] = field(default_factory=dict)  # flow -> frames sent
    got: dict[tuple[int, str], int] = field(default_factory=dict)  # (flow, receiver) -> frames received

    def lost(self, flows: Sequence[Flow]) -> dict[str, int]:
        """Per expected (flow, receiver): frames sent but not received."""
        return {
            f"{f.sender}->{r}": self.sent.get(i, 0) - self.got.get((i, r), 0)
            for i, f in enumerate(flows)
            for r, want in f.expect.items()
            if want
        }

    def leaked(self, flows: Sequence[Flow]) -> dict[str, int]:
        """Per forbidden (flow, receiver): frames that arrived anyway (only non-zero ones)."""
        out = {
            f"{f.sender}->{r}": self.got.get((i, r), 0)
            for i, f in enumerate(flows)
            for r, want in f.expect.items()
            if not want
        }
        return {k: v for k, v in out.items() if v}


class Streams:
    """Send one frame per flow `rate` times a second in a background thread until `stop()`.

    The Probe is attached beforehand in the calling thread (entering namespaces is not
    thread-safe); the thread only sends and receives on its sockets.
    """

    def __init__(self, probe: Probe, flows: Sequence[Flow], rate: float = 200.0) -> None:
        self.probe = probe
        self.flows = list(flows)
        self.period = 1.0 / rate
        self.result = StreamResult()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cp-streams", daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> Streams:
        self.probe.drain()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> StreamResult:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join(10.0)
        if self._error is not None:
            raise self._error
        return self.result

    def _run(self) -> None:
        try:
            res = self.result
            next_t = time.monotonic()
            while not self._stop.is_set():
                k = res.rounds
                for i, f in enumerate(self.flows):
                    try:
                        self.probe.send(f.sender, frame(f.dst, f.src, f"s/{k}/{i}", vlan=f.vlan))
                    except BlockingIOError:
                        continue  # not sent: not counted
                    res.sent[i] = res.sent.get(i, 0) + 1
                res.rounds += 1
                self._count(self.probe.collect(settle=0))
                next_t += self.period
                time.sleep(max(0.0, next_t - time.monotonic()))
            self._count(self.probe.collect(settle=0.2))  # frames still in flight
        except BaseException as exc:  # reported by stop()
            self._error = exc

    def _count(self, got: Mapping[str, Sequence[object]]) -> None:
        for receiver, frames in got.items():
            for fr in frames:
                parts = getattr(fr, "tag", "").split("/")
                if len(parts) == 3 and parts[0] == "s":
                    key = (int(parts[2]), receiver)
                    self.result.got[key] = self.result.got.get(key, 0) + 1


# ----- ports made by hand ------------------------------------------------------------------
def vm_netns(tb: Testbed, name: str) -> str:
    return f"{tb.prefix}-v-{name}"


def make_vm(tb: Testbed, name: str, mac: Mac, port: str, port_mac: Mac | None = None) -> str:
    """A VM namespace `<prefix>-v-<name>` with `eth0` (MAC `mac`) and, still beside it in the
    same namespace (unplugged), the host end of its cable: a libvirt-style port `port` whose
    MAC is `port_mac` (by default the tap MAC of `mac`). `plug` then makes the port appear
    on a host. Returns the namespace (a Probe can attach to `eth0` before the port appears)."""
    ns = vm_netns(tb, name)
    netns.create(ns)
    netns.sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
    netns.sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
    with netns.iproute(ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        peer = {"ifname": port, "address": port_mac or tap_mac(mac)}
        ipr.link("add", ifname="eth0", kind="veth", address=mac, peer=peer)
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
    return ns


def plug(tb: Testbed, name: str, host: str, port: str) -> float:
    """Move the port of VM `name` (made by `make_vm`) into `host`'s namespace and plug it into
    the bridge, as a hypervisor plugs a new tap. Returns `time.monotonic()` right after the
    port appeared in the host's namespace (before it is enslaved and up)."""
    dst = tb.hosts[host].netns
    with netns.iproute(vm_netns(tb, name)) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=port)[0], net_ns_fd=dst)
    appeared = time.monotonic()
    with netns.iproute(dst) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
    return appeared


def remove_vm(tb: Testbed, name: str) -> None:
    """Remove a VM made by `make_vm` (its veth pair goes with its namespace)."""
    netns.remove(vm_netns(tb, name))


def recable(tb: Testbed, vm: str, host: str, port: str) -> None:
    """Move a testbed VM's port to another host's bridge, renamed `port` (a migration's new
    tap); `tb.vms` follows, so `run_check` judges the VM where it now is."""
    info = tb.vms[vm]
    dst = tb.hosts[host].netns
    with netns.iproute(tb.hosts[info.host].netns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=info.port)[0], net_ns_fd=dst, ifname=port)
    with netns.iproute(dst) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=port)[0], master=ipr.link_lookup(ifname=BRIDGE)[0], state="up")
    tb.vms[vm] = dataclasses.replace(info, host=host, port=PortName(port))
    netns.wait_operstate_up([dst, info.netns])


# ----- the kernel's side ---------------------------------------------------------------------
@contextmanager
def host_nft(tb: Testbed, host: str) -> Iterator[Nft]:
    with netns.inside(tb.hosts[host].netns):
        nft = Nft()
    try:
        yield nft
    finally:
        nft.close()


def kernel_facts(tb: Testbed, host: str) -> Facts:
    """What `host`'s kernel filter enforces now (read back from its nftables sets)."""
    filt = tb.bridge_filter(host)
    try:
        facts = filt.read()
    finally:
        filt.close()
    assert facts is not None, f"{host}: no hostvlan table in the kernel"
    return facts


def port_closed(tb: Testbed, host: str, port: str) -> bool:
    """Whether `host`'s bridge drops everything `port` sends by itself: locked, not learning,
    and no static FDB entry (no MAC may enter by it): the locked-ports send check."""
    return bridge_port(tb, host, port) == (True, False, set())


def table_handle(tb: Testbed, host: str) -> int:
    """The kernel handle of `host`'s `bridge hostvlan` table (changes if it is ever re-created)."""
    with host_nft(tb, host) as nft:
        items = nft.list("table bridge hostvlan")["nftables"]
    return int(next(i["table"]["handle"] for i in items if "table" in i))


def agent_log(tb: Testbed, host: str) -> str:
    return (tb.workdir / f"{host}.agent.log").read_text(errors="replace")


class NftMonitor:
    """`nft -j monitor` inside a host's namespace: every ruleset change there, one JSON per line."""

    def __init__(self, tb: Testbed, host: str, out: Path) -> None:
        self.out = out
        self._fh = out.open("wb")
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", tb.hosts[host].netns, "nft", "-j", "monitor"],
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # let it subscribe before anything is measured
        assert self._proc.poll() is None, out.read_text()

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(5.0)
        self._fh.close()


def wait_for(cond: object, timeout: float, what: str, step: float = 0.02) -> float:
    """Poll `cond()` until true; returns the seconds it took."""
    assert callable(cond)
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(step)
    return time.monotonic() - t0
