"""`hostvlan bench control-plane`: the manager at the paper's scale, with simulated agents.

One `hostvlan manager` process (its own SQLite database, a fresh port) and, in this
process, one simulated agent per host (`hostvlan.sim.agents`), every one connected to
its feed for the whole run. Phases, each timed:

1. hosts: register every host in bulk (`POST /v1/hosts/batch`), connect every agent and
   wait until each has applied and reported its (empty) snapshot;
2. load: register every VM of the Table 1 layout (`hostvlan.sim.layout`) through
   `POST /v1/batch`, one pod of hosts per batch; `load_s` runs from the first batch
   until every agent has applied the last revision. Then the manager's RSS, the
   database's size, and every agent's view against the layout (not against the
   manager's own model: an independent oracle);
3. reg / move / LNID add: single commands while everything is connected; latency from
   sending the command until every host it concerns has applied it; feed bytes received
   by every other host meanwhile (heartbeat lines excluded) must be 0;
4. restart: registrations are acknowledged one after another, the manager is killed
   with SIGKILL in the middle and started again on the same database; the time until
   every agent has a fresh snapshot of the new manager applied and reported, and every
   acknowledged registration is checked for in the restarted manager's table.

A benchmark: it measures and reports, never asserts; `make test` does not run it.
Talks to the manager over HTTP only (and runs it as a process); imports `hostvlan.sim`.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from hostvlan.sim.layout import EXTRA_MAC_BASE, Layout, mac_of
from hostvlan.sim.procs import Agents

START_TIMEOUT = 600.0


@dataclass
class BenchConfig:
    hosts: int = 8192
    vms_per_host: int = 128
    vms_per_tenant: int = 64
    addresses: bool = False  # register every VM with one IPv4 and one IPv6 address (issue 13)
    batch_hosts: int = 0  # hosts per /v1/batch; 0: one pod (vms_per_tenant hosts)
    regs: int = 200
    moves: int = 200
    lnid_adds: int = 200
    restart_writes: int = 50  # acknowledged registrations before the kill
    sim_procs: int = 2  # worker processes of the simulated agents (0: in this process)
    timeout: float = 900.0  # per wait
    seed: int = 1
    workdir: str | None = None
    progress: bool = True


def percentile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[max(0, math.ceil(q * len(s)) - 1)] if s else float("nan")


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    ms = [x * 1000 for x in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 2) if ms else float("nan"),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class ManagerProcess:
    """`hostvlan manager` on 127.0.0.1:PORT over `db`; restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.db = workdir / "manager.db"
        self.ready = workdir / "ready"
        self.log = workdir / "manager.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""
        self.extra: list[str] = []  # more `hostvlan manager` options (bench/replicated.py: --store)

    async def start(self) -> float:
        """Start and wait until it serves; returns the seconds that took."""
        t0 = time.perf_counter()
        self.ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "hostvlan.cli", "manager", "--db", str(self.db)]
        prof = os.environ.get("HOSTVLAN_BENCH_PROFILE")  # a directory: cProfile each manager into it
        if prof:
            out = Path(prof) / f"{self.log.stem}-{int(time.time())}.prof"
            argv[1:1] = ["-m", "cProfile", "-o", str(out)]
        argv += ["--listen", f"127.0.0.1:{self.port}", "--ready-file", str(self.ready), *self.extra]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the manager exited at start:\n{self.log.read_text()[-3000:]}")
            if time.perf_counter() - t0 > START_TIMEOUT:
                raise RuntimeError("the manager did not get ready in time")
            await asyncio.sleep(0.02)
        ready = json.loads(self.ready.read_text())
        self.token = Path(ready["token_file"]).read_text().strip()
        return time.perf_counter() - t0

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def rss_mib(self) -> tuple[float, float]:
        """(VmRSS, VmHWM) of the manager process, in MiB."""
        assert self.proc is not None
        got = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                got[k] = int(v.split()[0]) / 1024
        return round(got["VmRSS"], 1), round(got["VmHWM"], 1)

    def db_mib(self) -> float:
        total = sum(p.stat().st_size for p in self.workdir.glob("manager.db*") if p.name != "manager.db.admin-token")
        return round(total / (1 << 20), 1)


