"""The control daemon (agent/daemon.py) against a fake manager and the in-memory back end: no root.

The manager is faked at its HTTP boundary (an httpx MockTransport serving the feed as a
stream of lines and taking status reports), the kernel by `MemoryFilter` (which fails on
demand) and the host's links by a dict. What is checked:
- a snapshot then deltas end in the kernel in order, and the status reports say so;
- a failed apply or audit is retried with backoff until it succeeds, the agent reports
  itself out of sync (with the error) meanwhile, then in sync; the kernel keeps its state;
- the feed keeps being read while a slow apply runs (deltas go into the next apply);
- the agent reconnects when the manager drops the feed;
- a rejected token is logged as such and a rotated token file is picked up without a restart;
- every local vNIC's binding is reported (bound, or why not), logged once when unbound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostvlan.agent.daemon import Agent, AgentConfig
from hostvlan.agent.logs import JsonFormatter
from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.memory import MemoryFilter, MemoryKernel
from hostvlan.model.datacenter import HostDelta, apply_delta, merge_delta
from hostvlan.model.facts import FactsDelta
from hostvlan.model.hostview import HostView
from hostvlan.model.ids import HostId, Lnid, Mac, PortName, tap_mac

from .strategies import PROPERTY

HOST = HostId("h1")
TOKEN = "right-token"
A, B, C, D = (Mac(f"52:54:00:00:00:0{i}") for i in "abcd")
X = Mac("52:54:00:00:01:01")  # a vNIC on another host
TIMEOUT = 5.0


class FakeManager:
    """The manager's two agent calls: `GET /v1/hosts/H/feed` (snapshot, then what the test
    pushes) and `POST /v1/hosts/H/status` (recorded). A wrong token gets 401."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.snapshot = snapshot
        self.token = TOKEN
        self.connections = 0
        self.rejected = 0
        self.statuses: list[dict[str, Any]] = []
        self.refuse_status = 0  # answer the next N reports 503
        self._feed: asyncio.Queue[bytes | None] | None = None

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != f"Bearer {self.token}":
            self.rejected += 1
            return httpx.Response(401, json={"error": "auth", "detail": "unknown token"})
        if request.method == "GET" and request.url.path == f"/v1/hosts/{HOST}/feed":
            self.connections += 1
            q: asyncio.Queue[bytes | None] = asyncio.Queue()
            q.put_nowait(json.dumps(self.snapshot).encode() + b"\n")
            self._feed = q

            async def lines() -> AsyncIterator[bytes]:
                while (line := await q.get()) is not None:
                    yield line

            return httpx.Response(200, content=lines(), headers={"content-type": "application/x-ndjson"})
        if request.method == "POST" and request.url.path == f"/v1/hosts/{HOST}/status":
            if self.refuse_status:
                self.refuse_status -= 1
                return httpx.Response(503, json={"error": "busy", "detail": "try again"})
            self.statuses.append(json.loads(request.content))
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(404, json={"error": "not_found", "detail": request.url.path})

    def push(self, msg: dict[str, Any]) -> None:
        assert self._feed is not None, "no feed connected"
        self._feed.put_nowait(json.dumps(msg).encode() + b"\n")

    def drop(self) -> None:
        """End the feed stream, as a manager restart or a rotated token does."""
        assert self._feed is not None
        self._feed.put_nowait(None)
        self._feed = None

    def last(self) -> dict[str, Any]:
        return self.statuses[-1] if self.statuses else {}


def snapshot(revision: int, entries: Mapping[Mac, list[int]], local: Mapping[Mac, str | None]) -> dict[str, Any]:
    return {"type": "snapshot", "revision": revision, "entries": dict(entries), "local": dict(local)}


def delta(revision: int, **parts: Any) -> dict[str, Any]:
    return {"type": "delta", "revision": revision, **parts}


def config(links: dict[PortName, tuple[Mac, str]], **kw: Any) -> AgentConfig:
    opts: dict[str, Any] = {
        "read_links": lambda: dict(links),
        "watch_links": False,
        "retry_first": 0.02,
        "retry_max": 0.1,
        "backoff_max": 0.1,
        "audit_interval": 3600.0,
    }
    opts.update(kw)
    return AgentConfig("http://manager.test", HOST, TOKEN, uplinks={}, **opts)


