"""A macvtap host's VMs through their whole life: registered, unregistered, registered again.

With macvtap there is no switch-wide hook: each VM's filter is a pair of chains on its
own device, so an unbound macvtap must not be up (the contract of
`hostvlan.datapath.macvtap`). The agent owns that: it keeps unbound macvtaps down and
brings bound ones up. These tests check it on real frames, with the model as the oracle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hostvlan.model.ids import Lnid
from hostvlan.testbed import netns
from hostvlan.testbed.build import Testbed
from hostvlan.testbed.check import run_check

from .support import describe, reached, running, topology_from_text

TOPOLOGY = """
hosts:
  - name: hb
    backend: bridge
    vms:
      - {name: b1, mac: "52:54:00:0b:00:01", lnids: [1]}
  - name: hm
    backend: macvtap
    vms:
      - {name: m1, mac: "52:54:00:0c:00:01", lnids: [1]}
      - {name: m2, mac: "52:54:00:0c:00:02", lnids: [1, 2]}
      - {name: m3, mac: "52:54:00:0c:00:03", lnids: []}
external:
  - {name: gw, mac: "52:54:00:ff:00:01", lnids: [global]}
"""


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    topo = topology_from_text(Path(tmp_path_factory.mktemp("mv")), TOPOLOGY)
    with running(topo) as bed:
        yield bed


def _up(tb: Testbed, vm: str) -> bool:
    info = tb.vms[vm]
    with netns.iproute(tb.hosts[info.host].netns) as ipr:
        return bool(ipr.get_links(ipr.link_lookup(ifname=info.port)[0])[0]["flags"] & 1)


def test_unregistered_macvtap_vm_is_kept_down_and_isolated(tb: Testbed) -> None:
    assert not _up(tb, "m3"), "an unbound macvtap must be down (it has no filter chains)"
    rep = run_check(tb)
    assert rep.ok, describe(rep)
    assert reached(rep, "m3") == set()
    assert "m3" not in reached(rep, "m1")
    assert reached(rep, "m1") == {"b1", "m2", "gw"}


def test_unregistering_and_registering_again_closes_and_reopens_the_port(tb: Testbed) -> None:
    tb.set_lnids("m1", [])
    assert not _up(tb, "m1"), "the agent takes an unbound macvtap down"
    rep = run_check(tb)
    assert rep.ok, describe(rep)
    assert reached(rep, "m1") == set()
    assert "m1" not in reached(rep, "m2") and "m1" not in reached(rep, "b1")

    tb.set_lnids("m1", [Lnid(2)])
    assert _up(tb, "m1")
    rep = run_check(tb)
    assert rep.ok, describe(rep)
    assert reached(rep, "m1") == {"m2", "gw"}
    tb.set_lnids("m1", [Lnid(1)])
    rep = run_check(tb, kinds=("broadcast",), forged=False)
    assert rep.ok, describe(rep)
    assert reached(rep, "m1") == {"b1", "m2", "gw"}
