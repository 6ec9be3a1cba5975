"""The topology parser's `fill:` block, including `port_lnids` (idle ports in several LNIDs)."""

from __future__ import annotations

import pytest
import yaml

from hostvlan.testbed.topology import Fill, TopologyError, parse_topology


def _topo(fill: str) -> str:
    return f"hosts:\n  - name: h1\n    backend: bridge\n    fill: {fill}\n"


def test_fill_defaults_to_one_lnid_per_port() -> None:
    topo = parse_topology(_topo("{macs: 8192, lnids: 128, ports: 126}"))
    assert topo.hosts[0].fill == Fill(8192, 128, 126, 1)
    assert topo.to_dict()["hosts"][0]["fill"] == {"macs": 8192, "lnids": 128, "ports": 126}


def test_port_lnids_parsed_and_round_trips() -> None:
    topo = parse_topology(_topo("{macs: 8192, lnids: 128, ports: 126, port_lnids: 16}"))
    assert topo.hosts[0].fill == Fill(8192, 128, 126, 16)
    again = parse_topology(yaml.safe_dump(topo.to_dict()))
    assert again.hosts[0].fill == Fill(8192, 128, 126, 16)


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        ("{macs: 10, lnids: 8, port_lnids: 0}", "fill.port_lnids must be an integer 1..8, got '0'"),
        ("{macs: 10, lnids: 8, port_lnids: 9}", "fill.port_lnids must be an integer 1..8, got '9'"),
        ("{macs: 10, lnids: 8, port_lnids: two}", "fill.port_lnids must be an integer 1..8"),
        ("{macs: 10, lnids: 8, lnids_per_port: 2}", "unknown key 'lnids_per_port' in host h1: fill"),
    ],
)
def test_port_lnids_errors_name_the_line(fill: str, message: str) -> None:
    with pytest.raises(TopologyError) as exc:
        parse_topology(_topo(fill), "t.yaml")
    assert str(exc.value).startswith("t.yaml:4: ")
    assert message in str(exc.value)
