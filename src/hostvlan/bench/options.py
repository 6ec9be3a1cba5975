"""The data-path bench's options and defaults, in one place (pure: no I/O but `validate`'s tool check).

`Options()` is the default run (`hostvlan bench data-path` with no option: the CLI takes its
option defaults from it); `quick()` the smoke test's. The fixed shape of the measured data
center (Table 1's fill, the bench's LNID, ports and addresses) is `Shape`, one frozen value
`SHAPE`, not an option: every bench module reads it from here.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

CONFIGS = ("vxlan", "none", "bridge", "ovs-none", "ovs", "macvtap-none", "macvtap")  # pairs adjacent
PAIRS: Mapping[str, str] = MappingProxyType(
    {"bridge": "none", "ovs": "ovs-none", "macvtap": "macvtap-none", "vxlan": "none"}
)  # filtered -> unfiltered
BACKEND: Mapping[str, str] = MappingProxyType({"vxlan": "none"})  # config -> testbed backend (else the same name)
FILTERED = ("bridge", "ovs", "macvtap")
WORKLOADS = ("lat_us", "udp_gbps", "tcp_gbps", "ab_rps", "wrk_rps")
LOWER_IS_BETTER = frozenset({"lat_us"})
PATHS = ("vm", "ext")
EXT_CONFIGS = ("vxlan", "none", "bridge")  # the default set's external path (the 15-minute budget)
WEB = ("ab_rps", "wrk_rps")  # on the ext path only: the paper's web clients are outside
SWEEP_WORKLOADS = ("lat_us", "udp_gbps")


@dataclass(frozen=True)
class Shape:
    """What every bench run measures on: fixed, not options."""

    bench_lnid: int = 1 << 40  # the measured VMs' own LNID, apart from every fill's
    fill_lnids: int = 128  # Table 1: 8,192 MACs over 128 LNIDs, 126 idle bound ports
    fill_ports: int = 126
    prog_max: int = 100_000  # larger: the bridge's programming is timed in the sweep (others: minutes each)
    max_pairs: int = 2_000_000  # sweep points whose (idle port, MAC) pairs exceed this are skipped
    vni: int = 4242
    underlay: tuple[str, str] = ("10.202.0.1", "10.202.0.2")
    underlay_mtu: int = 1600
    sockperf_port: int = 11111
    iperf_port: int = 5201
    http_port: int = 8080
    web_file: str = "1k.html"


SHAPE = Shape()


@dataclass(frozen=True)
class Options:
    rounds: int = 7
    seconds: int = 1
    configs: tuple[str, ...] = CONFIGS  # on the vm path (all but vxlan)
    ext_configs: tuple[str, ...] = EXT_CONFIGS  # also on the ext path
    workloads: tuple[str, ...] = WORKLOADS
    paths: tuple[str, ...] = PATHS
    sizes: tuple[int, ...] = (8192, 81920, 819200)
    port_lnids: tuple[int, ...] = (1, 16)
    programming: tuple[str, ...] = FILTERED  # back ends whose programming is timed ('' : none)
    changes: int = 50  # single changes timed per back end and size
    command: str = ""


DEFAULTS = Options()


def quick() -> Options:
    """A tiny set for a smoke test (< 1 min): one round, a small table, the bridge pair and VXLAN."""
    return Options(
        rounds=1,
        seconds=1,
        configs=("vxlan", "none", "bridge"),
        ext_configs=("vxlan", "none", "bridge"),
        workloads=("lat_us", "udp_gbps", "ab_rps", "wrk_rps"),
        paths=PATHS,
        sizes=(512,),
        port_lnids=(1, 4),
        programming=("bridge",),
        changes=10,
    )


def validate(opts: Options) -> None:
    """Raise ValueError naming what is wrong (an unknown name, an empty set, a missing tool)."""
    for name, got, allowed in (
        ("config", opts.configs, CONFIGS),
        ("workload", opts.workloads, WORKLOADS),
        ("path", opts.paths, PATHS),
        ("programming back end", opts.programming, FILTERED),
    ):
        bad = [x for x in got if x not in allowed]
        if bad:
            raise ValueError(f"unknown {name} {', '.join(bad)} (choose from {', '.join(allowed)})")
    if not opts.configs or not opts.workloads or not opts.paths or not opts.sizes or not opts.port_lnids:
        raise ValueError("need at least one config, workload, path, size and --port-lnids value")
    if opts.rounds < 1 or opts.seconds < 1:
        raise ValueError("--rounds and --seconds must be at least 1")
    bad = [c for c in opts.ext_configs if c not in CONFIGS]
    if bad:
        raise ValueError(f"unknown config {', '.join(bad)} in --ext-configs (choose from {', '.join(CONFIGS)})")
    if "vxlan" in opts.ext_configs and "none" not in opts.ext_configs:
        raise ValueError("vxlan is compared with none on the ext path: add none to --ext-configs")
    fill = SHAPE.fill_lnids
    if any(pl < 1 or pl > fill for pl in opts.port_lnids):
        raise ValueError(f"--port-lnids values must be 1..{fill}")
    if any(m < fill for m in opts.sizes):
        raise ValueError(f"--sizes must be at least {fill} (entries over {fill} LNIDs)")
    web = {"ab_rps", "wrk_rps"} & set(opts.workloads)
    tools = ["sockperf", "iperf3", "ethtool"]
    tools += ["ab"] if "ab_rps" in opts.workloads else []
    tools += ["wrk"] if "wrk_rps" in opts.workloads else []
    tools += ["lighttpd"] if web else []
    for t in tools:
        if shutil.which(t) is None:
            raise ValueError(f"{t} is not installed (run `make setup`)")