async def until(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        await asyncio.sleep(0.005)


def run_agent(
    mgr: FakeManager, agent_of: Callable[[httpx.AsyncBaseTransport], Agent], body: Callable[[Agent], Awaitable[None]]
) -> None:
    async def main() -> None:
        agent = agent_of(mgr.transport())
        task = asyncio.create_task(agent.run())
        try:
            await body(agent)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(main(), 30))


def entries_of(filt: MemoryFilter) -> dict[Mac, frozenset[Lnid]]:
    return dict(filt.state().entries)


def lnids(*xs: int) -> frozenset[Lnid]:
    return frozenset(Lnid(x) for x in xs)


TAP_A = {PortName("vnet0"): (tap_mac(A), "tun")}


# ----- snapshot, deltas, reports ------------------------------------------------------------------
def test_snapshot_then_deltas_are_enforced_in_order_and_reported() -> None:
    mgr = FakeManager(snapshot(5, {A: [1], X: [1]}, {A: None}))
    kernel = MemoryKernel()
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 5, "the snapshot reported")
        first = mgr.statuses[0]
        assert first["bindings"] == {A: {"port": "vnet0", "state": "bound", "reason": None}}
        assert "in_sync" not in first, "in sync: the fields keep their defaults"
        assert entries_of(filt) == {A: lnids(1), X: lnids(1)}
        assert {p: b.mac for p, b in filt.state().bindings.items()} == {PortName("vnet0"): A}
        mgr.push(delta(6, entries={B: [1]}))
        mgr.push(delta(7, removed=[X]))
        mgr.push(delta(8, entries={B: [1, 2]}))
        mgr.push({"type": "heartbeat", "revision": 8})
        await until(lambda: mgr.last().get("revision") == 8, "r8 reported")
        assert entries_of(filt) == {A: lnids(1), B: lnids(1, 2)}
        assert kernel.facts == filt.desired()
        revisions = [s["revision"] for s in mgr.statuses]
        assert revisions == sorted(revisions), "reports go forward only"
        assert all("bindings" not in s for s in mgr.statuses[1:]), "bindings unchanged: not sent again"

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), filt, transport=t), body)


def test_a_failed_apply_is_retried_until_it_succeeds_and_reported_out_of_sync_meanwhile() -> None:
    mgr = FakeManager(snapshot(3, {A: [1]}, {A: None}))
    kernel = MemoryKernel()
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 3, "the snapshot reported")
        before = kernel.facts
        kernel.fail_next = 3
        mgr.push(delta(4, entries={B: [1]}))
        await until(lambda: mgr.last().get("in_sync") is False, "out of sync reported")
        bad = mgr.last()
        assert bad["revision"] == 3, "the revision reported is the one the kernel enforces"
        assert "injected failure" in bad["error"] and bad["error"].startswith("apply failed")
        assert kernel.facts == before, "a failed apply leaves the kernel as it was"
        await until(lambda: mgr.last().get("revision") == 4 and "in_sync" not in mgr.last(), "back in sync")
        assert kernel.fail_next == 0, "retried until the back end took it"
        assert agent.state.in_sync and agent.state.error is None
        assert entries_of(filt)[B] == lnids(1) and kernel.facts == filt.desired()

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), filt, transport=t), body)


def test_a_failed_install_at_start_is_retried() -> None:
    mgr = FakeManager(snapshot(1, {A: [1]}, {A: None}))
    kernel = MemoryKernel(fail_next=2)
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 1 and "in_sync" not in mgr.last(), "in sync")
        assert kernel.facts == filt.desired() and kernel.fail_next == 0

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), filt, transport=t), body)


def test_a_failed_audit_is_reported_and_retried_until_the_drift_is_repaired() -> None:
    mgr = FakeManager(snapshot(2, {A: [1], B: [1]}, {A: None}))
    kernel = MemoryKernel()
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 2, "the snapshot reported")
        good = kernel.facts
        assert good is not None
        kernel.facts = dataclasses.replace(good, known=frozenset())  # drift behind the agent's back
        kernel.fail_next = 2  # the audit's repairs fail twice
        await until(lambda: mgr.last().get("in_sync") is False, "the failed audit reported")
        assert mgr.last()["error"].startswith("audit failed")
        await until(lambda: kernel.facts == good, "the drift repaired")
        await until(lambda: "in_sync" not in mgr.last(), "back in sync")

    def agent_of(t: httpx.AsyncBaseTransport) -> Agent:
        return Agent(config(dict(TAP_A), audit_interval=0.05), filt, transport=t)

    run_agent(mgr, agent_of, body)


