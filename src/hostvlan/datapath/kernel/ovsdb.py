"""OVSDB through ovsdbapp: the bridge's ports, their OpenFlow numbers and their vNIC MACs.

`OvsDb` keeps one ovsdbapp connection (an in-memory replica of the Open_vSwitch database,
kept current by ovsdbapp's connection thread), so looking a port up costs no process and
no round trip. Writes are ovsdbapp transactions, idempotent (`may_exist` / `if_exists`)
and checked (`check_error=True`: a failed write raises, never logs and continues).

Port metadata follows OpenStack: a VM's port carries `Interface external_ids:attached-mac`
(the guest vNIC's MAC) and `external_ids:iface-id`, so an agent finds the port bound to a
vNIC without knowing how the VMM named it.

ovsdbapp keeps its connection in a class attribute of its API class; each `OvsDb` makes
its own subclass, so two instances (two daemons, or a test's successive OVS instances)
never share a connection by accident. May import `hostvlan.datapath.base` and
`hostvlan.model` only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from hostvlan.datapath.base import DatapathError
from hostvlan.model.ids import Mac, PortName, parse_mac

OF_PROTOCOLS = ["OpenFlow10", "OpenFlow13", "OpenFlow14", "OpenFlow15"]  # bundles need 1.4
ATTACHED_MAC = "attached-mac"
IFACE_ID = "iface-id"
_TABLES = ("Open_vSwitch", "Bridge", "Port", "Interface")


def _probe(remote: str) -> None:
    """Connect once, to fail with the OS's reason (and its errno) if no server answers, before
    ovsdbapp, which logs and raises a bare Exception."""
    import ovs.stream

    err, strm = ovs.stream.Stream.open_block(ovs.stream.Stream.open(remote))
    if err:
        raise DatapathError(f"cannot connect to OVSDB at {remote}: {os.strerror(err)}", errno=err)
    strm.close()


def _scalar(value: Any) -> Any:
    """An optional OVSDB column reads as [] or [x] in the IDL: its value or None."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


class OvsDb:
    """One connection to an OVSDB server holding the Open_vSwitch schema."""

    def __init__(self, remote: str, timeout: float = 10.0) -> None:
        from ovsdbapp.backend.ovs_idl import connection
        from ovsdbapp.schema.open_vswitch import impl_idl

        self.remote = remote
        _probe(remote)
        try:
            idl = connection.OvsdbIdl.from_server(remote, "Open_vSwitch", helper_tables=_TABLES)
            self._conn = connection.Connection(idl, timeout)
            api_class = type("HostvlanOvsdbIdl", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self._api: Any = api_class(self._conn)
        except Exception as exc:  # ovsdbapp raises several unrelated types for "cannot connect"
            raise DatapathError(f"cannot connect to OVSDB at {remote}: {exc}") from exc

    def close(self) -> None:
        self._conn.stop(timeout=10)

    # ----- writes -------------------------------------------------------------------
    @contextmanager
    def _txn(self, what: str) -> Iterator[Any]:
        try:
            with self._api.transaction(check_error=True) as txn:
                yield txn
        except DatapathError:
            raise
        except Exception as exc:
            raise DatapathError(f"OVSDB {what} at {self.remote} failed: {exc}") from exc

    def ensure_bridge(self, bridge: str, datapath_type: str = "system") -> None:
        """Create `bridge` fail-closed (fail-mode secure: no flows, no forwarding), or set an
        existing one so; in one OVSDB transaction, so ovs-vswitchd never sees it otherwise."""
        with self._txn(f"ensure bridge {bridge}") as txn:
            br = txn.add(self._api.add_br(bridge, may_exist=True, datapath_type=datapath_type))
            txn.add(
                self._api.db_set(
                    "Bridge",
                    br,
                    ("fail_mode", "secure"),
                    ("protocols", OF_PROTOCOLS),
                    ("other_config", {"disable-in-band": "true"}),
                )
            )

    def del_bridge(self, bridge: str) -> None:
        with self._txn(f"delete bridge {bridge}") as txn:
            txn.add(self._api.del_br(bridge, if_exists=True))

    def add_port(self, bridge: str, port: str, attached_mac: Mac | None = None, iface_id: str | None = None) -> None:
        """Add a port (idempotent), tagged with the vNIC behind it as OpenStack does."""
        ids: dict[str, str] = {}
        if attached_mac is not None:
            ids[ATTACHED_MAC] = attached_mac
        if iface_id is not None:
            ids[IFACE_ID] = iface_id
        with self._txn(f"add port {port}") as txn:
            txn.add(self._api.add_port(bridge, port, may_exist=True))
            if ids:
                txn.add(self._api.db_set("Interface", port, ("external_ids", ids)))

    def del_port(self, port: str, bridge: str | None = None) -> None:
        with self._txn(f"delete port {port}") as txn:
            txn.add(self._api.del_port(port, bridge=bridge, if_exists=True))

    # ----- reads (the replica, under the connection's lock) ------------------------------
    def _bridge_row(self, bridge: str) -> Any:
        for row in self._api.tables["Bridge"].rows.values():
            if row.name == bridge:
                return row
        return None

    def bridge_config(self, bridge: str) -> Mapping[str, Any] | None:
        """{'fail_mode', 'datapath_type', 'protocols'} of `bridge`, or None when it does not exist."""
        with self._conn.lock:
            row = self._bridge_row(bridge)
            if row is None:
                return None
            return {
                "fail_mode": _scalar(row.fail_mode),
                "datapath_type": row.datapath_type,
                "protocols": list(row.protocols),
            }

    def _interfaces(self, bridge: str) -> Iterator[Any]:
        row = self._bridge_row(bridge)
        if row is None:
            return
        for port in row.ports:
            yield from port.interfaces

    def ofports(self, bridge: str) -> dict[PortName, int]:
        """OpenFlow port number of every interface of `bridge` that OVS has attached."""
        out: dict[PortName, int] = {}
        with self._conn.lock:
            for iface in self._interfaces(bridge):
                ofport = _scalar(iface.ofport)
                if isinstance(ofport, int) and ofport > 0:
                    out[PortName(iface.name)] = ofport
        return out

    def ports_by_attached_mac(self, bridge: str) -> dict[Mac, PortName]:
        """vNIC MAC → port name, from `external_ids:attached-mac` of the bridge's interfaces."""
        out: dict[Mac, PortName] = {}
        with self._conn.lock:
            for iface in self._interfaces(bridge):
                text = dict(iface.external_ids).get(ATTACHED_MAC)
                if text:
                    out[parse_mac(text)] = PortName(iface.name)
        return out
