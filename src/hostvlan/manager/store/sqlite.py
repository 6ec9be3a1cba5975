"""SQLite store: the authoritative table, durable before any command is acknowledged.

WAL journal with synchronous=FULL: a commit returns only once it is on disk, so an
acknowledged command survives `kill -9` of the manager (and a power cut, as far as the
disk's flush is honest). One command (or one batch) = one transaction that also bumps
the revision. LNIDs are stored as SQLite integers (signed 64-bit), `global` as 0.

Schema version: `meta.schema_version` (`SCHEMA_VERSION`). A new database records it; a
database from before versions were recorded is upgraded in place (`MIGRATIONS`); a
database of a newer version is refused untouched (`StoreError`), so an older manager
never misreads what a newer one wrote. Version 2 added `macs.addrs` (issue 13: a MAC's
addresses as `model.addresses.addrs_text`, NULL for none); a version-1 database is
upgraded by adding the column, its MACs unguarded. `backup` copies a live database consistently
(SQLite's online backup), which `hostvlan manager --backup FILE` uses.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hostvlan.model.addresses import UNGUARDED, Addrs, parse_addrs_text
from hostvlan.model.ids import HostId, Lnid, Mac, PortName

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS macs (
    mac TEXT PRIMARY KEY,
    host TEXT REFERENCES hosts(name),
    port TEXT,
    addrs TEXT
);
CREATE TABLE IF NOT EXISTS memberships (
    mac TEXT NOT NULL REFERENCES macs(mac) ON DELETE CASCADE,
    lnid INTEGER NOT NULL,
    PRIMARY KEY (mac, lnid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_by_lnid ON memberships(lnid);
"""


SCHEMA_VERSION = 2


def _add_addrs(db: sqlite3.Connection) -> None:
    """Version 2: `macs.addrs`, a MAC's addresses as `model.addresses.addrs_text` (NULL: none)."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(macs)")}
    if "addrs" not in columns:  # a new database has it from SCHEMA already
        db.execute("ALTER TABLE macs ADD COLUMN addrs TEXT")


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    # from version N to N+1, run inside the upgrade's transaction; version 0 is every
    # database before the version was recorded, whose tables are version 1's
    0: lambda db: None,
    1: _add_addrs,
}


class StoreError(ValueError):
    """The database cannot be used by this manager (the message says why and what to do)."""


def _version(db: sqlite3.Connection) -> int | None:
    """The recorded schema version; 0 for a database from before; None for a new (empty) one."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
        return None
    row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Row:
    mac: Mac
    host: HostId | None
    port: PortName | None
    lnids: frozenset[Lnid]
    addrs: Addrs = UNGUARDED


TableRow = tuple[Mac, HostId | None, PortName | None, frozenset[Lnid], str]
"""A row as `Store.table` gives it and `Tx.put_macs` takes it: the addresses as their text
(`addrs_text`, "" for none), which the data center keeps as is."""


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        try:
            version = _version(self._db)
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"database {self.path} has schema version {version}, newer than this manager's "
                    f"({SCHEMA_VERSION}): run the hostvlan version that wrote it, or restore a backup"
                )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            if version != SCHEMA_VERSION:
                self._upgrade(version or 0)
        except BaseException:
            self._db.close()
            raise

    def _upgrade(self, version: int) -> None:
        """Migrate from `version` (0: before versions, or a new database) to SCHEMA_VERSION, in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](self._db)
            self.set_meta("schema_version", str(SCHEMA_VERSION))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def backup(self, dest: str | Path) -> None:
        """A consistent copy of the database at `dest` (written aside, then renamed into place)."""
        backup(self.path, dest, self._db)

    def close(self) -> None:
        self._db.close()

    # ----- one process, one file: no other replica to follow (store/base.py) ---------------
    available = True
    # a restored backup reuses revision numbers with another history: agents get snapshots
    resumable = False

    def follow(self, listener: Callable[[Any], None], lost: Callable[[], None] = lambda: None) -> None:
        pass

    def catch_up(self) -> bool:
        return False

    # ----- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One durable transaction; the revision it gets is `tx.revision`."""
        self._db.execute("BEGIN IMMEDIATE")
        tx = Tx(self._db)
        try:
            yield tx
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        if tx.dirty:
            tx.bump()
        self._db.execute("COMMIT")

    # ----- reading -------------------------------------------------------------------------
    def revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        return int(row[0]) if row else 0

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return str(row[0]) if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def hosts(self) -> dict[HostId, str]:
        return {HostId(n): t for n, t in self._db.execute("SELECT name, token_sha256 FROM hosts")}

    def rows(self) -> Iterator[Row]:
        """Every registered MAC with its location and LNIDs."""
        for mac, host, port, lnids, text in self.table():
            yield Row(mac, host, port, lnids, parse_addrs_text(text))

    def table(self) -> Iterator[TableRow]:
        """`rows()` as plain tuples, fast enough for a million MACs at start.

        SQLite groups the memberships; equal LNID sets come back as the same frozenset.
        """
        sets: dict[str, frozenset[Lnid]] = {}
        cur = self._db.execute(
            "SELECT s.mac, m.host, m.port, group_concat(s.lnid), m.addrs FROM memberships s "
            "JOIN macs m ON m.mac = s.mac GROUP BY s.mac"
        )
        while batch := cur.fetchmany(65536):
            for mac, host, port, text, addrs in batch:
                lnids = sets.get(text)
                if lnids is None:
                    lnids = sets[text] = frozenset(Lnid(int(x)) for x in text.split(","))
                yield mac, host or None, port or None, lnids, addrs or ""


