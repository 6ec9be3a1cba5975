"""The audit log: one JSON line per accepted or refused state-changing command.

    {"time": "2026-12-04T18:40:00.123Z", "who": "admin", "command": "reg",
     "args": {"lnid": 1, "mac": "52:54:00:00:00:01", "host": "EHS1", "port": null, "external": false},
     "result": "ok", "error": null, "revision": 7}

`who` is `admin` or `host:<H>` (the token that made the call; `unknown token` for a
management call with a token that is neither, refused); `result` is `ok`,
`refused` (bad input, conflict, not found: `error` says which field and why, nothing
changed) or `failed` (the store could not make it durable); `revision` is the manager's
revision after the command. A host's status report is recorded only when it changes
what the manager shows of the host (in sync or not, error, bindings), not for every
revision it acknowledges. Tokens are never written. A large batch is recorded by its
command counts and its first operations (`BATCH_OPS_KEPT`).

The file is opened for appending and each record written whole with one `write`; it is
flushed, not fsynced: the SQLite store is the durable record of the state, this is the
record of who asked for what.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO, Any

BATCH_OPS_KEPT = 100


def _now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def batch_args(ops: Any) -> Any:
    """What the audit keeps of a batch's operations."""
    if not isinstance(ops, list) or len(ops) <= BATCH_OPS_KEPT:
        return {"ops": ops}
    counts: dict[str, int] = {}
    for op in ops:
        kind = str(op.get("op")) if isinstance(op, dict) else "?"
        counts[kind] = counts.get(kind, 0) + 1
    return {"count": len(ops), "counts": counts, "first_ops": ops[:BATCH_OPS_KEPT]}


class Audit:
    """Appends records to `path`; `Audit(None)` records nothing (tests, tools)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = path.open("a", encoding="utf-8")

    def record(self, who: str, command: str, args: Any, result: str, error: str | None, revision: int) -> None:
        if self._fh is None:
            return
        rec = {
            "time": _now(),
            "who": who,
            "command": command,
            "args": args,
            "result": result,
            "error": error,
            "revision": revision,
        }
        self._fh.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