def test_a_failed_link_event_repair_is_retried() -> None:
    links: dict[PortName, tuple[Mac, str]] = {}
    fail = {"reads": 0}

    def read_links() -> dict[PortName, tuple[Mac, str]]:
        if fail["reads"]:
            fail["reads"] -= 1
            raise OSError(105, "No buffer space available")
        return dict(links)

    mgr = FakeManager(snapshot(1, {A: [1]}, {A: None}))
    filt = MemoryFilter()

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 1, "the snapshot reported")
        assert mgr.statuses[0]["bindings"][A]["reason"] == "no port carries this vNIC"
        links.update(TAP_A)
        fail["reads"] = 2
        agent.links_changed()
        await until(lambda: mgr.last().get("in_sync") is False, "the failed repair reported")
        assert mgr.last()["error"].startswith("port repair failed") and "No buffer space" in mgr.last()["error"]
        await until(lambda: "in_sync" not in mgr.last() and PortName("vnet0") in filt.state().bindings, "repaired")
        assert any(s.get("bindings", {}).get(A, {}).get("port") == "vnet0" for s in mgr.statuses)

    run_agent(mgr, lambda t: Agent(config({}, read_links=read_links), filt, transport=t), body)


def test_an_audit_that_fails_holds_up_no_delta() -> None:
    """While a failed audit waits for its retry, the feed's deltas are enforced."""
    mgr = FakeManager(snapshot(1, {A: [1]}, {A: None}))
    kernel = MemoryKernel()
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 1, "the snapshot reported")
        good = kernel.facts
        assert good is not None
        kernel.facts = dataclasses.replace(good, known=frozenset())
        kernel.fail_next = 1
        await until(lambda: mgr.last().get("in_sync") is False, "the failed audit reported")
        mgr.push(delta(2, entries={B: [1]}))
        await until(lambda: agent.state.revision == 2, "r2 enforced while the audit waits")
        assert not agent.state.in_sync, "the audit has not been retried yet"
        await until(lambda: "in_sync" not in mgr.last() and mgr.last()["revision"] == 2, "back in sync")

    def agent_of(t: httpx.AsyncBaseTransport) -> Agent:
        return Agent(config(dict(TAP_A), audit_interval=0.05, retry_first=1.0, retry_max=1.0), filt, transport=t)

    run_agent(mgr, agent_of, body)


def test_a_refused_status_report_is_sent_again() -> None:
    mgr = FakeManager(snapshot(7, {A: [1]}, {A: None}))
    mgr.refuse_status = 3

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 7, "the report taken at last")
        assert "bindings" in mgr.statuses[0]

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), MemoryFilter(), transport=t), body)


# ----- a slow kernel never stalls the feed --------------------------------------------------------
class SlowFilter(MemoryFilter):
    """Its commits wait for `gate` (on the agent's kernel thread), like a slow `ovs-ofctl`."""

    def __init__(self, kernel: MemoryKernel) -> None:
        super().__init__(kernel)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting = threading.Event()
        self.threads: set[str] = set()

    def _commit(self, delta: FactsDelta, digest: int) -> None:
        self.threads.add(threading.current_thread().name)
        self.waiting.set()
        assert self.gate.wait(20), "the test never opened the gate"
        super()._commit(delta, digest)


def test_the_feed_is_read_while_a_slow_apply_runs() -> None:
    mgr = FakeManager(snapshot(1, {A: [1]}, {A: None}))
    kernel = MemoryKernel()
    filt = SlowFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 1, "the snapshot reported")
        filt.gate.clear()
        filt.waiting.clear()
        mgr.push(delta(2, entries={B: [1]}))
        await until(filt.waiting.is_set, "the apply of r2 in the kernel")
        commits = len(kernel.transactions)
        for r in range(3, 13):  # the feed goes on while the kernel is stuck in r2's apply
            mgr.push(delta(r, entries={Mac(f"52:54:00:00:02:{r:02x}"): [1]}))
            mgr.push({"type": "heartbeat", "revision": r})
        await until(lambda: agent.state.received == 12, "the feed read up to r12 during the apply")
        assert agent.state.revision == 1 and len(kernel.transactions) == commits, "the apply is still stuck"
        filt.gate.set()
        await until(lambda: mgr.last().get("revision") == 12, "r12 enforced and reported")
        assert len(kernel.transactions) == commits + 2, "r3..r12 went into one apply after r2's"
        assert len(entries_of(filt)) == 12 and kernel.facts == filt.desired()
        assert filt.threads == {next(iter(filt.threads))} and "hostvlan-kernel" in next(iter(filt.threads))

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), filt, transport=t), body)