class Tx:
    """Writes inside one transaction (see Store.transaction)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.dirty = False
        row = db.execute("SELECT value FROM meta WHERE key='revision'").fetchone()
        self.revision = int(row[0]) if row else 0

    def bump(self) -> None:
        self.revision += 1
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('revision', ?)", (str(self.revision),))

    def put_host(self, name: HostId, token_sha256: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO hosts(name, token_sha256) VALUES (?, ?)", (name, token_sha256))
        self.dirty = True

    def put_hosts(self, rows: list[tuple[HostId, str]]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO hosts(name, token_sha256) VALUES (?, ?)", rows)
        self.dirty = True

    def delete_host(self, name: HostId) -> None:
        self._db.execute("DELETE FROM hosts WHERE name=?", (name,))
        self.dirty = True

    def put_macs(self, rows: list[TableRow], fresh: Collection[Mac] = ()) -> None:
        """`put_mac` for many MACs (statements batched: bulk registration); `fresh` MACs have no row yet."""
        gone = [(row[0],) for row in rows if not row[3]]
        kept = [row for row in rows if row[3]]
        if gone:
            self._db.executemany("DELETE FROM macs WHERE mac=?", gone)
        if kept:
            self._db.executemany(
                "INSERT INTO macs(mac, host, port, addrs) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(mac) DO UPDATE SET host=excluded.host, port=excluded.port, addrs=excluded.addrs",
                [(mac, host, port, addrs or None) for mac, host, port, _, addrs in kept],
            )
            old = [(row[0],) for row in kept if row[0] not in fresh]
            if old:
                self._db.executemany("DELETE FROM memberships WHERE mac=?", old)
            self._db.executemany(
                "INSERT INTO memberships(mac, lnid) VALUES (?, ?)",
                [(row[0], int(x)) for row in kept for x in row[3]],
            )
        self.dirty = True

    def put_mac(
        self, mac: Mac, host: HostId | None, port: PortName | None, lnids: frozenset[Lnid], addrs: str = ""
    ) -> None:
        """Make the stored row of `mac` exactly this (no LNIDs: delete it)."""
        if not lnids:
            self._db.execute("DELETE FROM macs WHERE mac=?", (mac,))
        else:
            self._db.execute(
                "INSERT INTO macs(mac, host, port, addrs) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(mac) DO UPDATE SET host=excluded.host, port=excluded.port, addrs=excluded.addrs",
                (mac, host, port, addrs or None),
            )
            self._db.execute("DELETE FROM memberships WHERE mac=?", (mac,))
            self._db.executemany("INSERT INTO memberships(mac, lnid) VALUES (?, ?)", [(mac, int(x)) for x in lnids])
        self.dirty = True

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))


def backup(db: str | Path, dest: str | Path, source: sqlite3.Connection | None = None) -> None:
    """Copy the database `db` to `dest` while a manager may be running on it.

    SQLite's online backup copies every page under one read transaction: the copy is the
    database as of one commit, whatever the manager writes meanwhile. Refuses a `dest`
    that exists.
    """
    dest = Path(dest)
    if dest.exists():
        raise StoreError(f"{dest} exists: give a new file to back up into")
    if source is None and not Path(db).exists():
        raise StoreError(f"no database at {db}")
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.unlink(missing_ok=True)
    src = source or sqlite3.connect(f"file:{Path(db).absolute()}?mode=ro", uri=True)
    try:
        out = sqlite3.connect(str(tmp))
        try:
            src.backup(out)
            out.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            out.close()
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(dest)
    finally:
        if source is None:
            src.close()
