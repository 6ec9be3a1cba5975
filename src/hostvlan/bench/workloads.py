"""The bench's workloads: servers in a VM's namespace (sockperf, iperf3, lighttpd) and the clients
that measure (latency, UDP/TCP throughput, web requests/s), each an argv list run with
`ip netns exec` inside the bench's own namespaces."""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hostvlan.bench.options import SHAPE


def run_argv(argv: list[str], timeout: float = 30.0) -> str:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {(res.stderr or res.stdout)[-400:]}")
    return res.stdout


def ip_in(ns: str, *args: str) -> None:
    run_argv(["ip", "-n", ns, *args])


# ----- servers and workloads ----------------------------------------------------------------
class Servers:
    """sockperf, iperf3 and lighttpd in a VM's namespace, up until `close`."""

    def __init__(self, ns: str, ip: str, workdir: Path, web: bool) -> None:
        self.ns, self.ip, self.web = ns, ip, web
        self.dir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.start("sockperf", ["sockperf", "server", "-i", ip, "-p", str(SHAPE.sockperf_port)])
        self.start("iperf3", ["iperf3", "-s", "-B", ip, "-p", str(SHAPE.iperf_port)])
        if web:
            www = workdir / "www"
            www.mkdir(parents=True, exist_ok=True)
            (www / SHAPE.web_file).write_bytes((b"hostvlan " * 114)[:1023] + b"\n")  # 1,024 bytes
            conf = workdir / "lighttpd.conf"
            conf.write_text(
                f'server.document-root = "{www}"\nserver.bind = "{ip}"\nserver.port = {SHAPE.http_port}\n'
                f'server.errorlog = "{workdir}/lighttpd.log"\nserver.max-connections = 1024\n'
                'mimetype.assign = (".html" => "text/html")\n'
            )
            self.start("lighttpd", ["lighttpd", "-D", "-f", str(conf)])
        time.sleep(0.3)

    def start(self, name: str, argv: list[str]) -> None:
        old = self.procs.pop(name, None)
        if old is not None:
            _stop(old)
        self.procs[name] = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def restart_iperf(self) -> None:
        self.start("iperf3", ["iperf3", "-s", "-B", self.ip, "-p", str(SHAPE.iperf_port)])
        time.sleep(0.3)

    def close(self) -> None:
        for proc in self.procs.values():
            _stop(proc)
        self.procs.clear()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _in(ns: str) -> list[str]:
    return ["ip", "netns", "exec", ns]


def sockperf_lat(ns: str, ip: str, seconds: int) -> float:
    out = run_argv(
        [*_in(ns), "sockperf", "ping-pong", "-i", ip, "-p", str(SHAPE.sockperf_port), "-t", str(seconds), "-m", "64"],
        timeout=seconds + 20,
    )
    m = re.search(r"percentile 50\.000 =\s+([0-9.]+)", out)
    if not m:
        raise RuntimeError(f"sockperf output not understood: {out[-500:]}")
    return float(m.group(1))


def iperf_gbps(ns: str, ip: str, seconds: int, udp: bool) -> float:
    argv = [*_in(ns), "iperf3", "-c", ip, "-p", str(SHAPE.iperf_port), "-t", str(seconds), "-J"]
    if udp:
        argv += ["-u", "-b", "0", "-l", "1470"]
    end = json.loads(run_argv(argv, timeout=seconds + 20))["end"]
    if udp:  # received rate: what got through
        return float(end["sum"]["bits_per_second"]) * (1 - float(end["sum"].get("lost_percent", 0.0)) / 100) / 1e9
    return float(end["sum_received"]["bits_per_second"]) / 1e9


def ab_rps(ns: str, ip: str, seconds: int) -> float:
    out = run_argv(
        [*_in(ns), "ab", "-q", "-n", "1024", "-c", "8", f"http://{ip}:{SHAPE.http_port}/{SHAPE.web_file}"], timeout=60
    )
    m = re.search(r"Requests per second:\s+([0-9.]+)", out)
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    if not m or (failed and int(failed.group(1))):
        raise RuntimeError(f"ab output not understood or requests failed: {out[-500:]}")
    return float(m.group(1))


def wrk_rps(ns: str, ip: str, seconds: int) -> float:
    url = f"http://{ip}:{SHAPE.http_port}/{SHAPE.web_file}"
    out = run_argv([*_in(ns), "wrk", "-t", "1", "-c", "16", "-d", f"{seconds}s", url], timeout=seconds + 30)
    m = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if not m or "Non-2xx" in out:
        raise RuntimeError(f"wrk output not understood or errors: {out[-500:]}")
    return float(m.group(1))


@dataclass
class Ledger:
    """What one bench run keeps track of (passed along, never a module global): wall-clock seconds
    per workload (for budgeting) and the namespace prefixes it used (all removed when it is done)."""

    spent: dict[str, float] = field(default_factory=dict)
    prefixes: list[str] = field(default_factory=list)


def measure(workload: str, client_ns: str, srv: Servers, seconds: int, ledger: Ledger) -> float:
    """One measurement (retried twice; iperf3's server restarted if it refused); its time goes to `ledger`."""
    t = time.monotonic()
    try:
        return _measure(workload, client_ns, srv, seconds)
    finally:
        ledger.spent[workload] = ledger.spent.get(workload, 0.0) + time.monotonic() - t


def _measure(workload: str, client_ns: str, srv: Servers, seconds: int) -> float:
    for attempt in (1, 2, 3):
        try:
            if workload == "lat_us":
                return sockperf_lat(client_ns, srv.ip, seconds)
            if workload in ("udp_gbps", "tcp_gbps"):
                return iperf_gbps(client_ns, srv.ip, seconds, udp=workload == "udp_gbps")
            if workload == "ab_rps":
                return ab_rps(client_ns, srv.ip, seconds)
            if workload == "wrk_rps":
                return wrk_rps(client_ns, srv.ip, seconds)
            raise ValueError(f"unknown workload {workload!r}")
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError, KeyError):
            if attempt == 3:
                raise
            if workload.endswith("_gbps"):
                srv.restart_iperf()
            else:
                time.sleep(0.5)
    raise AssertionError("unreachable")


def estimate(workload: str, seconds: int) -> float:
    # sockperf sleeps 2 s after its warm-up, whatever -t says
    return {"ab_rps": 0.6, "lat_us": seconds + 2.4}.get(workload, seconds + 0.2)
