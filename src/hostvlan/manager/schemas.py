"""The manager API's request and response types: they validate requests AND make the OpenAPI document.

Each value type is the model's parser (`model/ids.py`) plus the pattern or range that
describes exactly what it takes over the API, so the published document and the server
agree by construction:

- the pattern (or range) is checked first, with the same compiled expression the document
  states; a value outside it is refused with the model parser's own message (the parser
  is run on it to explain why), so errors read as they always did (`malformed MAC …`);
- the API takes the canonical part of what the parsers accept: no surrounding whitespace
  (the CLI and topology files may be lenient, the wire is not), interface names in
  printable ASCII;
- inputs are strict JSON types: `"1"` is not an integer, `1` is not `true`.

The service still parses every value with the same parsers (it is also used without
HTTP); the types here never accept what it would refuse, and a unit test checks each
pattern against its parser.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictInt, Tag

from hostvlan.model.addresses import ADDRESS_PATTERN, parse_net
from hostvlan.model.ids import (
    HOST_PATTERN,
    LNID_MAX,
    LNID_MIN,
    MAC_PATTERN,
    PORT_PATTERN,
    InvalidValue,
    parse_host,
    parse_lnid,
    parse_mac,
    parse_port,
)


def decimal_range_pattern(low: int, high: int) -> str:
    """A regular expression (no anchors) for the decimal integers low..high, low in 1..9,
    without sign or leading zeros: what `int(text)` reads as such a number."""
    assert 1 <= low <= 9 < high
    top = str(high)
    alts = [f"[{low}-9]"] if len(top) > 1 else []
    if len(top) > 2:
        alts.append(f"[1-9][0-9]{{1,{len(top) - 2}}}" if len(top) > 3 else "[1-9][0-9]")
    # numbers of len(top) digits below top: a common prefix, a smaller digit, then anything
    for i, d in enumerate(top):
        first = 1 if i == 0 else 0
        if int(d) > first:
            rest = len(top) - i - 1
            alts.append(top[:i] + f"[{first}-{int(d) - 1}]" + (f"[0-9]{{{rest}}}" if rest else ""))
    alts.append(top)
    return "(?:" + "|".join(alts) + ")"


# "global" in any case (JSON Schema has no flag for it), or 1..2^63-1 with an optional '+'
# and leading zeros (what `parse_lnid` takes)
LNID_STR_PATTERN = "(?:[Gg][Ll][Oo][Bb][Aa][Ll]|\\+?0*" + decimal_range_pattern(LNID_MIN, LNID_MAX) + ")"


def _vm_mac_pattern() -> str:
    """A unicast MAC that is not all-zero (`parse_mac(vm=True)`), without look-around:
    a first octet other than 00 with its low bit clear, or 00 and a later octet not 00."""
    sep, octet = "[:-]", "[0-9A-Fa-f]{2}"
    nonzero = "(?:[1-9A-Fa-f][0-9A-Fa-f]|0[1-9A-Fa-f])"
    alts = [f"(?:[1-9A-Fa-f][02468AaCcEe]|0[2468AaCcEe])(?:{sep}{octet}){{5}}"]
    for k in range(5):  # octet k+1 is the first one that is not 00
        zeros = f"(?:{sep}00){{{k}}}" if k else ""
        tail = f"(?:{sep}{octet}){{{4 - k}}}" if k < 4 else ""
        alts.append(f"00{zeros}{sep}{nonzero}{tail}")
    return "(?:" + "|".join(alts) + ")"


VM_MAC_PATTERN = _vm_mac_pattern()
TRACE_DST_PATTERN = f"(?:{MAC_PATTERN}|{HOST_PATTERN}:{PORT_PATTERN})"


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


def _parse_trace_dst(value: object) -> object:
    if isinstance(value, str) and value.count(":") == 1:
        host, _, port = value.partition(":")
        parse_host(host)
        parse_port(port)
        return value
    return parse_mac(value)


def _checked(what: str, pattern: str, parse: Callable[[Any], object]) -> Callable[[Any], Any]:
    """A before-validator: `value` if it is a string matching `pattern` whole, else an
    InvalidValue with the model parser's message (or, when only the API's form is
    stricter than the parser, one saying so)."""
    regex = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, str) and regex.fullmatch(value):
            return value
        parse(value)  # raises with the model's explanation
        raise InvalidValue(f"{what} {value!r} is not in the form the API takes (no surrounding spaces, ASCII)")

    return check


# A float is exact as an integer only up to 2^53-1: `7.0` is the LNID 7 (JSON Schema counts
# it an integer), a larger float is refused rather than rounded.
JSON_INT_MAX = 2**53 - 1


def _json_int(value: Any) -> Any:
    """A JSON number that is an integer (`7` or `7.0`, as JSON Schema counts it) as an int."""
    if type(value) is float and value.is_integer() and abs(value) <= JSON_INT_MAX:
        return int(value)
    return value


def _checked_lnid(value: Any) -> Any:
    value = _json_int(value)
    if type(value) is int:
        parse_lnid(value)  # the range, with the model's message
        return value
    return _checked("LNID", LNID_STR_PATTERN, parse_lnid)(value)


def _strict_bool(value: Any) -> Any:
    if type(value) is not bool:
        raise InvalidValue(f"must be true or false, got {value!r}")
    return value


def _field(pattern: str, description: str, example: str) -> Any:
    return Field(pattern=_anchored(pattern), description=description, examples=[example])


MacStr = Annotated[
    str,
    _field(MAC_PATTERN, "a MAC: six hex octets separated by ':' or '-', any case", "52:54:00:00:00:01"),
    BeforeValidator(_checked("MAC", MAC_PATTERN, parse_mac)),
]
VmMacStr = Annotated[
    str,
    _field(VM_MAC_PATTERN, "a vNIC's MAC: unicast (first octet even) and not all-zero", "52:54:00:00:00:01"),
    BeforeValidator(_checked("MAC", VM_MAC_PATTERN, lambda v: parse_mac(v, vm=True))),
]
IpStr = Annotated[
    str,
    _field(
        ADDRESS_PATTERN,
        "an IPv4/IPv6 address or prefix the vNIC holds; one no vNIC may hold (multicast, broadcast, loopback, "
        "unspecified, host bits set) is refused with 409",
        "10.0.0.5",
    ),
    BeforeValidator(_checked("address", ADDRESS_PATTERN, parse_net)),
]
HostStr = Annotated[
    str,
    _field(HOST_PATTERN, "an end host's name: 1-63 letters, digits, '_', '.', '-'", "ehs1"),
    BeforeValidator(_checked("host name", HOST_PATTERN, parse_host)),
]
PortStr = Annotated[
    str,
    _field(PORT_PATTERN, "a kernel interface name: 1-15 printable ASCII, no '/' or ':', not '.' or '..'", "vnet0"),
    BeforeValidator(_checked("interface name", PORT_PATTERN, parse_port)),
]
LnidStr = Annotated[
    str,
    _field(LNID_STR_PATTERN, f'an LNID as a string: "global" (any case) or 1..{LNID_MAX}', "7"),
    BeforeValidator(_checked("LNID", LNID_STR_PATTERN, parse_lnid)),
]
TraceDst = Annotated[
    str,
    _field(TRACE_DST_PATTERN, "a destination: a MAC, or HOST:PORT (a vNIC's port)", "ehs1:vnet0"),
    BeforeValidator(_checked("dst", TRACE_DST_PATTERN, _parse_trace_dst)),
]
Lnid = Annotated[
    # The upper bound 2^63-1 is stated as `format: int64`, not as `maximum`: a maximum that
    # large is a double to most schema validators, which then take 2^63-1 + 192 for it.
    # (`_checked_lnid` enforces it, with `parse_lnid`'s message.)
    Annotated[StrictInt, Field(ge=LNID_MIN, json_schema_extra={"format": "int64"})]
    | Annotated[str, Field(pattern=_anchored(LNID_STR_PATTERN))],
    BeforeValidator(_checked_lnid),
    Field(description=f'an LNID: "global" or 1..{LNID_MAX} (int64), as a number or a string ("7")', examples=[7]),
]


class _In(BaseModel):
    """Request bodies: strict JSON types; unknown members are ignored (room for new clients)."""

    model_config = ConfigDict(strict=True)


class HostIn(_In):
    name: HostStr


class HostsIn(_In):
    names: list[HostStr] = Field(min_length=1, description="host names to register, all or none")


class _OnHost(_In):
    host: HostStr = Field(description="the end host of the vNIC")
    port: PortStr | None = Field(None, description="the vNIC's kernel port; none: the agent discovers it")
    external: Annotated[Literal[False], BeforeValidator(_strict_bool)] = False


class _External(_In):
    """A MAC behind the physical network (a router, a gateway): no host."""

    external: Annotated[Literal[True], BeforeValidator(_strict_bool)]
    host: None = None
    port: PortStr | None = None


def _where_tag(value: Any) -> str:
    return "(external)" if isinstance(value, dict) and value.get("external") is True else "(on-host)"


class _Addresses(_In):
    """A `reg`'s addresses and roles (issue 13); none of them given: the MAC keeps what it has."""

    ips: list[IpStr] | None = Field(
        None, description="the vNIC's addresses (then exactly these); none: unchanged, [] for none (unguarded)"
    )
    router: bool = Field(False, description="the vNIC may send router advertisements and redirects")
    dhcp_server: bool = Field(False, description="the vNIC may send DHCP/DHCPv6 server messages")


