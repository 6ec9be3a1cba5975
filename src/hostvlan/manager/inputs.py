"""Operator input the service refuses or parses for a command: one error type, the address
arguments of `reg`, and `--require-addresses` (issue 13).

`InputError.field` names what is wrong; the API answers `{"error": field, "detail": ...}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hostvlan.model.addresses import AddressError, AddrSet, IpsError, parse_ips
from hostvlan.model.datacenter import DataCenter
from hostvlan.model.ids import InvalidValue


class InputError(ValueError):
    """Bad input: `field` names what is wrong. `status` is the API's answer: 400, or 409 for
    an address in the API's form that no vNIC may hold (multicast, loopback, …) or a
    registration `--require-addresses` refuses."""

    def __init__(self, field: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail
        self.status = status


def parse_field(name: str, parse: Callable[[Any], Any], value: Any) -> Any:
    try:
        return parse(value)
    except AddressError as exc:
        raise InputError(name, str(exc), 409) from None
    except InvalidValue as exc:
        raise InputError(name, str(exc)) from None


def flag(name: str, value: Any) -> bool:
    if type(value) is not bool:
        raise InputError(name, f"{name} must be true or false, got {value!r}")
    return value


def addrs_arg(op: dict[str, Any]) -> AddrSet | None:
    """A `reg`'s addresses and roles (`ips`, `router`, `dhcp_server`); None when it gives none
    (the MAC keeps what it has)."""
    ips = op.get("ips")
    router = flag("router", op.get("router", False))
    dhcp = flag("dhcp_server", op.get("dhcp_server", False))
    if ips is None and not router and not dhcp:
        return None
    if ips is None:
        ips = []
    if not isinstance(ips, list):
        raise InputError("ips", "ips must be a list of addresses like 10.0.0.5 or fd00::5")
    try:
        return parse_ips(ips, router, dhcp)
    except IpsError as exc:
        raise InputError(f"ips[{exc.index}]", str(exc), 409) from None


def check_required(dc: DataCenter, ops: list[tuple[Any, ...]]) -> None:
    """`--require-addresses`: every MAC a `reg` or `addr_del` leaves registered has an address."""
    for i, op in enumerate(ops):
        if op[0] in ("reg", "addr_del") and op[1] in dc.table and not dc.addrs(op[1]).guarded:
            where = "" if len(ops) == 1 else f"ops[{i}]."
            if op[0] == "reg":
                raise InputError(
                    f"{where}ips",
                    f"this manager requires addresses (--require-addresses): register {op[1]} with --ip ADDR",
                    409,
                )
            raise InputError(
                f"{where}address",
                f"this manager requires addresses (--require-addresses): {op[1]} would be left without any",
                409,
            )


__all__ = ["InputError", "addrs_arg", "check_required", "flag", "parse_field"]