# ----- the manager's connection ------------------------------------------------------------------
def test_the_agent_reconnects_after_the_manager_drops_the_feed() -> None:
    mgr = FakeManager(snapshot(4, {A: [1]}, {A: None}))
    kernel = MemoryKernel()
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 4, "the snapshot reported")
        held = kernel.facts
        mgr.snapshot = snapshot(9, {A: [1, 3], C: [3]}, {A: None})  # what the manager holds after its restart
        sent = len(mgr.statuses)
        mgr.drop()
        await until(lambda: mgr.connections == 2, "a new connection")
        await until(lambda: mgr.last().get("revision") == 9, "the new snapshot reported")
        assert kernel.facts != held and entries_of(filt) == {A: lnids(1, 3), C: lnids(3)}
        assert "bindings" in mgr.statuses[sent], "bindings go with the first report after each snapshot"

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), filt, transport=t), body)


def test_a_rejected_token_is_said_so_and_a_rotated_token_file_is_read_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hostvlan.agent")
    mgr = FakeManager(snapshot(2, {A: [1]}, {A: None}))
    token_file = tmp_path / "token"
    token_file.write_text("stale-token\n")
    kernel = MemoryKernel()
    filt = MemoryFilter(kernel)

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.rejected >= 2, "retries with the wrong token")
        assert kernel.facts is not None and not kernel.facts.bound, "installed closed, nothing opened"
        text = caplog.text
        assert f"manager rejected the token of host {HOST}" in text
        assert "unreachable" not in text
        token_file.write_text(TOKEN + "\n")  # rotated: no restart
        await until(lambda: mgr.last().get("revision") == 2, "in sync with the new token")
        assert entries_of(filt) == {A: lnids(1)}

    def agent_of(t: httpx.AsyncBaseTransport) -> Agent:
        return Agent(config(dict(TAP_A), token_file=token_file), filt, transport=t)

    run_agent(mgr, agent_of, body)


# ----- bindings -----------------------------------------------------------------------------------
def test_bindings_are_reported_and_an_unbound_vnic_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hostvlan.agent")
    links: dict[PortName, tuple[Mac, str]] = {
        PortName("vnet0"): (tap_mac(A), "tun"),
        PortName("vnet1"): (tap_mac(A), "tun"),  # B's --port is mistyped: vnet1 carries A's twin
        PortName("mvt0"): (D, "macvtap"),
    }
    local = {A: None, B: "vnet1", C: "vnet7", D: "mvt0"}
    mgr = FakeManager(snapshot(3, {A: [1], B: [1], C: [2], D: [2]}, local))
    filt = MemoryFilter()

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 3, "the snapshot reported")
        got = mgr.statuses[0]["bindings"]
        assert got == {
            A: {"port": "vnet0", "state": "bound", "reason": None},
            B: {"port": None, "state": "unbound", "reason": f"port vnet1 carries MAC {tap_mac(A)}, not this vNIC's"},
            C: {"port": None, "state": "unbound", "reason": "no such port vnet7"},
            D: {"port": "mvt0", "state": "bound", "reason": None},
        }
        bound = {p: b.mac for p, b in filt.state().bindings.items()}
        assert bound == {PortName("vnet0"): A, PortName("vnet7"): C, PortName("mvt0"): D}, "B not bound"
        # the same view again (another delta): no new warning, no bindings in the report
        mgr.push(delta(4, entries={A: [1, 2]}))
        await until(lambda: mgr.last().get("revision") == 4, "r4 reported")
        assert "bindings" not in mgr.last()
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert sum(f"vNIC {B} is not bound" in w for w in warnings) == 1
        assert sum(f"vNIC {C} is not bound: no such port vnet7" in w for w in warnings) == 1
        # C's device appears, carrying it: a link event binds it, the report says so
        links[PortName("vnet7")] = (tap_mac(C), "tun")
        agent.links_changed()
        await until(lambda: "bindings" in mgr.last(), "the new bindings reported")
        assert mgr.last()["bindings"][C] == {"port": "vnet7", "state": "bound", "reason": None}
        assert f"vNIC {C} is bound to vnet7 now" in caplog.text

    run_agent(mgr, lambda t: Agent(config(links), filt, transport=t), body)