class RegOnHost(_OnHost, _Addresses):
    lnid: Lnid
    mac: VmMacStr


class RegExternal(_External, _Addresses):
    lnid: Lnid
    mac: VmMacStr


class AddrAddIn(_In):
    mac: MacStr
    address: IpStr
    shared: bool = Field(False, description="a VIP (VRRP) that other MACs sharing an LNID may hold too")


class AddrDelIn(_In):
    mac: MacStr
    address: IpStr


class MoveOnHost(_OnHost):
    mac: MacStr


class MoveExternal(_External):
    mac: MacStr


# Union members are tagged "(…)": never a field name, so an error's location drops them
RegIn = Annotated[
    Annotated[RegOnHost, Tag("(on-host)")] | Annotated[RegExternal, Tag("(external)")], Discriminator(_where_tag)
]
MoveIn = Annotated[
    Annotated[MoveOnHost, Tag("(on-host)")] | Annotated[MoveExternal, Tag("(external)")], Discriminator(_where_tag)
]


class UnregIn(_In):
    lnid: Lnid
    mac: MacStr


class RmIn(_In):
    mac: MacStr


class RegOnHostOp(RegOnHost):
    op: Literal["reg"]


class RegExternalOp(RegExternal):
    op: Literal["reg"]


class UnregOp(UnregIn):
    op: Literal["unreg"]


