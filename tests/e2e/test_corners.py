"""The model's corners on real frames, each judged by the model (`run_check`) AND by an
explicit, hand-written broadcast matrix.

Two testbeds: `corners` (all hosts `bridge`: multi-LNID VMs, a `global` VM, external
endpoints, unregistered VMs, LNIDs far above 2^32) and `baseline` (a host with backend
`none`, a plain unfiltered bridge, mixed with `bridge` hosts).

Reminder of what the model says about endpoints on the physical switch: the filter runs
at hosts only, so an external endpoint sees every frame that leaves a host's uplink (any
registered source), whatever its own LNIDs; frames from an external endpoint are
filtered at the receiving host like any remote source.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from hostvlan.model.ids import GLOBAL, Lnid
from hostvlan.testbed.check import run_check

from .support import assert_model_agrees, describe, reached, running, topology_from_text

if TYPE_CHECKING:
    from hostvlan.testbed.build import Testbed

pytestmark = pytest.mark.root

BIG = 2**40
ALIAS = 2**32 + 1  # equals LNID 1 if anything truncated LNIDs to 32 bits
MAX = 2**63 - 1

CORNERS = f"""
hosts:
  - name: ha
    backend: bridge
    vms:
      - {{name: a-multi, mac: "52:54:00:0a:00:01", lnids: [1, 2]}}
      - {{name: a-one,   mac: "52:54:00:0a:00:02", lnids: [1]}}
      - {{name: a-glob,  mac: "52:54:00:0a:00:03", lnids: [global]}}
      - {{name: a-unreg, mac: "52:54:00:0a:00:04", lnids: []}}
  - name: hb
    backend: bridge
    vms:
      - {{name: b-two,   mac: "52:54:00:0b:00:01", lnids: [2]}}
      - {{name: b-big,   mac: "52:54:00:0b:00:02", lnids: [{BIG}]}}
      - {{name: b-alias, mac: "52:54:00:0b:00:03", lnids: [{ALIAS}]}}
      - {{name: b-max,   mac: "52:54:00:0b:00:04", lnids: [{MAX}]}}
      - {{name: b-unreg, mac: "52:54:00:0b:00:05"}}
  - name: hc
    backend: bridge
    vms:
      - {{name: c-big3,  mac: "52:54:00:0c:00:01", lnids: [{BIG}, 3]}}
      - {{name: c-max,   mac: "52:54:00:0c:00:02", lnids: [{MAX}]}}
      - {{name: c-three, mac: "52:54:00:0c:00:03", lnids: [3]}}
external:
  - {{name: gw,      mac: "52:54:00:ff:00:01", lnids: [global]}}
  - {{name: ext-one, mac: "52:54:00:ff:00:02", lnids: [1]}}
  - {{name: client,  mac: "52:54:00:ff:00:03", lnids: []}}
"""

EXT = {"gw", "ext-one", "client"}
REGISTERED_VMS = {"a-multi", "a-one", "a-glob", "b-two", "b-big", "b-alias", "b-max", "c-big3", "c-max", "c-three"}

# Who receives whose broadcast, written out by hand from SPEC §2-§3.
CORNERS_REACH: dict[str, set[str]] = {
    "a-multi": {"a-one", "b-two", "a-glob"} | EXT,  # LNID 1 and LNID 2, the global VM
    "a-one": {"a-multi", "a-glob"} | EXT,  # not b-alias (2^32+1 is not 1)
    "a-glob": (REGISTERED_VMS - {"a-glob"}) | EXT,  # global reaches every registered VM
    "a-unreg": set(),  # unregistered: cannot send
    "b-two": {"a-multi", "a-glob"} | EXT,
    "b-big": {"c-big3", "a-glob"} | EXT,
    "b-alias": {"a-glob"} | EXT,
    "b-max": {"c-max", "a-glob"} | EXT,
    "b-unreg": set(),
    "c-big3": {"b-big", "c-three", "a-glob"} | EXT,
    "c-max": {"b-max", "a-glob"} | EXT,
    "c-three": {"c-big3", "a-glob"} | EXT,
    "gw": REGISTERED_VMS | {"ext-one", "client"},  # global external: every registered VM
    "ext-one": {"a-multi", "a-one", "a-glob", "gw", "client"},  # LNID 1 VMs and the global VM
    "client": {"gw", "ext-one"},  # unregistered external: only the physical switch
}

BASELINE = """
hosts:
  - name: hn
    backend: none
    vms:
      - {name: n-one,   mac: "52:54:00:1a:00:01", lnids: [1]}
      - {name: n-two,   mac: "52:54:00:1a:00:02", lnids: [2]}
      - {name: n-unreg, mac: "52:54:00:1a:00:03", lnids: []}
  - name: hb
    backend: bridge
    vms:
      - {name: b-one,   mac: "52:54:00:1b:00:01", lnids: [1]}
      - {name: b-two,   mac: "52:54:00:1b:00:02", lnids: [2]}
      - {name: b-three, mac: "52:54:00:1b:00:03", lnids: [3]}
  - name: hc
    backend: bridge
    vms:
      - {name: c-one,   mac: "52:54:00:1c:00:01", lnids: [1]}
      - {name: c-unreg, mac: "52:54:00:1c:00:02", lnids: []}