def test_ovs_attached_mac_decides_a_given_port() -> None:
    """On Open vSwitch a port says which vNIC it carries by `external_ids:attached-mac`."""
    attached = {A: PortName("p1"), B: PortName("p2")}
    mgr = FakeManager(snapshot(1, {A: [1], B: [1], C: [1]}, {A: None, B: "p2", C: "p1"}))
    filt = MemoryFilter()

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 1, "the snapshot reported")
        got = mgr.statuses[0]["bindings"]
        assert got[A]["port"] == "p1" and got[B]["port"] == "p2"
        assert got[C]["reason"] == f"port p1 carries attached-mac {A}, not this vNIC's"

    run_agent(mgr, lambda t: Agent(config({}, port_source=lambda: dict(attached)), filt, transport=t), body)


def test_a_data_path_error_is_a_kernel_error() -> None:
    """What a job may raise and the agent retries (so a bug, not a kernel refusal, ends the agent)."""
    from hostvlan.agent.daemon import KERNEL_ERRORS

    assert issubclass(DatapathError, KERNEL_ERRORS) and not issubclass(AssertionError, KERNEL_ERRORS)


def test_json_log_lines() -> None:
    rec = logging.LogRecord("hostvlan.agent", logging.WARNING, __file__, 1, "vNIC %s is not bound", (A,), None)
    out = json.loads(JsonFormatter("h1").format(rec))
    assert out["level"] == "warning" and out["host"] == "h1" and out["message"] == f"vNIC {A} is not bound"
    assert out["time"].endswith("Z")


# ----- folding deltas: the agent applies several as one ------------------------------------------
_POOL = [Mac(f"52:54:00:00:03:0{i}") for i in range(5)]
_deltas = st.builds(
    HostDelta,
    entries=st.dictionaries(st.sampled_from(_POOL), st.frozensets(st.integers(1, 3).map(Lnid), max_size=2), max_size=3),
    removed=st.sets(st.sampled_from(_POOL), max_size=3),
    local=st.dictionaries(st.sampled_from(_POOL), st.sampled_from([None, PortName("p1"), PortName("p2")]), max_size=2),
    unlocal=st.sets(st.sampled_from(_POOL), max_size=2),
)


@PROPERTY
@given(start=_deltas, steps=st.lists(_deltas, max_size=6))
def test_deltas_folded_into_one_give_the_view_applied_in_order(start: HostDelta, steps: list[HostDelta]) -> None:
    view = apply_delta(HostView(HOST), start)
    one_by_one = view
    folded = HostDelta()
    for d in steps:
        one_by_one = apply_delta(one_by_one, d)
        merge_delta(folded, d)
    assert apply_delta(view, folded) == one_by_one


def test_addresses_from_the_feed_reach_the_view() -> None:
    """issue 13: `addrs` of the snapshot and of deltas become the agent's HostView.addresses
    (what the data path's guard compiles from them is the back ends' part)."""
    from hostvlan.model.addresses import Addrs, parse_net

    snap = snapshot(5, {A: [1], X: [1]}, {A: None}) | {"addrs": {A: "10.0.0.1 fd00::1", X: "10.0.0.9 +router"}}
    mgr = FakeManager(snap)
    filt = MemoryFilter(MemoryKernel())
    a_addrs = Addrs(frozenset({parse_net("10.0.0.1"), parse_net("fd00::1")}))

    async def body(agent: Agent) -> None:
        await until(lambda: mgr.last().get("revision") == 5, "the snapshot reported")
        assert agent.state.view is not None
        assert dict(agent.state.view.addresses) == {
            A: a_addrs,
            X: Addrs(frozenset({parse_net("10.0.0.9")}), router=True),
        }
        mgr.push(delta(6, entries={B: [1]}, addrs={B: "10.0.0.2", X: ""}))
        mgr.push(delta(7, entries={C: [1]}))
        await until(lambda: mgr.last().get("revision") == 7, "r7 reported")
        view = agent._folded_view()
        assert view is not None and dict(view.addresses) == {A: a_addrs, B: Addrs(frozenset({parse_net("10.0.0.2")}))}
        mgr.push(delta(8, removed=[B]))
        await until(lambda: mgr.last().get("revision") == 8, "r8 reported")
        view = agent._folded_view()
        assert view is not None and set(view.addresses) == {A}

    run_agent(mgr, lambda t: Agent(config(dict(TAP_A)), filt, transport=t), body)
