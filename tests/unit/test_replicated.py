"""Pieces of the replicated control plane that need no etcd: the `control:` topology key,
`--store etcd://…` parsing, and the feed's per-host history agents resume from."""

from __future__ import annotations

import json

import pytest

from hostvlan.manager.feed import HISTORY, Feed
from hostvlan.manager.store.etcd import EtcdConfig
from hostvlan.model.ids import HostId
from hostvlan.testbed.topology import Control, TopologyError, parse_topology

TOPO = "hosts:\n  - name: h1\n    vms: []\n"


def test_control_key_is_parsed_and_kept() -> None:
    t = parse_topology(TOPO + "control: {managers: 3, store: etcd}\n")
    assert t.control == Control(3, "etcd")
    assert parse_topology(json.dumps(t.to_dict())).control == Control(3, "etcd")
    assert parse_topology(TOPO).control is None and "control" not in parse_topology(TOPO).to_dict()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("control: {managers: 0}", "control.managers must be an integer 1..16"),
        ("control: {managers: 2, store: zk}", "unknown store 'zk'"),
        ("control: {store: etcd}", "managers"),
    ],
)
def test_control_key_errors_name_the_field(text: str, error: str) -> None:
    with pytest.raises(TopologyError, match=error):
        parse_topology(TOPO + text + "\n")


def test_store_urls() -> None:
    cfg = EtcdConfig.parse("etcd://10.0.0.1:2379,10.0.0.2:2379")
    assert cfg.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert EtcdConfig.parse("etcds://e0:2379").endpoints == ("https://e0:2379",)
    for bad in ("etcd://", "http://e0:2379", "etcd://e0"):
        with pytest.raises(ValueError, match="etcd"):
            EtcdConfig.parse(bad)


def test_feed_history_resumes_only_what_it_holds_in_full() -> None:
    feed = Feed()
    h = HostId("h1")
    feed.floor, feed.keep = 10, HISTORY
    assert feed.since(h, 10, 10) == [b'{"type":"heartbeat","revision":10}\n']  # nothing since: a heartbeat
    assert feed.since(h, 9, 10) is None  # from before the replica's start: a snapshot
    assert feed.since(h, 11, 10) is None  # ahead of this replica: a snapshot
    st = feed._st(h)
    for r in range(11, 11 + HISTORY + 5):
        st.history.append((r, [b"line%d\n" % r]))
        if len(st.history) > HISTORY:
            st.floor = st.history.popleft()[0]
    last = 10 + HISTORY + 5
    assert feed.since(h, last - 2, last) == [b"line%d\n" % (last - 1), b"line%d\n" % last]
    assert feed.since(h, 12, last) is None  # dropped from the history
    feed.keep = 0
    assert feed.since(h, last, last) is None  # not resumable (SQLite): always a snapshot
