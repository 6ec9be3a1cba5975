"""The testbed's metrics listeners (docs/observability.md): where the manager and each agent
serve Prometheus metrics, and the targets a Prometheus scrapes them at.

    manager  127.0.0.1:<free port>  (root namespace: `manager.metrics_url`)
             10.201.0.1:9465        (inside the management namespace: `manager.metrics_netns_url`)
    agent    10.201.0.<i+2>:9464    (inside its host's namespace, on its management address:
                                     reachable from the management namespace, `hosts.H.metrics`)

A Prometheus that scrapes them all runs inside the management namespace (`scrape_targets`).
"""

from __future__ import annotations

from typing import Any

from hostvlan.testbed.control import MGMT_NET
from hostvlan.testbed.plan import HostInfo

AGENT_PORT = 9464
MANAGER_PORT = 9465


def manager_args(mgmt_ns: str) -> list[str]:
    return ["--metrics-listen", "127.0.0.1:0", "--metrics-listen", f"{mgmt_ns}/{MGMT_NET}.1:{MANAGER_PORT}"]


def manager_urls(ready: dict[str, Any]) -> dict[str, str]:
    """From the manager's ready file: the root namespace's metrics URL and the management one's."""
    out = {}
    for m in ready.get("metrics", []):
        out["metrics_netns_url" if m.get("netns") else "metrics_url"] = str(m["url"])
    return out


def _address(hosts: dict[str, HostInfo], name: str) -> str:
    return f"{MGMT_NET}.{list(hosts).index(name) + 2}"


def agent_args(hosts: dict[str, HostInfo], name: str) -> list[str]:
    return ["--metrics-listen", f"{_address(hosts, name)}:{AGENT_PORT}"]


def host_metrics(hosts: dict[str, HostInfo], name: str) -> dict[str, Any]:
    """`hosts.H.metrics` of the testbed JSON: the netns the URL is reachable from, and the URL."""
    h = hosts[name]
    if not h.filtered:
        return {}
    return {"metrics": {"netns": h.netns, "url": f"http://{_address(hosts, name)}:{AGENT_PORT}/metrics"}}


def scrape_targets(record: dict[str, Any]) -> dict[str, list[str]]:
    """job -> host:port targets, all reachable from the management namespace."""
    agents = [h["metrics"]["url"] for h in record["hosts"].values() if h.get("metrics")]
    manager = record["manager"].get("metrics_netns_url")
    strip = [u.removeprefix("http://").removesuffix("/metrics") for u in agents]
    return {
        "hostvlan-agent": strip,
        "hostvlan-manager": [manager.removeprefix("http://").removesuffix("/metrics")] if manager else [],
    }
