"""What the service needs of a store, whichever one it is (SQLite or etcd).

A store holds the authoritative table: hosts (name → token hash), MAC rows and a few
meta values, plus a revision that grows by one commit at a time. `transaction()` is one
atomic, durable commit; its revision is `tx.revision` once the block is left.

A replicated store (etcd) adds three things, which a single-process store (SQLite) does
as no-ops:
- a commit may find that another replica committed first (`StoreConflict`): nothing of
  it was written; `catch_up()` brings the service's view up to date (through the
  listener given to `follow`) so the command can be validated again and retried;
- a commit may fail because the store cannot be reached, or cannot say whether it
  committed (`StoreUnavailable`): the command is not acknowledged;
- `follow(listener)`: changes other replicas commit reach the service as `Changes`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from hostvlan.manager.store.sqlite import Row, TableRow
from hostvlan.model.ids import HostId, Lnid, Mac, PortName


class StoreUnavailable(RuntimeError):
    """The store cannot be reached (or did not say whether the commit happened): not acknowledged."""


class StoreConflict(RuntimeError):
    """Another replica committed since the state this commit was validated against: nothing written."""


@dataclass
class Changes:
    """What one or more commits of other replicas changed, as of `revision`.

    `None` values are deletions. With `full`, these are the whole table (after the store
    compacted past what this replica had seen): what is absent is gone.
    """

    revision: int
    macs: dict[Mac, Row | None] = field(default_factory=dict)
    hosts: dict[HostId, str | None] = field(default_factory=dict)
    meta: dict[str, str | None] = field(default_factory=dict)
    full: bool = False


class Tx(Protocol):
    revision: int

    def put_host(self, name: HostId, token_sha256: str) -> None: ...

    def put_hosts(self, rows: list[tuple[HostId, str]]) -> None: ...

    def delete_host(self, name: HostId) -> None: ...

    def put_macs(self, rows: list[TableRow], fresh: Collection[Mac] = ()) -> None: ...

    def put_mac(
        self, mac: Mac, host: HostId | None, port: PortName | None, lnids: frozenset[Lnid], addrs: str = ""
    ) -> None: ...

    def set_meta(self, key: str, value: str) -> None: ...


class Store(Protocol):
    """The store interface (`sqlite.Store`, `etcd.EtcdStore`)."""

    available: bool  # False while a replicated store cannot reach its cluster
    resumable: bool  # an agent's revision means the same view on every replica: feeds resume by revision

    def transaction(self) -> AbstractContextManager[Tx]: ...

    def revision(self) -> int: ...

    def meta(self, key: str) -> str | None: ...

    def hosts(self) -> dict[HostId, str]: ...

    def rows(self) -> Iterator[Row]: ...

    def table(self) -> Iterator[TableRow]: ...

    def close(self) -> None: ...

    def follow(self, listener: Callable[[Changes], None], lost: Callable[[], None] = ...) -> None:
        """Call `listener` with the changes other replicas commit (never for this one's own),
        `lost` when the store cannot be reached any more (`available` turned False)."""
        ...

    def catch_up(self) -> bool:
        """Deliver to the listener every change committed so far (after a `StoreConflict`);
        True if there were any."""
        ...


__all__ = ["Changes", "Store", "StoreConflict", "StoreUnavailable", "TableRow", "Tx"]
