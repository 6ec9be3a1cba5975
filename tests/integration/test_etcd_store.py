"""The etcd store (`manager/store/etcd.py`) under several services at once, on a real
three-member etcd cluster on loopback (no root, no namespaces).

Each service is one manager replica's use cases: commands commit as one conditional
txn (two replicas registering one MAC on two hosts: exactly one wins), the others take
them from the watch into their calc graphs (same table, same revision, same feed lines),
an agent resumes on another replica from its revision without a snapshot, a restart
loads what was committed, a compaction past a replica's revision makes it read again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import Iterator

import pytest

from hostvlan.manager.service import ModelError, Service
from hostvlan.manager.store.etcd import EtcdConfig, EtcdStore
from hostvlan.manager.store.rows import row_from_json, row_to_json
from hostvlan.manager.store.sqlite import Row
from hostvlan.model.ids import HostId, Lnid, Mac, PortName
from hostvlan.testbed.etcd import Cluster

H1, H2 = HostId("EHS1"), HostId("EHS2")
A, B, C = (Mac(f"52:54:00:40:00:0{i}") for i in range(1, 4))
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("etcd"), 3, prefix="hvt")
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def replicas(cluster: Cluster) -> Iterator[list[Service]]:
    """Two replicas on a fresh key prefix of the cluster (`more()` makes another)."""
    cfg = dataclasses.replace(EtcdConfig.parse(cluster.store_url), prefix=f"/hvt{next(_prefixes)}/")
    made: list[Service] = []

    def more() -> Service:
        s = Service(EtcdStore(cfg))
        made.append(s)
        return s

    more(), more()
    yield made
    for s in made:
        s.store.close()


def table(s: Service) -> list[dict[str, object]]:
    return [{k: v for k, v in r.items() if k not in ("state", "bound_port")} for r in s.show()]


def test_rows_round_trip() -> None:
    row = Row(A, H1, PortName("vnet0"), frozenset({Lnid(0), Lnid(7)}))
    assert row_from_json(json.loads(json.dumps(row_to_json(row)))) == row
    assert row_from_json(row_to_json(Row(B, None, None, frozenset({Lnid(3)})))) == Row(B, None, None, frozenset({3}))


def test_one_of_two_conflicting_commands_wins(replicas: list[Service]) -> None:
    a, b = replicas
    a.add_hosts([H1, H2])
    won = a.reg(5, A, H1)
    # b has not seen a's commits: its commit finds the revision moved, it catches up and
    # validates again, and then it is the usual clear refusal
    with pytest.raises(ModelError, match="already registered on host EHS1"):
        b.reg(6, A, H2)
    assert b.revision == won.revision
    assert table(a) == table(b)
    # a command validated on the latest state commits at the next revision, on either
    r = b.move(A, H2)
    a.store.catch_up()
    assert a.revision == r.revision > won.revision
    assert table(a) == table(b)
    assert a.show(mac=A)[0]["host"] == H2


def test_watch_keeps_every_replica_current(replicas: list[Service]) -> None:
    a, b = replicas

    async def scenario() -> None:
        task = asyncio.ensure_future(b.store.run())  # type: ignore[attr-defined]
        try:
            a.add_hosts([H1, H2])
            a.reg(5, A, H1, "vnet0")
            a.reg(5, B, H2)
            a.batch([{"op": "reg", "lnid": 9, "mac": C, "host": H2}, {"op": "unreg", "lnid": 5, "mac": B}])
            await b.wait_revision(a.revision, 5.0)
            assert table(a) == table(b)
            # the same delta lines at the same revisions: an agent resumes on b from a's
            for h in (H1, H2):
                assert a.feed.since(h, 0, a.revision) == b.feed.since(h, 0, b.revision)
            a.rm(A)
            a.remove_host(H1)
            await b.wait_revision(a.revision, 5.0)
            assert table(a) == table(b) and b.dc.hosts == {H2}
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_agent_resumes_on_another_replica_without_snapshot(replicas: list[Service]) -> None:
    a, b = replicas

    async def scenario() -> None:
        task = asyncio.ensure_future(b.store.run())  # type: ignore[attr-defined]
        try:
            a.add_hosts([H1, H2])
            a.reg(5, A, H1)
            seen = a.revision  # the agent of H2 enforces this when a dies
            a.reg(5, B, H2)
            a.reg(5, C, H1)
            await b.wait_revision(a.revision, 5.0)
            sub = b.open_feed(H2, since=seen)
            lines = [json.loads(x) for x in sub.snapshot().splitlines()]
            assert [x["type"] for x in lines] == ["delta", "delta"]
            assert [x["revision"] for x in lines] == [seen + 1, seen + 2]
            sub.close()
            # a replica started since holds no deltas from before its start: a snapshot
            c = Service(EtcdStore(a.store.cfg))  # type: ignore[attr-defined]
            first = json.loads(c.open_feed(H2, since=seen).snapshot())
            assert first["type"] == "snapshot" and first["revision"] == a.revision
            c.store.close()
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_restart_and_compaction(replicas: list[Service], cluster: Cluster) -> None:
    a, b = replicas
    a.add_hosts([H1])
    for i in range(5):
        a.reg(5 + i, A, H1)
    a.rm(A)
    a.reg(3, B, H1)
    fresh = Service(EtcdStore(a.store.cfg))  # type: ignore[attr-defined]
    assert table(fresh) == table(a) and fresh.revision == a.revision
    fresh.store.close()
    # etcd compacts past b's revision: b reads the table again (A gone, B there)
    import httpx

    httpx.post(cluster.members[0].client_url + "/v3/kv/compaction", json={"revision": a.revision}).raise_for_status()
    b.store.catch_up()
    assert table(b) == table(a) and b.revision == a.revision
    assert b.dc.hosts == {H1}


def test_a_stuck_watch_is_noticed_and_caught_up(replicas: list[Service]) -> None:
    """A watch stream that hangs (a half-open connection) brings nothing: the probe sees etcd
    ahead of the replica, catches up and watches again, within about WATCH_LAG_S."""
    a, b = replicas

    async def stuck(client: object) -> None:
        await asyncio.sleep(3600)

    async def scenario() -> None:
        b.store._watch = stuck  # type: ignore[attr-defined, method-assign]
        task = asyncio.ensure_future(b.store.run())  # type: ignore[attr-defined]
        try:
            a.add_hosts([H1])
            a.reg(5, A, H1)
            await b.wait_revision(a.revision, 4.0)
            assert table(a) == table(b)
        finally:
            task.cancel()

    asyncio.run(scenario())


def _openssl(*args: str) -> None:
    import subprocess

    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_tls_to_etcd_with_a_client_certificate(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`--store etcds://…` with `--etcd-cacert/--etcd-cert/--etcd-key` against a member that
    requires client certificates (`--client-cert-auth`)."""
    import subprocess
    import time

    from hostvlan.testbed.etcd import free_ports

    d = tmp_path_factory.mktemp("etcd-tls")
    ca, ca_key = d / "ca.pem", d / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "1", "-subj", "/CN=test-ca")  # fmt: skip
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"),
                 "-out", str(d / f"{name}.csr"), "-subj", f"/CN={name}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
                 "-CAcreateserial", "-out", str(d / f"{name}.pem"), "-days", "1", "-extfile", str(ext))  # fmt: skip
    client_port, peer_port = free_ports(2)
    url = f"https://127.0.0.1:{client_port}"
    argv = ["/usr/bin/etcd", "--name", "t0", "--data-dir", str(d / "data"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"t0=http://127.0.0.1:{peer_port}",
            "--cert-file", str(d / "server.pem"), "--key-file", str(d / "server.key"),
            "--client-cert-auth", "--trusted-ca-file", str(ca), "--log-level", "error", "--logger", "zap"]  # fmt: skip
    with (d / "etcd.log").open("wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    try:
        cfg = EtcdConfig.parse(f"etcds://127.0.0.1:{client_port}", ca, d / "client.pem", d / "client.key")
        end = time.monotonic() + 15
        while True:
            try:
                store = EtcdStore(cfg)
                break
            except Exception:
                if time.monotonic() > end or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        s = Service(store)
        s.add_hosts([H1])
        assert s.reg(5, A, H1).changed
        other = Service(EtcdStore(cfg))
        assert table(other) == table(s)
        other.store.close()
        # without the client certificate: refused (no store)
        from hostvlan.manager.store.base import StoreUnavailable

        with pytest.raises(StoreUnavailable):
            EtcdStore(EtcdConfig.parse(f"etcds://127.0.0.1:{client_port}", ca))
        store.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_addresses_reach_every_replica(replicas: list[Service]) -> None:
    """Addresses (issue 13) travel in the rows: another replica's table, host views and
    feed lines carry them, and an address conflict is refused on either replica."""
    a, b = replicas

    async def scenario() -> None:
        task = asyncio.ensure_future(b.store.run())  # type: ignore[attr-defined]
        try:
            a.add_hosts([H1, H2])
            a.reg(5, A, H1, "vnet0", ips=["10.5.0.1", "fd05::1"])
            a.reg(5, B, H2)
            await b.wait_revision(a.revision, 5.0)
            start = a.revision  # (b may have read the whole table: the cluster is compacted)
            a.addr_add(B, "10.5.0.2")
            await b.wait_revision(a.revision, 5.0)
            assert table(a) == table(b)
            assert str(b.dc.addrs(A).nets) == str(a.dc.addrs(A).nets) and b.dc.addrs(A).guarded
            assert b.dc.view(H2).addresses == a.dc.view(H2).addresses
            assert set(b.dc.view(H2).addresses) == {A, B}
            for h in (H1, H2):  # the address change: the same delta lines on both
                assert a.feed.since(h, start, a.revision) == b.feed.since(h, start, b.revision)
            assert b"10.5.0.2" in b"".join(b.feed.since(H2, start, b.revision) or [])
            with pytest.raises(ModelError, match=r"10\.5\.0\.1"):  # held by A, validated on b's copy
                b.addr_add(B, "10.5.0.1")
            a.addr_del(A, "fd05::1")
            await b.wait_revision(a.revision, 5.0)
            assert b.dc.addr_text(A) == a.dc.addr_text(A) == "10.5.0.1"
        finally:
            task.cancel()

    asyncio.run(scenario())


def test_rows_round_trip_with_addresses() -> None:
    from hostvlan.model.addresses import parse_addrs_text

    row = Row(A, H1, None, frozenset({Lnid(2)}), parse_addrs_text("10.0.0.1 ~10.0.0.100 fd00::1 +router"))
    assert row_from_json(json.loads(json.dumps(row_to_json(row)))) == row
    assert "addrs" not in row_to_json(Row(B, None, None, frozenset({Lnid(3)})))