external:
  - {name: gw,      mac: "52:54:00:ff:01:01", lnids: [global]}
  - {name: x-three, mac: "52:54:00:ff:01:02", lnids: [3]}
"""

NONE_VMS = {"n-one", "n-two", "n-unreg"}
BASE_EXT = {"gw", "x-three"}

# `none` = plain bridge (the unfiltered baseline): its VMs receive everything that reaches
# the host, cross-LNID frames included, and send unchecked; `bridge` hosts still filter
# what comes from them by source MAC.
BASELINE_REACH: dict[str, set[str]] = {
    "n-one": {"n-two", "n-unreg", "b-one", "c-one"} | BASE_EXT,
    "n-two": {"n-one", "n-unreg", "b-two"} | BASE_EXT,
    "n-unreg": {"n-one", "n-two"} | BASE_EXT,  # unknown at every filtering host
    "b-one": NONE_VMS | {"c-one"} | BASE_EXT,
    "b-two": NONE_VMS | BASE_EXT,  # LNID 2 reaches n-one (LNID 1) and n-unreg: unfiltered
    "b-three": NONE_VMS | BASE_EXT,
    "c-one": NONE_VMS | {"b-one"} | BASE_EXT,
    "c-unreg": set(),
    "gw": NONE_VMS | {"b-one", "b-two", "b-three", "c-one", "x-three"},
    "x-three": NONE_VMS | {"b-three", "gw"},
}


def _matrix_of(rep_matrix: dict[str, dict[str, bool]]) -> dict[str, set[str]]:
    return {s: {r for r, got in row.items() if got} for s, row in rep_matrix.items()}


@pytest.fixture(scope="module")
def corners(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    topo = topology_from_text(tmp_path_factory.mktemp("corners"), CORNERS)
    assert topo.endpoints()[0].lnids == frozenset({Lnid(1), Lnid(2)})
    assert {e.name: e.lnids for e in topo.endpoints()}["b-max"] == frozenset({Lnid(MAX)})
    with running(topo) as tb:
        yield tb


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    topo = topology_from_text(tmp_path_factory.mktemp("baseline"), BASELINE)
    with running(topo) as tb:
        assert tb.hosts["hn"].backend == "none"
        assert tb.states()["hn"] is None  # unfiltered by design
        yield tb


# ----- corners (all `bridge`) ---------------------------------------------------------------
def test_corners_every_kind_agrees_with_the_model_and_the_hand_written_matrix(corners: Testbed) -> None:
    rep = run_check(corners)
    assert_model_agrees(rep)
    assert _matrix_of(rep.matrix) == CORNERS_REACH, describe(rep)


def test_global_vm_reaches_and_is_reached_by_every_registered_endpoint(corners: Testbed) -> None:
    rep = run_check(corners, kinds=("broadcast", "unicast"), forged=False)
    assert_model_agrees(rep)
    m = _matrix_of(rep.matrix)
    registered = REGISTERED_VMS | {"gw", "ext-one"}
    assert m["a-glob"] >= registered - {"a-glob"}
    assert {s for s, got in m.items() if "a-glob" in got} == registered - {"a-glob"}
    assert "a-glob" not in m["client"] and "a-glob" not in m["a-unreg"] | m["b-unreg"]


def test_unregistered_vms_neither_send_nor_receive(corners: Testbed) -> None:
    rep = run_check(corners, kinds=("broadcast", "multicast", "tagged", "unicast"), forged=False)
    assert_model_agrees(rep)
    m = _matrix_of(rep.matrix)
    for vm in ("a-unreg", "b-unreg"):
        assert m[vm] == set(), f"{vm} reached {m[vm]}"
        assert not [s for s, got in m.items() if vm in got], f"{vm} received a broadcast"


def test_big_lnids_isolate_exactly(corners: Testbed) -> None:
    rep = run_check(corners, kinds=("broadcast",), forged=False, senders=["b-big", "b-alias", "b-max", "a-one"])
    assert_model_agrees(rep)
    assert reached(rep, "b-big") - EXT - {"a-glob"} == {"c-big3"}  # 2^40
    assert reached(rep, "b-max") - EXT - {"a-glob"} == {"c-max"}  # 2^63-1
    assert reached(rep, "b-alias") - EXT - {"a-glob"} == set()  # 2^32+1 does not alias 1
    assert "b-alias" not in reached(rep, "a-one")


def test_registering_and_unregistering_a_running_vm(corners: Testbed) -> None:
    try:
        corners.set_lnids("a-unreg", [Lnid(MAX)])
        rep = run_check(corners, kinds=("broadcast",), forged=False, senders=["a-unreg", "c-max"])
        assert_model_agrees(rep)
        assert reached(rep, "a-unreg") == {"b-max", "c-max", "a-glob"} | EXT, describe(rep)
        assert "a-unreg" in reached(rep, "c-max")

        corners.set_lnids("a-unreg", [])
        rep = run_check(corners, kinds=("broadcast",), forged=False, senders=["a-unreg", "c-max", "gw"])
        assert_model_agrees(rep)
        assert reached(rep, "a-unreg") == set()
        assert "a-unreg" not in reached(rep, "c-max") | reached(rep, "gw")
    finally:
        corners.set_lnids("a-unreg", [])


def test_external_endpoint_lnids_change_at_run_time(corners: Testbed) -> None:
    try:
        corners.set_lnids("client", [Lnid(3)])
        rep = run_check(corners, kinds=("broadcast",), forged=False, senders=["client", "c-three"])
        assert_model_agrees(rep)
        assert reached(rep, "client") == {"c-big3", "c-three", "a-glob", "gw", "ext-one"}, describe(rep)
        corners.set_lnids("client", [GLOBAL])
        rep = run_check(corners, kinds=("broadcast",), forged=False, senders=["client"])
        assert_model_agrees(rep)
        assert reached(rep, "client") == REGISTERED_VMS | {"gw", "ext-one"}, describe(rep)
    finally:
        corners.set_lnids("client", [])
    rep = run_check(corners, kinds=("broadcast",), forged=False, senders=["client"])
    assert reached(rep, "client") == {"gw", "ext-one"}, describe(rep)


# ----- baseline: a `none` host among `bridge` hosts ------------------------------------------
def test_baseline_every_kind_agrees_with_the_model_and_the_hand_written_matrix(baseline: Testbed) -> None:
    rep = run_check(baseline)
    assert_model_agrees(rep)
    assert _matrix_of(rep.matrix) == BASELINE_REACH, describe(rep)


def test_none_host_vms_receive_cross_lnid_frames(baseline: Testbed) -> None:
    rep = run_check(baseline, kinds=("broadcast", "tagged", "unicast"), forged=False, senders=["b-two", "b-three"])
    assert_model_agrees(rep)
    # unfiltered by design: LNID 2 and LNID 3 frames reach the LNID 1 VM and the unregistered VM
    assert {"n-one", "n-unreg"} <= reached(rep, "b-two")
    assert {"n-one", "n-two", "n-unreg"} <= reached(rep, "b-three")
    # while the filtering hosts keep them apart
    assert not {"b-one", "c-one"} & (reached(rep, "b-two") | reached(rep, "b-three"))