class RmOp(RmIn):
    op: Literal["rm"]


class AddrAddOp(AddrAddIn):
    op: Literal["addr_add"]


class AddrDelOp(AddrDelIn):
    op: Literal["addr_del"]


class MoveOnHostOp(MoveOnHost):
    op: Literal["move"]


class MoveExternalOp(MoveExternal):
    op: Literal["move"]


OP_KINDS = ("reg", "unreg", "rm", "move", "addr_add", "addr_del")


def _op_tag(value: Any) -> str | None:
    if not isinstance(value, dict) or "op" not in value:
        return None
    op = value["op"]
    if op in ("reg", "move"):
        return f"({op}{_where_tag(value)})"
    return f"({op})" if isinstance(op, str) else repr(op)


Op = Annotated[
    Annotated[RegOnHostOp, Tag("(reg(on-host))")]
    | Annotated[RegExternalOp, Tag("(reg(external))")]
    | Annotated[UnregOp, Tag("(unreg)")]
    | Annotated[RmOp, Tag("(rm)")]
    | Annotated[MoveOnHostOp, Tag("(move(on-host))")]
    | Annotated[MoveExternalOp, Tag("(move(external))")]
    | Annotated[AddrAddOp, Tag("(addr_add)")]
    | Annotated[AddrDelOp, Tag("(addr_del)")],
    Discriminator(_op_tag),
]


