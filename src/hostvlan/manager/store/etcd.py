"""etcd store: the table in an etcd v3 cluster, shared by several manager replicas.

Client: etcd's own v3 JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`, served by
every etcd ≥ 3.4 on its client URLs) over httpx, the HTTP client the project already
uses. The Python gRPC clients on PyPI are either unmaintained (python-etcd3: no release
since 2020, pins old protobuf) or thin wrappers needing grpcio (tens of MB, own event
loop integration); the gateway is the same API, versioned by etcd, with no new package.

Keys, under PREFIX (default `/hostvlan/`):
  rev            written by every commit: its mod_revision is the last hostvlan revision
  meta/KEY       meta values (admin token hash, …)
  hosts/NAME     the host's token hash
  macs/MAC       the MAC's row as JSON (`rows.row_to_json`)

The revision of a commit is etcd's revision of its transaction: the same number on every
replica (agents resume on any of them). Every commit is one txn conditional on
`mod_revision(rev) == applied`, the revision this replica's calc graph reflects: it
commits only if nothing changed since the state the command was validated against;
otherwise `StoreConflict` (nothing written), `catch_up()` and the command is tried again.
A txn that fails or times out is `StoreUnavailable` (not acknowledged; if etcd did commit
it, the watch brings it in like any other replica's commit).

Reads and writes of commands are synchronous on the event loop (as SQLite's are); the
watch and the health probe are asyncio tasks (`run`). The probe is a linearizable read:
it needs a Raft majority, so a replica cut off from the majority notices within
LOST_AFTER_S, stops acknowledging writes and has its feeds closed (`lost`); agents move
to another replica.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from hostvlan.manager.store.base import Changes, StoreConflict, StoreUnavailable, TableRow
from hostvlan.manager.store.rows import row_from_json, row_to_json
from hostvlan.manager.store.sqlite import Row
from hostvlan.model.addresses import addrs_text, parse_addrs_text
from hostvlan.model.ids import HostId, Lnid, Mac, PortName

log = logging.getLogger("hostvlan.manager.etcd")

PREFIX = "/hostvlan/"
TIMEOUT_S = 3.0  # one read from etcd
TXN_TIMEOUT_S = 1.0  # one commit, plus TXN_OPS_PER_S: a commit waiting through a leader election is
TXN_OPS_PER_S = 2000  # answered 503 (and tried elsewhere) rather than stall this replica's loop
PROBE_EVERY_S = 0.25
LOST_AFTER_S = 3.0  # no linearizable read for this long (longer than a leader election): stop serving
PROBE_TIMEOUT_S = 1.0
WATCH_LAG_S = 1.0  # the probe sees a commit the watch has not brought for this long: catch up, watch again
PAGE = 10_000


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]  # http(s)://HOST:PORT
    cacert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    prefix: str = PREFIX

    @classmethod
    def parse(
        cls, url: str, cacert: Path | None = None, cert: Path | None = None, key: Path | None = None
    ) -> EtcdConfig:
        """`etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS; TLS also when a CA is given)."""
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in ("etcd", "etcds") or not rest:
            raise ValueError(f"an etcd store is etcd://HOST:PORT[,HOST:PORT...], got {url!r}")
        tls = scheme == "etcds" or cacert is not None or cert is not None
        hosts = [h.strip() for h in rest.rstrip("/").split(",") if h.strip()]
        for h in hosts:
            if not h.rpartition(":")[2].isdigit():
                raise ValueError(f"etcd endpoint {h!r} must be HOST:PORT")
        web = "https" if tls else "http"
        return cls(tuple(f"{web}://{h}" for h in hosts), cacert, cert, key)

    def tls(self) -> ssl.SSLContext | bool:
        if not self.endpoints[0].startswith("https"):
            return True
        ctx = ssl.create_default_context(cafile=str(self.cacert) if self.cacert else None)
        if self.cert:
            ctx.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        return ctx


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


def _end(prefix: str) -> str:
    """range_end of every key starting with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdTx:
    """Writes of one commit, sent as one etcd txn when the block ends (see EtcdStore.transaction)."""

    def __init__(self, store: EtcdStore) -> None:
        self._p = store.cfg.prefix
        self.ops: list[dict[str, Any]] = []
        self.revision = store.applied
        self.kept = Changes(0)  # its hosts and meta, which the store answers from once committed

    def _put(self, key: str, value: str) -> None:
        self.ops.append({"request_put": {"key": _b64(self._p + key), "value": _b64(value)}})

    def _delete(self, key: str) -> None:
        self.ops.append({"request_delete_range": {"key": _b64(self._p + key)}})

    def put_host(self, name: HostId, token_sha256: str) -> None:
        self._put("hosts/" + name, token_sha256)
        self.kept.hosts[name] = token_sha256

    def put_hosts(self, rows: list[tuple[HostId, str]]) -> None:
        for name, token in rows:
            self.put_host(name, token)

    def delete_host(self, name: HostId) -> None:
        self._delete("hosts/" + name)
        self.kept.hosts[name] = None

    def put_macs(self, rows: list[TableRow], fresh: Collection[Mac] = ()) -> None:
        for mac, host, port, lnids, addrs in rows:
            self.put_mac(mac, host, port, lnids, addrs)

    def put_mac(
        self, mac: Mac, host: HostId | None, port: PortName | None, lnids: frozenset[Lnid], addrs: str = ""
    ) -> None:
        """`addrs` as `addrs_text` ("" for none), as `Tx.put_macs` takes them."""
        self.put_row(Row(mac, host, port, lnids, parse_addrs_text(addrs)))

    def put_row(self, row: Row) -> None:
        if not row.lnids:
            self._delete("macs/" + row.mac)
        else:
            self._put("macs/" + row.mac, json.dumps(row_to_json(row), separators=(",", ":")))

    def set_meta(self, key: str, value: str) -> None:
        self._put("meta/" + key, value)
        self.kept.meta[key] = value


class EtcdStore:
    """The store interface (`store.base.Store`) on an etcd cluster."""

    resumable = True  # one revision numbering for every replica, never reused

    def __init__(self, cfg: EtcdConfig) -> None:
        self.cfg = cfg
        self._ep = 0  # endpoint in use
        verify = cfg.tls()
        self._http = httpx.Client(verify=verify, timeout=TIMEOUT_S)
        self._verify = verify
        self.applied = 0  # the last hostvlan revision this replica's service reflects
        self.available = True
        self._broken = False  # a change could not be applied: never serves again
        self._watching: asyncio.Future[None] | None = None
        self._listener: Callable[[Changes], None] | None = None
        self._lost: Callable[[], None] | None = None
        self._meta: dict[str, str] = {}
        self._hosts: dict[HostId, str] = {}
        self._loaded: list[Row] | None = None
        try:
            full = self._read_all()
        except BaseException:
            self._http.close()
            raise
        self._meta = {k: v for k, v in full.meta.items() if v is not None}
        self._hosts = {h: t for h, t in full.hosts.items() if t is not None}
        self._loaded = [r for r in full.macs.values() if r is not None]
        self.applied = full.revision

    # ----- requests ------------------------------------------------------------------------
    def _call(
        self, path: str, body: dict[str, Any], *, retry: bool = True, timeout: float = TIMEOUT_S
    ) -> dict[str, Any]:
        """POST to one endpoint; on a connection refused (nothing sent) try the next ones.

        `retry` also moves on after a timeout or an etcd error (reads: safe to repeat).
        """
        last: Exception | None = None
        for i in range(len(self.cfg.endpoints)):
            ep = (self._ep + i) % len(self.cfg.endpoints)
            try:
                resp = self._http.post(self.cfg.endpoints[ep] + path, json=body, timeout=timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = exc
                continue
            except httpx.HTTPError as exc:
                if not retry:  # the next command tries another member first
                    self._ep = (ep + 1) % len(self.cfg.endpoints)
                    raise StoreUnavailable(f"etcd at {self.cfg.endpoints[ep]}: {exc!r}") from None
                last = exc
                continue
            if resp.status_code != 200:
                err = StoreUnavailable(f"etcd at {self.cfg.endpoints[ep]} answered {resp.status_code}: {resp.text}")
                if not retry:
                    self._ep = (ep + 1) % len(self.cfg.endpoints)
                    raise err
                last = err
                continue
            self._ep = ep
            out: dict[str, Any] = resp.json()
            return out
        raise StoreUnavailable(f"no etcd endpoint answered ({last!r})")

    def _range(self, key: str, end: str | None = None, revision: int = 0) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(key)}
        if end is not None:
            body["range_end"] = _b64(end)
        if revision:
            body["revision"] = revision
        return self._call("/v3/kv/range", body)

    def _read_all(self) -> Changes:
        """Everything under the prefix, at one revision (paged)."""
        p = self.cfg.prefix
        got = self._range(p + "rev")
        header = int(got["header"]["revision"])
        kvs = got.get("kvs") or []
        out = Changes(int(kvs[0]["mod_revision"]) if kvs else 0, full=True)
        start, end = p, _end(p)
        while True:
            body = {"key": _b64(start), "range_end": _b64(end), "revision": header, "limit": PAGE}
            page = self._call("/v3/kv/range", body)
            kvs = page.get("kvs") or []
            for kv in kvs:
                self._take(out, _unb64(kv["key"]), _unb64(kv.get("value", "")), False)
            if not page.get("more") or not kvs:
                break
            start = _unb64(kvs[-1]["key"]) + "\0"
        return out

    def _take(self, ch: Changes, key: str, value: str, deleted: bool) -> None:
        name = key[len(self.cfg.prefix) :]
        kind, _, rest = name.partition("/")
        if kind == "macs":
            ch.macs[Mac(rest)] = None if deleted else row_from_json(json.loads(value))
        elif kind == "hosts":
            ch.hosts[HostId(rest)] = None if deleted else value
        elif kind == "meta":
            ch.meta[rest] = None if deleted else value

    # ----- the store interface ---------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[EtcdTx]:
        """One etcd txn, conditional on nothing having changed since `applied`."""
        if not self.available:
            raise StoreUnavailable("this replica lost its etcd cluster: it acknowledges no command")
        tx = EtcdTx(self)
        yield tx
        if not tx.ops:
            return
        rev = _b64(self.cfg.prefix + "rev")
        body = {
            "compare": [{"key": rev, "result": "EQUAL", "target": "MOD", "mod_revision": self.applied}],
            "success": [*tx.ops, {"request_put": {"key": rev, "value": ""}}],
        }
        got = self._call("/v3/kv/txn", body, retry=False, timeout=TXN_TIMEOUT_S + len(tx.ops) / TXN_OPS_PER_S)
        if not got.get("succeeded"):
            raise StoreConflict("another replica committed first")
        tx.revision = self.applied = int(got["header"]["revision"])
        self._keep(tx.kept)

    def _keep(self, ch: Changes) -> None:
        for k, v in ch.meta.items():
            if v is None:
                self._meta.pop(k, None)
            else:
                self._meta[k] = v
        for h, t in ch.hosts.items():
            if t is None:
                self._hosts.pop(h, None)
            else:
                self._hosts[h] = t

    def revision(self) -> int:
        return self.applied

    def meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def hosts(self) -> dict[HostId, str]:
        return dict(self._hosts)

    def rows(self) -> Iterator[Row]:
        if self._loaded is not None:  # the table read at start, handed over once
            loaded, self._loaded = self._loaded, None
            yield from loaded
            return
        for row in self._read_all().macs.values():
            if row is not None:
                yield row

    def table(self) -> Iterator[TableRow]:
        for r in self.rows():
            yield r.mac, r.host, r.port, r.lnids, addrs_text(r.addrs)

    def close(self) -> None:
        self._http.close()

    def follow(self, listener: Callable[[Changes], None], lost: Callable[[], None] = lambda: None) -> None:
        self._listener, self._lost = listener, lost

    # ----- other replicas' commits -------------------------------------------------------------
    def _deliver(self, ch: Changes) -> None:
        if ch.revision <= self.applied and not ch.full:
            return  # this replica's own commit, or one already caught up with
        self._keep(ch)
        if ch.full:
            self._meta = {k: v for k, v in ch.meta.items() if v is not None}
            self._hosts = {h: t for h, t in ch.hosts.items() if t is not None}
        self.applied = max(self.applied, ch.revision)
        if self._listener is not None:
            self._listener(ch)

    def _watch_body(self) -> dict[str, Any]:
        p = self.cfg.prefix
        return {"create_request": {"key": _b64(p), "range_end": _b64(_end(p)), "start_revision": self.applied + 1}}

    def _line(self, line: str) -> bool:
        """Take one watch response; False when the watch cannot go on (compacted, canceled)."""
        if not line.strip():
            return True
        result = json.loads(line).get("result")
        if result is None:
            return False
        if result.get("compact_revision") and int(result["compact_revision"]) > self.applied + 1:
            log.warning("etcd compacted past r%d: reading the whole table again", self.applied)
            self._deliver(self._read_all())
            return False
        if result.get("canceled"):
            return False
        group: Changes | None = None
        for ev in result.get("events") or []:
            kv = ev["kv"]
            rev = int(kv["mod_revision"])
            if group is not None and group.revision != rev:
                self._deliver(group)
                group = None
            if group is None:
                group = Changes(rev)
            self._take(group, _unb64(kv["key"]), _unb64(kv.get("value", "")), ev.get("type") == "DELETE")
        if group is not None:
            self._deliver(group)
        return True

    def _last_revision(self) -> int:
        kvs = self._range(self.cfg.prefix + "rev").get("kvs") or []
        return int(kvs[0]["mod_revision"]) if kvs else 0

    def catch_up(self) -> bool:
        """Bring every commit up to etcd's latest in now (synchronously); True if there were any."""
        if not self.available:
            raise StoreUnavailable("this replica lost its etcd cluster: it acknowledges no command")
        return self._catch_up()

    def _catch_up(self) -> bool:
        target = self._last_revision()
        if target <= self.applied:
            return False
        ep = self.cfg.endpoints[self._ep]
        try:
            with self._http.stream("POST", ep + "/v3/watch", json=self._watch_body()) as resp:
                for line in resp.iter_lines():
                    if not self._line(line) or self.applied >= target:
                        break
        except httpx.HTTPError as exc:
            raise StoreUnavailable(f"etcd at {ep}: {exc!r}") from None
        return True

    async def run(self) -> None:
        """Follow the watch and probe the cluster until cancelled."""
        async with httpx.AsyncClient(verify=self._verify, timeout=httpx.Timeout(TIMEOUT_S, read=None)) as client:
            probe = asyncio.ensure_future(self._probe(client))
            watching: asyncio.Future[None] | None = None
            try:
                while not probe.done():  # a watch the probe found stuck is cancelled: watch again
                    watching = self._watching = asyncio.ensure_future(self._watch(client))
                    await asyncio.wait({probe, watching}, return_when=asyncio.FIRST_COMPLETED)
                    if watching.done() and not watching.cancelled():
                        break  # broken: serves nothing any more
                await asyncio.wait({probe})
            finally:
                probe.cancel()
                if watching is not None:
                    watching.cancel()

    async def _watch(self, client: httpx.AsyncClient) -> None:
        i = 0
        while True:
            ep = self.cfg.endpoints[i % len(self.cfg.endpoints)]
            try:
                async with client.stream("POST", ep + "/v3/watch", json=self._watch_body()) as resp:
                    if resp.status_code == 200:
                        async for line in resp.aiter_lines():
                            if not self._line(line):
                                break
            except httpx.HTTPError as exc:
                log.debug("watch on %s ended: %r", ep, exc)
            except StoreUnavailable as exc:
                log.warning("%s", exc)
            except Exception:  # a change this replica could not take: its table is unknown now
                self._break()
                return
            i += 1
            await asyncio.sleep(0.1)

    def _break(self) -> None:
        log.exception("cannot apply etcd's changes after r%d: serving nothing, restart it", self.applied)
        self.available = False
        self._broken = True
        if self._lost is not None:
            self._lost()

    async def _probe(self, client: httpx.AsyncClient) -> None:
        try:
            await self._probing(client)
        except Exception:
            self._break()

    async def _probing(self, client: httpx.AsyncClient) -> None:
        """A linearizable read every PROBE_EVERY_S; none for LOST_AFTER_S: lost (feeds closed)."""
        ok_at = time.monotonic()
        behind_at: float | None = None
        i = 0
        body = {"key": _b64(self.cfg.prefix + "rev")}
        while True:
            ep = self.cfg.endpoints[i % len(self.cfg.endpoints)]
            try:
                resp = await client.post(ep + "/v3/kv/range", json=body, timeout=PROBE_TIMEOUT_S)
                good = resp.status_code == 200
            except httpx.HTTPError:
                good = False
            now = time.monotonic()
            if self._broken:
                return
            if good and not self.available:
                try:
                    self._catch_up()  # never serve a view older than what agents may have seen
                except StoreUnavailable:
                    good = False
                else:
                    log.warning("etcd reachable again: serving")
                    self.available = True
            elif good:
                kvs = resp.json().get("kvs") or []
                last = int(kvs[0]["mod_revision"]) if kvs else 0
                behind_at = (behind_at or now) if last > self.applied else None
                if behind_at is not None and now - behind_at > WATCH_LAG_S:
                    log.warning("the watch brought nothing up to r%d for %.1f s: catching up", last, now - behind_at)
                    behind_at = None
                    try:
                        self._catch_up()
                    except StoreUnavailable:
                        good = False
                    if self._watching is not None:
                        self._watching.cancel()
            if good:
                ok_at = now
            else:
                i += 1  # try another member next time
                if self.available and now - ok_at > LOST_AFTER_S:
                    log.error("etcd unreachable for %.1f s: acknowledging no command, feeds closed", now - ok_at)
                    self.available = False
                    if self._lost is not None:
                        self._lost()
            await asyncio.sleep(PROBE_EVERY_S if good else 0.05)


__all__ = ["EtcdConfig", "EtcdStore", "EtcdTx"]
