"""SQLite store: the authoritative table, durable before any command is acknowledged.

WAL journal with synchronous=FULL: a commit returns only once it is on disk, so an
acknowledged command survives `kill -9` of the manager (and a power cut, as far as the
disk's flush is honest). One command (or one batch) = one transaction that also bumps
the revision. LNIDs are stored as SQLite integers (signed 64-bit), `global` as 0.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hostvlan.model.ids import HostId, Lnid, Mac, PortName

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, token_sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS macs (
    mac TEXT PRIMARY KEY,
    host TEXT REFERENCES hosts(name),
    port TEXT
);
CREATE TABLE IF NOT EXISTS memberships (
    mac TEXT NOT NULL REFERENCES macs(mac) ON DELETE CASCADE,
    lnid INTEGER NOT NULL,
    PRIMARY KEY (mac, lnid)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS memberships_by_lnid ON memberships(lnid);
"""


@dataclass(frozen=True)
class Row:
    mac: Mac
    host: HostId | None
    port: PortName | None
    lnids: frozenset[Lnid]


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

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
        for mac, host, port, lnids in self.table():
            yield Row(mac, host, port, lnids)

    def table(self) -> Iterator[tuple[Mac, HostId | None, PortName | None, frozenset[Lnid]]]:
        """`rows()` as plain tuples, fast enough for a million MACs at start.

        SQLite groups the memberships; equal LNID sets come back as the same frozenset.
        """
        sets: dict[str, frozenset[Lnid]] = {}
        cur = self._db.execute(
            "SELECT s.mac, m.host, m.port, group_concat(s.lnid) FROM memberships s JOIN macs m ON m.mac = s.mac "
            "GROUP BY s.mac"
        )
        while batch := cur.fetchmany(65536):
            for mac, host, port, text in batch:
                lnids = sets.get(text)
                if lnids is None:
                    lnids = sets[text] = frozenset(Lnid(int(x)) for x in text.split(","))
                yield mac, host or None, port or None, lnids


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

    def put_macs(
        self, rows: list[tuple[Mac, HostId | None, PortName | None, frozenset[Lnid]]], fresh: Collection[Mac] = ()
    ) -> None:
        """`put_mac` for many MACs (statements batched: bulk registration); `fresh` MACs have no row yet."""
        gone = [(mac,) for mac, _, _, lnids in rows if not lnids]
        kept = [row for row in rows if row[3]]
        if gone:
            self._db.executemany("DELETE FROM macs WHERE mac=?", gone)
        if kept:
            self._db.executemany(
                "INSERT INTO macs(mac, host, port) VALUES (?, ?, ?) "
                "ON CONFLICT(mac) DO UPDATE SET host=excluded.host, port=excluded.port",
                [(mac, host, port) for mac, host, port, _ in kept],
            )
            old = [(row[0],) for row in kept if row[0] not in fresh]
            if old:
                self._db.executemany("DELETE FROM memberships WHERE mac=?", old)
            self._db.executemany(
                "INSERT INTO memberships(mac, lnid) VALUES (?, ?)",
                [(row[0], int(x)) for row in kept for x in row[3]],
            )
        self.dirty = True

    def put_mac(self, mac: Mac, host: HostId | None, port: PortName | None, lnids: frozenset[Lnid]) -> None:
        """Make the stored row of `mac` exactly this (no LNIDs: delete it)."""
        if not lnids:
            self._db.execute("DELETE FROM macs WHERE mac=?", (mac,))
        else:
            self._db.execute(
                "INSERT INTO macs(mac, host, port) VALUES (?, ?, ?) "
                "ON CONFLICT(mac) DO UPDATE SET host=excluded.host, port=excluded.port",
                (mac, host, port),
            )
            self._db.execute("DELETE FROM memberships WHERE mac=?", (mac,))
            self._db.executemany("INSERT INTO memberships(mac, lnid) VALUES (?, ?)", [(mac, int(x)) for x in lnids])
        self.dirty = True

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
