"""A MAC's stored row as JSON (the etcd store's value of one MAC key).

The one place a row's fields are named: a new field of `Row` is one edit here (write it
in `row_to_json`, read it with a default in `row_from_json` so older values still load).
"""

from __future__ import annotations

from typing import Any

from hostvlan.manager.store.sqlite import Row
from hostvlan.model.addresses import addrs_text, parse_addrs_text
from hostvlan.model.ids import HostId, Lnid, Mac, PortName


def row_to_json(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mac": row.mac,
        "host": row.host,
        "port": row.port,
        "lnids": sorted(int(x) for x in row.lnids),
    }
    text = addrs_text(row.addrs)
    if text:  # absent: unguarded (and every row written before addresses)
        out["addrs"] = text
    return out


def row_from_json(value: dict[str, Any]) -> Row:
    host, port = value.get("host"), value.get("port")
    return Row(
        Mac(value["mac"]),
        HostId(host) if host else None,
        PortName(port) if port else None,
        frozenset(Lnid(int(x)) for x in value["lnids"]),
        parse_addrs_text(str(value.get("addrs") or "")),
    )


__all__ = ["row_from_json", "row_to_json"]
