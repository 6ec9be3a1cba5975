"""The API's value types agree with the model's parsers (manager/schemas.py).

Each pattern the OpenAPI document publishes must take exactly what the server takes: a
value matching it is accepted by the model's parser, and a value the API refuses is
refused with the parser's own message when the parser refuses it too.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from hostvlan.manager import schemas
from hostvlan.model.ids import (
    HOST_PATTERN,
    LNID_MAX,
    MAC_PATTERN,
    PORT_PATTERN,
    InvalidValue,
    parse_host,
    parse_lnid,
    parse_mac,
    parse_port,
)

HEX = "0123456789abcdefABCDEF"
mac_like = st.lists(st.text(HEX, min_size=2, max_size=2), min_size=6, max_size=6).flatmap(
    lambda octets: st.lists(st.sampled_from(":-"), min_size=5, max_size=5).map(
        lambda seps: octets[0] + "".join(s + o for s, o in zip(seps, octets[1:], strict=True))
    )
)


def accepts(parse: Any, value: object) -> bool:
    try:
        parse(value)
    except InvalidValue:
        return False
    return True


def api_accepts(tp: Any, value: object) -> bool:
    try:
        TypeAdapter(tp).validate_python(value)
    except ValidationError:
        return False
    return True


@given(st.one_of(mac_like, st.text(max_size=20)))
@example("00:00:00:00:00:00")
@example("01:00:00:00:00:00")
@example("00:00:00:00:00:01")
@example("ff:ff:ff:ff:ff:ff")
def test_mac_patterns_are_the_parsers(text: str) -> None:
    if text != text.strip():  # the parser strips (CLI, files); the wire takes no spaces
        assert not api_accepts(schemas.MacStr, text)
        return
    assert bool(re.fullmatch(MAC_PATTERN, text)) == accepts(parse_mac, text) == api_accepts(schemas.MacStr, text)
    vm = accepts(lambda v: parse_mac(v, vm=True), text)
    assert bool(re.fullmatch(schemas.VM_MAC_PATTERN, text)) == vm == api_accepts(schemas.VmMacStr, text)


@given(st.text(max_size=70))
@example("a" * 63)
@example("a" * 64)
@example("-a")
def test_host_pattern_is_the_parser(text: str) -> None:
    assert bool(re.fullmatch(HOST_PATTERN, text)) == accepts(parse_host, text)


@given(st.text(max_size=18))
@example(".")
@example("..")
@example("...")
@example(".a")
@example("p" * 15)
@example("p" * 16)
def test_port_pattern_is_the_ascii_part_of_the_parser(text: str) -> None:
    ascii_only = all("!" <= c <= "~" for c in text)
    assert bool(re.fullmatch(PORT_PATTERN, text)) == (ascii_only and accepts(parse_port, text))


@given(
    st.one_of(
        st.integers(min_value=-5, max_value=2**64).map(str),
        st.integers(min_value=LNID_MAX - 1000, max_value=LNID_MAX + 1000).map(str),
        st.integers(min_value=0, max_value=10**20).map(lambda n: f"+{n:025d}"),
        st.sampled_from(["global", "GLOBAL", "Global", "glob", "0", "00", "+0", "-1", "", "1e3", "٣"]),
    )
)
def test_lnid_string_pattern_is_the_parser(text: str) -> None:
    assert bool(re.fullmatch(schemas.LNID_STR_PATTERN, text)) == accepts(parse_lnid, text)
    assert api_accepts(schemas.Lnid, text) == accepts(parse_lnid, text)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (1, True),
        (2**63 - 1, True),
        (2**63, False),
        (0, False),
        (True, False),
        (7.0, True),
        (7.5, False),
        (float(2**60), False),
        (None, False),
    ],
)
def test_lnid_numbers(value: object, ok: bool) -> None:
    assert api_accepts(schemas.Lnid, value) == ok


def test_refusals_carry_the_parsers_messages() -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(schemas.MacStr).validate_python("52:54:00")
    assert "malformed MAC '52:54:00'" in str(info.value)
    with pytest.raises(ValidationError) as info:
        TypeAdapter(schemas.Lnid).validate_python(str(2**63))
    assert "out of range" in str(info.value)
