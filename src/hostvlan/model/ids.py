"""Value types of the domain and their parsing: MAC, LNID (incl. `global`), port names.

Representations are chosen for the paper's scale (millions of entries): a MAC is a
normalised lower-case string, an LNID a plain int with `GLOBAL` as the sentinel 0
(user LNIDs are 1 … 2^63−1, so 0 can never collide).
"""

from __future__ import annotations

import re
from typing import Final, NewType

Mac = NewType("Mac", str)
Lnid = NewType("Lnid", int)
PortName = NewType("PortName", str)
HostId = NewType("HostId", str)

GLOBAL: Final = Lnid(0)
LNID_MIN: Final = 1
LNID_MAX: Final = 2**63 - 1
IFNAMSIZ: Final = 16  # including the trailing NUL: names are at most 15 bytes

# The forms as regular expressions (no anchors; matched whole): the parsers below use them,
# and the manager's API publishes them in its OpenAPI document (manager/schemas.py).
MAC_PATTERN: Final = r"[0-9A-Fa-f]{2}(?:[:-][0-9A-Fa-f]{2}){5}"
HOST_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
# The interface names the API takes: the printable-ASCII part of what `parse_port` takes
# (1-15 characters, no space, '/' or ':', not '.' or '..'), so a byte count is a length.
# No look-around: JSON Schema validators and pydantic's regex engine differ on it.
PORT_PATTERN: Final = r"(?:[!-\-0-9;-~][!-.0-9;-~]{0,14}|\.[!-\-0-9;-~][!-.0-9;-~]{0,13}|\.\.[!-.0-9;-~]{1,13})"
_MAC_RE = re.compile(MAC_PATTERN)
_HOST_RE = re.compile(HOST_PATTERN)


class InvalidValue(ValueError):
    """A value given by a user (CLI, API, topology file) is malformed or out of range."""


def parse_mac(text: object, *, vm: bool = False) -> Mac:
    """Parse a MAC written `aa:bb:cc:dd:ee:ff` (or with `-`), any case.

    With `vm=True` the MAC must be usable as a vNIC address: not multicast/broadcast
    and not all-zero.
    """
    if not isinstance(text, str):
        raise InvalidValue(f"MAC must be a string like 52:54:00:00:00:01, got {text!r}")
    stripped = text.strip()
    if not _MAC_RE.fullmatch(stripped):
        raise InvalidValue(f"malformed MAC {text!r} (expected six hex octets like 52:54:00:00:00:01)")
    norm = stripped.lower().replace("-", ":")
    if vm:
        if norm == "00:00:00:00:00:00":
            raise InvalidValue(f"MAC {text!r} is all-zero and cannot be a vNIC address")
        if int(norm[:2], 16) & 1:
            raise InvalidValue(f"MAC {text!r} is a multicast/broadcast address and cannot be a vNIC address")
    return Mac(norm)


def mac_to_int(mac: Mac) -> int:
    return int(mac.replace(":", ""), 16)


def int_to_mac(value: int) -> Mac:
    h = f"{value:012x}"
    return Mac(":".join(h[i : i + 2] for i in range(0, 12, 2)))


def tap_mac(guest: Mac) -> Mac:
    """The host-side MAC libvirt gives a tap: the guest MAC with first octet `fe`."""
    return Mac("fe" + guest[2:])


def parse_lnid(text: object) -> Lnid:
    """Parse an LNID: an integer 1 … 2^63−1, or `global`."""
    if isinstance(text, bool):
        raise InvalidValue(f"LNID must be an integer 1..{LNID_MAX} or 'global', got {text!r}")
    if isinstance(text, str):
        s = text.strip()
        if s.lower() == "global":
            return GLOBAL
        if not re.fullmatch(r"[+-]?[0-9]+", s):
            raise InvalidValue(f"LNID must be an integer 1..{LNID_MAX} or 'global', got {text!r}")
        try:
            value = int(s)
        except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits())
            raise InvalidValue(f"LNID {s[:24]}... out of range (1..{LNID_MAX}, or 'global')") from None
    elif isinstance(text, int):
        value = text
    else:
        raise InvalidValue(f"LNID must be an integer 1..{LNID_MAX} or 'global', got {text!r}")
    if not LNID_MIN <= value <= LNID_MAX:
        raise InvalidValue(f"LNID {value} out of range (1..{LNID_MAX}, or 'global')")
    return Lnid(value)


def format_lnid(lnid: Lnid) -> str:
    return "global" if lnid == GLOBAL else str(lnid)


def format_lnids(lnids: frozenset[Lnid] | set[Lnid]) -> str:
    """Human form of an LNID set, `global` first then ascending: `global,1,7`."""
    return ",".join(format_lnid(x) for x in sorted(lnids)) or "-"


def parse_port(text: object) -> PortName:
    """Parse a network interface name (1–15 bytes, no '/', ':', NUL, whitespace or lone surrogate)."""
    if not isinstance(text, str) or not text:
        raise InvalidValue(f"interface name must be a non-empty string, got {text!r}")
    if any(c in "/:\0" or c.isspace() or "\ud800" <= c <= "\udfff" for c in text) or text in (".", ".."):
        raise InvalidValue(f"interface name {text!r} contains a forbidden character")
    if len(text.encode()) >= IFNAMSIZ:
        raise InvalidValue(f"interface name {text!r} is longer than {IFNAMSIZ - 1} bytes")
    return PortName(text)


def parse_host(text: object) -> HostId:
    """Parse an end-host name: letters, digits, `_ . -`, at most 63 characters."""
    if not isinstance(text, str) or not _HOST_RE.fullmatch(text):
        raise InvalidValue(f"host name must be 1-63 characters of letters, digits, '_', '.', '-', got {text!r}")
    return HostId(text)