class Bench:
    def __init__(self, cfg: BenchConfig, out: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.layout = Layout(cfg.hosts, cfg.vms_per_host, cfg.vms_per_tenant)
        self.rng = random.Random(cfg.seed)
        self.t_start = time.perf_counter()
        self._out = out
        self.result: dict[str, Any] = {}
        self.mgr: ManagerProcess
        self.fleet: Agents
        self.http: httpx.AsyncClient
        self.names = [self.layout.host_name(h) for h in range(cfg.hosts)]
        self._extra = 0

    def say(self, text: str) -> None:
        if self.cfg.progress:
            self._out(f"[{time.perf_counter() - self.t_start:7.1f}s] {text}")

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        resp = await self.http.request(method, path, json=body)
        if resp.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json()

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.mgr.url,
            headers={"Authorization": f"Bearer {self.mgr.token}"},
            timeout=httpx.Timeout(self.cfg.timeout),
            # drop idle connections before the manager does (uvicorn: 5 s), never reuse a closing one
            limits=httpx.Limits(keepalive_expiry=2.0),
            trust_env=False,
        )

    # ----- phases ---------------------------------------------------------------------------------
    async def run(self, workdir: Path) -> dict[str, Any]:
        lay = self.layout
        self.result["config"] = {
            **{k: v for k, v in asdict(self.cfg).items() if k not in ("workdir", "progress")},
            "vms": lay.vms,
            "tenants": lay.tenants,
            "view_entries_expected": lay.view_entries,
            "nofile": _raise_nofile(),
            "cpus": os.cpu_count(),
        }
        self.mgr = ManagerProcess(workdir)
        await self.mgr.start()
        self.http = self._client()
        self.fleet = Agents(self.mgr.url, self.cfg.sim_procs)
        try:
            await self.phase_hosts()
            await self.phase_load()
            await self.check_views("after load")
            await self.phase_reg()
            await self.phase_move()
            await self.phase_lnid_add()
            await self.phase_restart()
            await self.check_views("after restart")
        finally:
            await self.fleet.stop()
            await self.http.aclose()
            self.mgr.stop()
        return self.summary()

    async def phase_hosts(self) -> None:
        t0 = time.perf_counter()
        agents: list[tuple[str, str]] = []
        for i in range(0, len(self.names), 2048):
            chunk = self.names[i : i + 2048]
            ans = await self.call("POST", "/v1/hosts/batch", {"names": chunk})
            agents += [(h["name"], h["token"]) for h in ans["hosts"]]
        t1 = time.perf_counter()
        rev = (await self.call("GET", "/v1/revision"))["revision"]
        self.fleet.start(agents)
        await self.wait(self.names, rev, "connect", reported=True)
        t2 = time.perf_counter()
        self.result["setup"] = {"register_s": round(t1 - t0, 2), "connect_s": round(t2 - t1, 2)}
        self.say(f"hosts: {len(self.names)} registered in {t1 - t0:.1f}s, all agents synced in {t2 - t1:.1f}s")

    async def phase_load(self) -> None:
        lay, cfg = self.layout, self.cfg
        step = cfg.batch_hosts or lay.vms_per_tenant
        batches = [range(h, min(h + step, lay.hosts)) for h in range(0, lay.hosts, step)]
        t0 = time.perf_counter()
        revs: list[int] = []
        due: dict[str, int] = {}  # the revision of the batch that placed each host's VMs
        said: set[int] = set()
        sem = asyncio.Semaphore(2)  # one batch on the wire while the manager works on the other

        async def send(hosts: range) -> None:
            async with sem:  # the body is built when its turn comes: no burst of work in this process
                body = json.dumps({"ops": list(lay.reg_ops(hosts, cfg.addresses))}, separators=(",", ":")).encode()
                resp = await self.http.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
            if resp.status_code != 200:
                raise RuntimeError(f"batch refused: {resp.status_code} {resp.text[:300]}")
            revs.append(resp.json()["revision"])
            for h in hosts:
                due[lay.host_name(h)] = revs[-1]
            if len(revs) % max(1, len(batches) // 8) == 0 and len(revs) not in said:
                said.add(len(revs))
                applied = sum(1 for a in (await self.fleet.states()).values() if a.entries)
                self.say(
                    f"load: {len(revs)}/{len(batches)} batches acknowledged, {applied} agents hold entries, "
                    f"manager RSS {self.mgr.rss_mib()[0]} MiB"
                )

        tasks = [asyncio.create_task(send(b)) for b in batches]
        await asyncio.gather(*tasks)
        t_acked = time.perf_counter()
        # a tenant lives in one pod: a host hears of no batch after the one placing its pod
        await self.wait_due(due, "load")
        t_applied = time.perf_counter()
        await self.wait_due(due, "load (reported)", reported=True)
        t_reported = time.perf_counter()
        rss, hwm = self.mgr.rss_mib()
        self.result["load"] = {
            "vms": lay.vms,
            "batches": len(batches),
            "acknowledged_s": round(t_acked - t0, 2),
            "applied_s": round(t_applied - t0, 2),
            "reported_s": round(t_reported - t0, 2),
            "manager_rss_mib": rss,
            "manager_rss_peak_mib": hwm,
            "db_mib": self.mgr.db_mib(),
            "feed_bytes": sum((await self.fleet.bytes_in()).values()),
        }
        self.say(
            f"load: {lay.vms} VMs acknowledged in {t_acked - t0:.1f}s, applied by every agent in "
            f"{t_applied - t0:.1f}s; manager RSS {rss} MiB (peak {hwm}), db {self.mgr.db_mib()} MiB"
        )

    async def check_views(self, when: str) -> None:
        """Every agent's view against the layout (an oracle independent of the manager's model)."""
        sizes, wrong = await self.fleet.check(self.layout)
        checks = self.result.setdefault("views", {})
        checks[when] = {
            "hosts": len(sizes),
            "entries_min": min(sizes),
            "entries_max": max(sizes),
            "correct": not wrong and len(sizes) == self.layout.hosts,
            "wrong": len(wrong),
            "wrong_sample": wrong[:5],
        }
        self.say(
            f"views {when}: {len(sizes)} hosts, {min(sizes)}..{max(sizes)} entries, "
            + ("all equal the layout" if not wrong else f"{len(wrong)} DIFFER (e.g. {wrong[:3]})")
        )

    def _new_mac(self) -> str:
        self._extra += 1
        return mac_of(self._extra, EXTRA_MAC_BASE)

    async def _timed(self, path: str, body: dict[str, Any], affected: Iterable[str]) -> float:
        t0 = time.perf_counter()
        ans = await self.call("POST", path, body)
        times = await self.wait(list(affected), ans["revision"], path)
        return max(times.values()) - t0

    async def _measure(self, n: int, one: Callable[[int], Any]) -> dict[str, Any]:
        """Run `one(i)` n times, one after the other; each returns (latencies, hosts it concerns).

        Feed bytes are counted per command, from before it is sent until every host it
        concerns has applied it and its cleanup: any byte to another host is unaffected.
        """
        lat: list[float] = []
        unaffected = affected = quiet = 0
        for i in range(n):
            before = await self.fleet.bytes_in()
            got, concerned = await one(i)
            if i == n - 1:
                await asyncio.sleep(0.5)  # let anything sent by mistake arrive
            after = await self.fleet.bytes_in()
            lat.extend(got)
            for h, b in after.items():
                if h in concerned:
                    affected += b - before[h]
                else:
                    unaffected += b - before[h]
                    quiet += 1
        return {
            **latency_stats(lat),
            "unaffected_hosts_per_command": round(quiet / max(1, n)),
            "unaffected_bytes": unaffected,
            "affected_bytes": affected,
        }

    def _report(self, key: str, got: dict[str, Any]) -> None:
        self.result[key] = got
        self.say(
            f"{key}: n={got['n']} p50 {got['p50_ms']} ms p99 {got['p99_ms']} ms; {got['unaffected_bytes']} bytes "
            f"to unaffected hosts ({got['unaffected_hosts_per_command']} per command)"
        )

    async def phase_reg(self) -> None:
        """A new VM of an existing tenant on a host of its pod; every tenant member changes."""
        lay = self.layout

        async def one(i: int) -> tuple[list[float], set[str]]:
            lnid = self.rng.randrange(1, lay.tenants + 1)
            members = [lay.host_name(h) for h in lay.tenant_hosts(lnid)]
            host = self.rng.choice(members)
            mac = self._new_mac()
            t = await self._timed("/v1/reg", {"lnid": lnid, "mac": mac, "host": host, "port": f"vx{i}"}, members)
            # put the data center back (not measured): the same hosts hear of it
            ans = await self.call("POST", "/v1/rm", {"mac": mac})
            await self.wait(members, ans["revision"], "rm")
            return [t], set(members)

        self._report("reg", await self._measure(self.cfg.regs, one))

    async def phase_move(self) -> None:
        """A VM moves to a host of another pod (which lacks its tenant), and back: two moves."""
        lay = self.layout

        async def one(i: int) -> tuple[list[float], set[str]]:
            h = self.rng.randrange(lay.hosts)
            s = self.rng.randrange(lay.vms_per_host)
            other = self.rng.randrange(lay.hosts - lay.vms_per_tenant)
            if other >= lay.pod(h) * lay.vms_per_tenant:
                other += lay.vms_per_tenant  # a host outside h's pod
            src, dst = lay.host_name(h), lay.host_name(other)
            mac = lay.mac(h, s)
            t1 = await self._timed("/v1/move", {"mac": mac, "host": dst, "port": f"mv{s}"}, [src, dst])
            t2 = await self._timed("/v1/move", {"mac": mac, "host": src, "port": lay.port(s)}, [src, dst])
            return [t1, t2], {src, dst}

        self._report("move", await self._measure(max(1, self.cfg.moves // 2), one))

    async def phase_lnid_add(self) -> None:
        """A running VM joins a tenant of another pod (SPEC §5): it, and that tenant's hosts."""
        lay = self.layout

        async def one(i: int) -> tuple[list[float], set[str]]:
            h = self.rng.randrange(lay.hosts)
            s = self.rng.randrange(lay.vms_per_host)
            lnid = self.rng.randrange(1, lay.tenants + 1)
            while lay.tenant_hosts(lnid) == lay.hosts_of_pod(lay.pod(h)):
                lnid = self.rng.randrange(1, lay.tenants + 1)
            name, mac = lay.host_name(h), lay.mac(h, s)
            concerned = [name] + [lay.host_name(x) for x in lay.tenant_hosts(lnid)]
            t = await self._timed("/v1/reg", {"lnid": lnid, "mac": mac, "host": name, "port": lay.port(s)}, concerned)
            ans = await self.call("POST", "/v1/unreg", {"lnid": lnid, "mac": mac})
            await self.wait(concerned, ans["revision"], "unreg")
            return [t], set(concerned)

        self._report("lnid_add", await self._measure(self.cfg.lnid_adds, one))

    async def phase_restart(self) -> None:
        lay = self.layout
        acked: list[tuple[str, int, str]] = []
        tried: list[str] = []
        touched: set[str] = set()
        for _ in range(self.cfg.restart_writes):
            lnid = self.rng.randrange(1, lay.tenants + 1)
            host = lay.host_name(self.rng.choice(lay.tenant_hosts(lnid)))
            mac = self._new_mac()
            tried.append(mac)
            touched.update(lay.host_name(h) for h in lay.tenant_hosts(lnid))
            await self.call("POST", "/v1/reg", {"lnid": lnid, "mac": mac, "host": host})
            acked.append((mac, lnid, host))
        # one more registration in flight when the manager dies: not acknowledged, outcome unknown
        in_flight = self._new_mac()
        tried.append(in_flight)
        lnid = self.rng.randrange(1, lay.tenants + 1)
        host = lay.host_name(lay.tenant_hosts(lnid)[0])
        touched.update(lay.host_name(h) for h in lay.tenant_hosts(lnid))
        pending = asyncio.create_task(self.call("POST", "/v1/reg", {"lnid": lnid, "mac": in_flight, "host": host}))
        await asyncio.sleep(0)
        snaps = {n: a.snapshots for n, a in (await self.fleet.states()).items()}
        rss_before = self.mgr.rss_mib()
        t_kill = time.perf_counter()
        self.mgr.kill()
        self.say(f"restart: manager killed (SIGKILL) after {len(acked)} acknowledged registrations")
        try:
            await pending
        except (httpx.HTTPError, RuntimeError):
            pass
        await self.http.aclose()
        self.say("restart: starting the manager again on the same database")
        start_s = await self.mgr.start()
        self.http = self._client()
        rev = (await self.call("GET", "/v1/revision"))["revision"]
        self.say(f"restart: manager serving again after {start_s:.1f}s (revision {rev}); waiting for every agent")
        resynced: dict[str, float] = {}
        deadline = time.perf_counter() + self.cfg.timeout
        last_say = time.perf_counter()
        while len(resynced) < len(self.names):
            now = time.perf_counter()
            for n, a in (await self.fleet.states()).items():
                if n not in resynced and a.snapshots > snaps[n] and a.reported >= rev:
                    resynced[n] = a.reported_at
            if now > deadline:
                raise TimeoutError(f"{len(self.names) - len(resynced)} agents did not resync")
            if now - last_say > 5:
                last_say = now
                self.say(f"restart: {len(resynced)}/{len(self.names)} agents resynced")
            await asyncio.sleep(0.1)
        t_all = max(resynced.values())
        lost = []
        for mac, lnid_, host_ in acked:
            rows = await self.call("GET", f"/v1/macs?mac={mac}")
            if not rows or lnid_ not in rows[0]["lnids"] or rows[0]["host"] != host_:
                lost.append(mac)
        self.result["restart"] = {
            "resync_s": round(t_all - t_kill, 2),
            "manager_start_s": round(start_s, 2),
            "acknowledged": len(acked),
            "lost_acknowledged": len(lost),
            "manager_rss_before_mib": rss_before[0],
            "manager_rss_after_mib": self.mgr.rss_mib()[0],
        }
        self.say(f"restart: every agent resynced {t_all - t_kill:.1f}s after the kill; {len(lost)} acknowledged lost")
        # back to the layout: remove what the writer added; the in-flight one may or may not exist
        if not await self.call("GET", f"/v1/macs?mac={in_flight}"):
            tried.remove(in_flight)
            touched = {lay.host_name(h) for _, lnid_, _ in acked for h in lay.tenant_hosts(lnid_)}
        self.result["restart"]["in_flight_committed"] = in_flight in tried
        ans = await self.call("POST", "/v1/batch", {"ops": [{"op": "rm", "mac": m} for m in tried]})
        await self.wait(sorted(touched), ans["revision"], "cleanup")

    async def wait_due(self, due: dict[str, int], what: str, reported: bool = False) -> None:
        """Wait until each host has applied (reported) the revision `due` names for it."""
        by_rev: dict[int, list[str]] = {}
        for name, rev in due.items():
            by_rev.setdefault(rev, []).append(name)
        waits = [self.fleet.wait_applied(names, rev, self.cfg.timeout, reported) for rev, names in by_rev.items()]
        task = asyncio.ensure_future(asyncio.gather(*waits))
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                task.result()
                return
            states = await self.fleet.states()
            late = [x for x, r in due.items() if (states[x].reported if reported else states[x].revision) < r]
            why = f" (e.g. {late[0]}: {states[late[0]].last_error or 'no error'})" if late else ""
            self.say(
                f"{what}: {len(due) - len(late)}/{len(due)} agents there{why}, manager RSS {self.mgr.rss_mib()[0]} MiB"
            )

    async def wait(self, names: list[str], revision: int, what: str, reported: bool = False) -> dict[str, float]:
        task = asyncio.create_task(self.fleet.wait_applied(names, revision, self.cfg.timeout, reported))
        if len(names) < 1000:
            return await task
        while True:
            done, _ = await asyncio.wait({task}, timeout=5.0)
            if done:
                return task.result()
            states = await self.fleet.states(names)
            n = sum(1 for x in names if (states[x].reported if reported else states[x].revision) >= revision)
            self.say(f"{what}: {n}/{len(names)} agents at r{revision}, manager RSS {self.mgr.rss_mib()[0]} MiB")

    def summary(self) -> dict[str, Any]:
        r = self.result
        views = r.get("views", {})
        unaffected = sum(r[k]["unaffected_bytes"] for k in ("reg", "move", "lnid_add") if k in r)
        top: dict[str, Any] = {
            "hosts": self.layout.hosts,
            "vms": self.layout.vms,
            "load_s": r["load"]["applied_s"],
            "manager_rss_mib": r["load"]["manager_rss_mib"],
            "db_mib": r["load"]["db_mib"],
            "view_entries_max": max(v["entries_max"] for v in views.values()),
            "views_correct": all(v["correct"] for v in views.values()),
            "reg_p50_ms": r["reg"]["p50_ms"],
            "reg_p99_ms": r["reg"]["p99_ms"],
            "unaffected_bytes": unaffected,
            "move_p99_ms": r["move"]["p99_ms"],
            "lnid_add_p99_ms": r["lnid_add"]["p99_ms"],
            "restart_resync_s": r["restart"]["resync_s"],
            "lost_acknowledged": r["restart"]["lost_acknowledged"],
        }
        return {**top, **r}


def _run_loop(main: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """Run on uvloop when installed, without changing the process's event-loop policy."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def run(cfg: BenchConfig, out: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole benchmark; progress lines go to `out` (default: stderr)."""

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    bench = Bench(cfg, out or err)
    # the simulated views are millions of long-lived objects without cycles: a full
    # collection would walk them all, again and again, while the agents parse
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if cfg.workdir:
            wd = Path(cfg.workdir)
            wd.mkdir(parents=True, exist_ok=True)
            return _run_loop(bench.run(wd))
        with tempfile.TemporaryDirectory(prefix="hostvlan-bench-") as tmp:
            return _run_loop(bench.run(Path(tmp)))
    finally:
        if was_enabled:
            gc.enable()


__all__ = ["BenchConfig", "run"]
