"""Use cases of the management server: validate, make durable, update the model, notify.

Order of every state-changing command: parse and validate the input (nothing changes
on bad input) → apply it to the in-memory calc graph (which validates the invariants and
yields per-host deltas) → write the MAC's new row in ONE SQLite transaction (durable
before the answer) → publish the deltas. If the write fails, the calc graph is restored.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from hostvlan.manager import trace as tracing
from hostvlan.manager.audit import Audit, batch_args
from hostvlan.manager.feed import HISTORY, Encoder, Feed, Line, Subscription
from hostvlan.manager.inputs import InputError, addrs_arg, check_required, flag, parse_field
from hostvlan.manager.metrics import ManagerMetrics
from hostvlan.manager.store.base import Changes, Store, StoreConflict, StoreUnavailable
from hostvlan.model.addresses import addrs_text, parse_net, text_json
from hostvlan.model.datacenter import DataCenter, ModelError
from hostvlan.model.ids import HostId, Mac, PortName, parse_host, parse_lnid, parse_mac, parse_port
from hostvlan.wire import Status, WireError, decode_status, lnids_json

T = TypeVar("T")
log = logging.getLogger("hostvlan.manager")

CONFLICT_RETRIES = 50  # a command validated again after another replica's commit, at most this often
MIN_REVISION_WAIT_S = 5.0  # a read waits this long for the revision it asks for


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Result:
    revision: int
    changed: bool

    def json(self) -> dict[str, Any]:
        return {"revision": self.revision, "changed": self.changed}


class Service:
    """The manager's use cases. Single-threaded: every method runs on the event loop.

    SQLite commits stay on the loop thread on purpose. Measured on the project's test
    machine (ext4 on a virtio disk, WAL, synchronous=FULL, fsync included): one `reg`'s
    transaction takes 0.3 ms median on a quiet disk, 3.3 ms (p90 6.9 ms) while other
    test suites load it; a batch of 16,384 `reg`s takes 1.2 s, of which 0.4 s is the
    transaction and 0.8 s the calc graph, which must run on the loop anyway. Off the
    loop, a commit would shorten no command (its deltas are published only once it is
    durable, and commands are serialised by the API's lock); it would only let other
    hosts' status reports, feeds and reads proceed during the fsync, at the price of a
    window in which they see a change not yet durable (the calc graph is updated before
    the commit, and undone if it fails), which a snapshot would carry to an agent with
    no delta to take it back. Not worth it at these figures; revisit on a disk whose
    flush costs tens of milliseconds (docs/control-plane.md, "Durability").
    """

    def __init__(
        self, store: Store, feed: Feed | None = None, audit: Audit | None = None, require_addresses: bool = False
    ) -> None:
        self.store = store
        self.require_addresses = require_addresses  # refuse a vNIC left without addresses
        self.feed = feed or Feed()
        self.audit = audit or Audit(None)
        self.dc = DataCenter()
        self.revision = store.revision()
        self._admin_sha256 = store.meta("admin_token_sha256")
        self._hosts_ok: dict[str, HostId] = {}  # host and port names already found valid
        self._ports_ok: dict[str, PortName] = {}
        self._host_tokens: dict[str, HostId] = {}
        for host, token_hash in store.hosts().items():
            self.dc.add_host(host)
            self._host_tokens[token_hash] = host
        self.dc.load(store.table())
        self.encoder = Encoder(self.dc)
        self.metrics = ManagerMetrics()
        self.metrics.watch(
            lambda: self.revision, self.hosts, lambda: {h: st.bytes_sent for h, st in self.feed.status.items()}
        )
        self.feed.floor = self.revision
        if store.resumable:  # revisions mean the same on every replica and after restarts
            self.feed.keep = HISTORY
        store.follow(self._apply_changes, self._store_lost)

    # ----- tokens --------------------------------------------------------------------------
    def ensure_admin_token(self, path: Path, rotate: bool = False) -> str | None:
        """Create the admin token on first start (file mode 0600); returns it when new."""
        if self.store.meta("admin_token_sha256") and not rotate:
            return None
        token = secrets.token_urlsafe(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        tmp.replace(path)
        with self.store.transaction() as tx:
            tx.set_meta("admin_token_sha256", sha256(token))
        self._admin_sha256 = sha256(token)
        return token

    def is_admin(self, token: str) -> bool:
        want = self._admin_sha256
        return want is not None and secrets.compare_digest(want, sha256(token))

    def host_of_token(self, token: str) -> HostId | None:
        return self._host_tokens.get(sha256(token))

    def knows_host(self, name: str) -> bool:
        return name in self.dc.hosts

    def host_calling(self, token: str, name: str) -> HostId | None:
        """H when `token` is H's own and H is registered (the agents' fast path)."""
        host = self._host_tokens.get(sha256(token))
        return host if host == name and host in self.dc.hosts else None

    # ----- audit -----------------------------------------------------------------------------
    def _audited(self, who: str, command: str, args: Any, run: Callable[[], T]) -> T:
        try:
            out = self._retried(run)
        except (InputError, ModelError) as exc:
            what = exc.field if isinstance(exc, InputError) else exc.kind
            self.audit.record(who, command, args, "refused", f"{what}: {exc}", self.revision)
            self.metrics.command(command, "refused")
            raise
        except Exception as exc:
            self.audit.record(who, command, args, "failed", f"{type(exc).__name__}: {exc}", self.revision)
            self.metrics.command(command, "failed")
            raise
        self.audit.record(who, command, args, "ok", None, self.revision)
        self.metrics.command(command, "ok")
        return out

    def _retried(self, run: Callable[[], T]) -> T:
        """`run`, validated and committed again while another replica commits first.

        A refusal (or a command that changes nothing) is only final once this replica is
        known to be current: with a replicated store it may have been validated against a
        state another replica has changed since.
        """
        for _ in range(CONFLICT_RETRIES):
            try:
                return run()
            except StoreConflict:
                self.store.catch_up()
            except ModelError:
                if not self.store.catch_up():
                    raise
        raise StoreUnavailable(f"the store changed under {CONFLICT_RETRIES} attempts in a row: try again")

    def refused(self, who: str, command: str) -> None:
        """Record a change refused before it reached a command (a token not allowed to make it)."""
        self.audit.record(who, command, None, "refused", "auth: this token cannot make management calls", self.revision)

    # ----- agents ----------------------------------------------------------------------------
    def open_feed(self, host: HostId, since: int | None = None) -> Subscription:
        """Subscribe `host` (registered) to its feed; the first line is its snapshot at `revision`,
        or, for an agent at revision `since` whose deltas since then this replica holds, those."""
        if not self.store.available:
            raise StoreUnavailable("this replica lost its store: connect to another one")
        first = self.feed.since(host, since, self.revision) if since is not None else None
        # resumed: due stays the last revision that concerned the host (what the agent enforces)
        q = self.feed.subscribe(host, first or self.snapshot(host), 0 if first else self.revision)
        return Subscription(self.feed, host, q, lambda: self.revision)

    def record_status(self, host: HostId, body: Status | Any, who: str | None = None) -> None:
        """Keep `host`'s status report (a `wire.Status`, or its JSON body, decoded here)."""
        if not isinstance(body, Status):
            try:
                body = decode_status(body)
            except WireError as exc:
                self.audit.record(who or f"host:{host}", "status", body, "refused", str(exc), self.revision)
                raise InputError(exc.field, exc.detail) from None
        st = self.feed.status.get(host)
        before = (st.in_sync, st.error, st.bindings) if st else (True, None, {})
        locations = self.dc.locations

        def local(mac: Mac) -> bool:
            loc = locations.get(mac)
            return loc is not None and loc.host == host

        self.feed.report(host, body, local)
        self.metrics.host_applied(host, body.revision)
        st = self.feed.status[host]
        if (st.in_sync, st.error, st.bindings) != before:
            args: dict[str, Any] = {"revision": body.revision, "in_sync": body.in_sync, "error": body.error}
            if body.bindings is not None:
                args["bindings"] = {m: [b.state, b.port, b.reason] for m, b in body.bindings.items()}
            self.audit.record(who or f"host:{host}", "status", args, "ok", None, self.revision)

    # ----- hosts ---------------------------------------------------------------------------
    def add_host(self, name: Any, who: str = "admin") -> str:
        return self._audited(who, "host add", {"name": name}, lambda: self._add_host(name))

    def _add_host(self, name: Any) -> str:
        host = parse_field("name", parse_host, name)
        if host in self.dc.hosts:
            raise ModelError(f"host {host} already exists (rotate its token with `hostvlan host token {host}`)")
        return self._new_host_token(host)

    def add_hosts(self, names: Any, who: str = "admin") -> list[tuple[HostId, str]]:
        """Register many end hosts in one durable transaction; each with its new token."""
        return self._audited(who, "host add", {"names": names}, lambda: self._add_hosts(names))

    def _add_hosts(self, names: Any) -> list[tuple[HostId, str]]:
        if not isinstance(names, list) or not names:
            raise InputError("names", "names must be a non-empty list of host names")
        hosts: list[HostId] = []
        seen: set[HostId] = set()
        for i, name in enumerate(names):
            host = parse_field(f"names[{i}]", parse_host, name)
            if host in self.dc.hosts or host in seen:
                raise ModelError(f"host {host} already exists (rotate its token with `hostvlan host token {host}`)")
            seen.add(host)
            hosts.append(host)
        out = [(h, secrets.token_urlsafe(32)) for h in hosts]
        with self.store.transaction() as tx:
            tx.put_hosts([(h, sha256(t)) for h, t in out])
        self.revision = tx.revision
        for h, t in out:
            self._host_tokens[sha256(t)] = h
            self.dc.add_host(h)
        return out

    def rotate_host_token(self, name: Any, who: str = "admin") -> str:
        return self._audited(who, "host token", {"name": name}, lambda: self._rotate_host_token(name))

    def _rotate_host_token(self, name: Any) -> str:
        host = parse_field("name", parse_host, name)
        if host not in self.dc.hosts:
            raise ModelError(f"unknown host {host!r}", "not_found")
        token = self._new_host_token(host)
        self.feed.close(host)  # streams opened with the old token end now
        return token

    def _new_host_token(self, host: HostId) -> str:
        token = secrets.token_urlsafe(32)
        with self.store.transaction() as tx:
            tx.put_host(host, sha256(token))
        self.revision = tx.revision
        self._host_tokens = {h: n for h, n in self._host_tokens.items() if n != host}
        self._host_tokens[sha256(token)] = host
        self.dc.add_host(host)
        return token

    def remove_host(self, name: Any, who: str = "admin") -> None:
        self._audited(who, "host rm", {"name": name}, lambda: self._remove_host(name))

    def _remove_host(self, name: Any) -> None:
        host = parse_field("name", parse_host, name)
        if host not in self.dc.hosts:
            raise ModelError(f"unknown host {host!r}", "not_found")
        self.dc.remove_host(host)
        try:
            with self.store.transaction() as tx:
                tx.delete_host(host)
        except BaseException:
            self.dc.add_host(host)
            raise
        self.revision = tx.revision
        self._host_tokens = {h: n for h, n in self._host_tokens.items() if n != host}
        self.feed.forget(host)

    # ----- the paper's commands ---------------------------------------------------------------
    def _host_arg(self, host: Any, external: bool) -> HostId | None:
        if external:
            if host not in (None, ""):
                raise InputError("host", "an external MAC has no host (drop --external or the host)")
            return None
        if host in (None, ""):
            raise InputError("host", "a host is required (or mark the MAC as external)")
        parsed: HostId = self._name("host", parse_host, host, self._hosts_ok)
        return parsed

    @staticmethod
    def _name(field: str, parse: Callable[[Any], Any], value: Any, ok: dict[str, Any]) -> Any:
        """`_field` for host and port names, remembering valid ones (bulk commands repeat them)."""
        if type(value) is str:
            got = ok.get(value)
            if got is not None:
                return got
        parsed = parse_field(field, parse, value)
        if type(value) is str:
            if len(ok) >= 1 << 17:
                ok.clear()
            ok[value] = parsed
        return parsed

    def reg(
        self,
        lnid: Any,
        mac: Any,
        host: Any = None,
        port: Any = None,
        external: bool = False,
        who: str = "admin",
        ips: Any = None,
        router: Any = False,
        dhcp_server: Any = False,
    ) -> Result:
        op = {"op": "reg", "lnid": lnid, "mac": mac, "host": host, "port": port, "external": external}
        if ips is not None or router or dhcp_server:
            op.update(ips=ips, router=router, dhcp_server=dhcp_server)
        return self._one(who, op)

    def addr_add(self, mac: Any, address: Any, shared: Any = False, who: str = "admin") -> Result:
        return self._one(who, {"op": "addr_add", "mac": mac, "address": address, "shared": shared})

    def addr_del(self, mac: Any, address: Any, who: str = "admin") -> Result:
        return self._one(who, {"op": "addr_del", "mac": mac, "address": address})

    def unreg(self, lnid: Any, mac: Any, who: str = "admin") -> Result:
        return self._one(who, {"op": "unreg", "lnid": lnid, "mac": mac})

    def rm(self, mac: Any, who: str = "admin") -> Result:
        return self._one(who, {"op": "rm", "mac": mac})

    def move(self, mac: Any, host: Any = None, port: Any = None, external: bool = False, who: str = "admin") -> Result:
        return self._one(who, {"op": "move", "mac": mac, "host": host, "port": port, "external": external})

    def _one(self, who: str, op: dict[str, Any]) -> Result:
        args = {k: v for k, v in op.items() if k != "op"}
        return self._audited(who, op["op"], args, lambda: self._run([self._parse_op(op)]))

    def batch(self, ops: Any, who: str = "admin") -> Result:
        return self._audited(who, "batch", batch_args(ops), lambda: self._batch(ops))

    def _batch(self, ops: Any) -> Result:
        if not isinstance(ops, list):
            raise InputError("ops", "ops must be a list of commands")
        parsed = []
        for i, op in enumerate(ops):
            try:
                parsed.append(self._parse_op(op))
            except InputError as exc:
                raise InputError(f"ops[{i}].{exc.field}", exc.detail, exc.status) from None
        return self._run(parsed)

    def _parse_op(self, op: Any) -> tuple[Any, ...]:
        if not isinstance(op, dict):
            raise InputError("op", "each command must be an object")
        kind = op.get("op")
        port = op.get("port")
        parsed_port = None if port in (None, "") else self._name("port", parse_port, port, self._ports_ok)
        if kind == "reg":
            return (
                "reg",
                parse_field("mac", lambda v: parse_mac(v, vm=True), op.get("mac")),
                parse_field("lnid", parse_lnid, op.get("lnid")),
                self._host_arg(op.get("host"), bool(op.get("external", False))),
                parsed_port,
                addrs_arg(op),
            )
        if kind in ("addr_add", "addr_del"):
            mac = parse_field("mac", parse_mac, op.get("mac"))
            net = parse_field("address", parse_net, op.get("address"))
            if kind == "addr_del":
                return ("addr_del", mac, net)
            return ("addr_add", mac, net, flag("shared", op.get("shared", False)))
        if kind == "unreg":
            return (
                "unreg",
                parse_field("mac", parse_mac, op.get("mac")),
                parse_field("lnid", parse_lnid, op.get("lnid")),
            )
        if kind == "rm":
            return ("rm", parse_field("mac", parse_mac, op.get("mac")))
        if kind == "move":
            return (
                "move",
                parse_field("mac", parse_mac, op.get("mac")),
                self._host_arg(op.get("host"), bool(op.get("external", False))),
                parsed_port,
            )
        raise InputError("op", f"unknown command {kind!r} (reg, unreg, rm, move, addr_add, addr_del)")

    def _run(self, ops: list[tuple[Any, ...]]) -> Result:
        """Apply ops to the calc graph, make them durable in one transaction, publish."""
        batch = self.dc.batch()
        try:
            for op in ops:
                if op[0] == "reg":
                    batch.reg(op[1], op[2], op[3], op[4], op[5])
                elif op[0] == "addr_add":
                    batch.addr_add(op[1], op[2], op[3])
                elif op[0] == "addr_del":
                    batch.addr_del(op[1], op[2])
                elif op[0] == "unreg":
                    batch.unreg(op[1], op[2])
                elif op[0] == "rm":
                    batch.rm(op[1])
                else:
                    batch.move(op[1], op[2], op[3])
            if not batch.changed:
                if self.store.catch_up():  # it may change something on the current table
                    raise StoreConflict("this replica was behind")
                return Result(self.revision, False)
            if self.require_addresses:
                check_required(self.dc, ops)
            rows = []
            fresh = set()  # MACs with no stored row before this batch
            addr_text = self.dc.addr_text
            for mac in batch.touched():
                lnids, loc = self.dc.state_of(mac)
                rows.append((mac, loc.host if loc else None, loc.port if loc else None, lnids, addr_text(mac)))
                was = batch.before.get(mac)
                if was is not None and not was[0]:
                    fresh.add(mac)
            t0 = time.perf_counter()
            with self.store.transaction() as tx:
                tx.put_macs(rows, fresh)
            self.metrics.committed(time.perf_counter() - t0)
            self.revision = tx.revision
        except BaseException:
            batch.undo()
            raise
        deltas = {h: d for h, d in batch.deltas().items() if d}
        self.feed.publish(self.revision, deltas, self.encoder)
        self.metrics.published(self.revision, deltas)
        return Result(self.revision, True)

    # ----- other replicas (a replicated store, store/base.py) ----------------------------------
    def _apply_changes(self, ch: Changes) -> None:
        """Another replica's commit(s): into the calc graph, deltas published at its revision.

        Validated by the replica that committed them against this same state, so the
        calc graph takes them as they are; every replica computes the same deltas.
        """
        tokens = self.store.hosts() if ch.full else {}  # (a copy: only when it is needed)
        gone_hosts = [h for h in self.dc.hosts if h not in tokens] if ch.full else []
        gone_hosts += [h for h, t in ch.hosts.items() if t is None and h in self.dc.hosts]
        token_of = {h: t for t, h in self._host_tokens.items()} if ch.hosts else {}
        for host, token_hash in ch.hosts.items():
            if token_hash is None:
                continue
            old = token_of.get(host)
            if old is not None and old != token_hash:
                self.feed.close(host)  # streams opened with the old token end now
                del self._host_tokens[old]
            self._host_tokens[token_hash] = host
            self.dc.add_host(host)
        if ch.full:
            self._host_tokens = {t: h for h, t in tokens.items()}
            for host in tokens:
                self.dc.add_host(host)
        batch = self.dc.batch()
        macs: dict[Mac, Any] = dict(ch.macs)
        if ch.full:
            for mac in self.dc.table:
                macs.setdefault(mac, None)
        for mac, row in macs.items():
            if row is None:
                batch.put(mac, frozenset(), None, None)
            else:
                batch.put(mac, row.lnids, row.host, row.port, addrs_text(row.addrs))
        for host in gone_hosts:
            try:
                self.dc.remove_host(host)
            except ModelError as exc:  # cannot be, the other replica checked: say so, keep serving
                log.error("r%d: %s", ch.revision, exc)
            self._host_tokens = {t: h for t, h in self._host_tokens.items() if h != host}
            self.feed.forget(host)
        if "admin_token_sha256" in ch.meta or ch.full:
            self._admin_sha256 = self.store.meta("admin_token_sha256")
        self.revision = max(self.revision, ch.revision)
        self.feed.publish(self.revision, {h: d for h, d in batch.deltas().items() if d}, self.encoder)

    def _store_lost(self) -> None:
        """The store is out of reach: end every feed (agents go to another replica)."""
        for host in list(self.feed.status):
            self.feed.close(host)

    async def wait_revision(self, revision: int | None, timeout_s: float = MIN_REVISION_WAIT_S) -> None:
        """Return once this replica reflects `revision` (read-your-writes across replicas)."""
        if revision is None or self.revision >= revision:
            return
        if not self.store.resumable:  # one manager: every acknowledged revision is already here
            raise ModelError(f"this manager is at r{self.revision}: there is no r{revision} yet", "min_revision")
        deadline = time.monotonic() + timeout_s
        while self.revision < revision:
            if time.monotonic() > deadline:
                raise StoreUnavailable(f"this replica is at r{self.revision}, not yet at r{revision}: try again")
            await asyncio.sleep(0.005)

    # ----- reading -------------------------------------------------------------------------
    def snapshot(self, host: HostId) -> Line:
        return self.encoder.snapshot(self.dc.view_parts(host), self.revision)

    def show(self, host: Any = None, lnid: Any = None, mac: Any = None) -> list[dict[str, Any]]:
        h = None if host in (None, "") else parse_field("host", parse_host, host)
        ln = None if lnid in (None, "") else parse_field("lnid", parse_lnid, lnid)
        m = None if mac in (None, "") else parse_field("mac", parse_mac, mac)
        if m is not None:
            macs = [m] if m in self.dc.table else []
        elif ln is not None:
            macs = sorted(self.dc.table.macs(ln))
        elif h is not None:
            macs = sorted(self.dc.local_macs(h))
        else:
            macs = sorted(self.dc.table)
        out = []
        for mac_ in macs:
            loc = self.dc.locations.get(mac_)
            if h is not None and (loc is None or loc.host != h):
                continue
            state, bound_port = self._binding_state(mac_, loc.host if loc else None)
            out.append(
                {
                    "mac": mac_,
                    "lnids": lnids_json(self.dc.table.lnids(mac_)),
                    "host": loc.host if loc else None,
                    "port": loc.port if loc else None,
                    "external": loc is not None and loc.host is None,
                    "state": state,
                    "bound_port": bound_port,
                    **text_json(self.dc.addr_text(mac_)),
                }
            )
        return out

    def _binding_state(self, mac: Mac, host: HostId | None) -> tuple[str, str | None]:
        """A vNIC's STATE and the port its agent bound it to (docs/control-plane.md)."""
        if host is None:
            return "external", None
        st = self.feed.status.get(host)
        b = st.bindings.get(mac) if st else None
        port = b.port if b is not None and b.bound else None
        if st is None or not st.connected:
            return "host down", port
        if b is None:
            return "pending", None
        if b.bound:
            return "bound", port
        return f"unbound: {b.reason or 'no reason given'}", None

    def hosts(self) -> list[dict[str, Any]]:
        out = []
        for host in sorted(self.dc.hosts):
            st = self.feed.status.get(host)
            due = st.due if st else 0
            applied = st.applied if st else 0
            agent_in_sync = st.in_sync if st else True
            out.append(
                {
                    "name": host,
                    "connected": bool(st and st.connected),
                    "vnics": len(self.dc.local_macs(host)),
                    "revision_due": due,
                    "revision_applied": applied,
                    "in_sync": bool(st and st.connected and applied >= due and agent_in_sync),
                    "lag": max(0, due - applied),
                    "agent_in_sync": agent_in_sync,
                    "error": st.error if st else None,
                    "unbound": st.unbound if st else 0,
                    "guarded": sum(1 for m in self.dc.local_macs(host) if self.dc.addr_text(m)[:1] not in ("", "+")),
                }
            )
        return out

    def trace(self, src: Any, dst: Any) -> dict[str, Any]:
        """The verdict for a frame from `src` to `dst` (a MAC, or HOST:PORT), on the reported
        bindings of the source's host (its send check) and the destination's (`manager/trace.py`)."""
        s = parse_field("src", parse_mac, src)
        if not isinstance(dst, str) or not dst:
            raise InputError("dst", "dst must be a MAC or HOST:PORT")
        port = None
        if dst.count(":") == 1:
            hname, pname = dst.split(":")
            host: HostId | None = parse_field("dst", parse_host, hname)
            port = parse_field("dst", parse_port, pname)
            if host not in self.dc.hosts:
                raise ModelError(f"unknown host {host!r}", "not_found")
            st = self.feed.status.get(host)
            dmac = tracing.bound_on(self.dc, host, st.bindings if st else {}, port)
        else:
            dmac = parse_field("dst", parse_mac, dst)
            loc = self.dc.locations.get(dmac)
            host = loc.host if loc else None
            st = self.feed.status.get(host) if host else None
        bindings = st.bindings if st else {}
        sloc = self.dc.locations.get(s)
        src_at = None
        if sloc is not None and sloc.host is not None:  # a vNIC: its own port's send check first
            sst = self.feed.status.get(sloc.host)
            src_at = (sloc.host, (sst.bindings if sst else {}).get(s))
        return tracing.trace(self.dc, bindings, bool(st and st.reported), s, dst, dmac, host, port, src_at)


__all__ = ["InputError", "ModelError", "Result", "Service", "StoreUnavailable"]