class BatchIn(_In):
    ops: list[Op] = Field(description="commands, applied in order in one durable transaction (all or nothing)")


# ----- answers ------------------------------------------------------------------------------------
class _Out(BaseModel):
    """Answers: members may be added in later versions (clients ignore what they do not know)."""

    model_config = ConfigDict(extra="allow")


LnidOut = Annotated[int | Literal["global"], Field(description='an LNID: an integer, or "global"')]


class ErrorOut(_Out):
    error: str = Field(description="the field that is wrong (`mac`, `ops[3].lnid`, `body`) or the kind of error")
    detail: str = Field(description="what is wrong, for a person")


class Change(_Out):
    revision: int = Field(description="the last durable revision (the change's, if it changed anything)")
    changed: bool


class HostToken(_Out):
    name: str
    token: str
    revision: int


class HostTokens(_Out):
    class Entry(_Out):
        name: str
        token: str

    hosts: list[Entry]
    revision: int


class Removed(_Out):
    removed: str
    revision: int


class HostRow(_Out):
    name: str
    connected: bool
    vnics: int
    revision_due: int
    revision_applied: int
    in_sync: bool
    lag: int
    agent_in_sync: bool | None = Field(None, description="the agent's last report: its data path is in sync")
    error: str | None = Field(None, description="the agent's last error, if it is not in sync")
    unbound: int | None = Field(None, description="vNICs of the host the agent reported unbound")
    guarded: int | None = Field(None, description="vNICs of the host registered with addresses")


class MacRow(_Out):
    mac: str
    lnids: list[LnidOut]
    host: str | None
    port: str | None
    external: bool
    state: str | None = Field(None, description="bound, unbound: <reason>, host down, pending or external")
    bound_port: str | None = Field(None, description="the kernel port the host's agent reported for this vNIC")
    addresses: list[str] | None = Field(None, description="the addresses and prefixes the vNIC holds")
    shared: list[str] | None = Field(None, description="of `addresses`, those registered shared (VIPs)")
    router: bool | None = Field(None, description="registered as a router (may send RAs, redirects)")
    dhcp_server: bool | None = Field(None, description="registered as a DHCP server")
    guarded: bool | None = Field(None, description="has addresses: what it sends is checked against them")


class TraceOut(_Out):
    src: str
    dst: str
    allow: bool
    reason: str
    src_lnids: list[LnidOut]
    host: str | None = None
    port: str | None = None
    dst_mac: str | None = None
    dst_lnids: list[LnidOut] | None = None
    src_addresses: list[str] | None = Field(None, description="the source's addresses")
    src_guarded: bool | None = Field(None, description="the source has addresses (else unguarded: MAC-only)")


class RevisionOut(_Out):
    revision: int


class Ok(_Out):
    ok: bool


class Health(_Out):
    ok: bool
    revision: int


__all__ = [
    "OP_KINDS",
    "AddrAddIn",
    "AddrDelIn",
    "BatchIn",
    "Change",
    "ErrorOut",
    "Health",
    "HostIn",
    "HostRow",
    "HostStr",
    "HostToken",
    "HostTokens",
    "HostsIn",
    "IpStr",
    "LnidStr",
    "MacRow",
    "MacStr",
    "MoveIn",
    "Ok",
    "RegIn",
    "Removed",
    "RevisionOut",
    "RmIn",
    "TraceDst",
    "TraceOut",
    "UnregIn",
]
