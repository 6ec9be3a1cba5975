"""model/ids.py: parsing and formatting of MACs, LNIDs, port and host names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hostvlan.model.ids import (
    GLOBAL,
    LNID_MAX,
    InvalidValue,
    Lnid,
    Mac,
    format_lnid,
    format_lnids,
    int_to_mac,
    mac_to_int,
    parse_host,
    parse_lnid,
    parse_mac,
    parse_port,
    tap_mac,
)

from .strategies import PROPERTY, any_mac, user_lnid

# ----- parse_mac ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["52:54:00:ab:cd:ef", "52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "52-54-00-Ab-cD-eF", "  52:54:00:ab:cd:ef\n"],
)
def test_parse_mac_normalises_case_and_dashes(text: str) -> None:
    assert parse_mac(text) == "52:54:00:ab:cd:ef"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "52:54:00:ab:cd",
        "52:54:00:ab:cd:ef:01",
        "52:54:00:ab:cd:eg",
        "525400abcdef",
        "5254.00ab.cdef",
        "52:54:0:ab:cd:ef",
        "52:54:000:ab:cd:ef",
        "52::54:00:ab:cd:ef",
        "52:54:00:ab:cd:ef:",
        "52 54 00 ab cd ef",
        "５2:54:00:ab:cd:ef",  # full-width digit
        52,
        None,
        b"52:54:00:ab:cd:ef",
        ["52:54:00:ab:cd:ef"],
    ],
)
def test_parse_mac_rejects_malformed(text: object) -> None:
    with pytest.raises(InvalidValue):
        parse_mac(text)


@pytest.mark.parametrize(
    "text",
    [
        "00:00:00:00:00:00",  # all-zero
        "ff:ff:ff:ff:ff:ff",  # broadcast
        "FF-FF-FF-FF-FF-FF",
        "01:00:5e:00:00:01",  # IPv4 multicast
        "33:33:00:00:00:01",  # IPv6 multicast
        "01:80:c2:00:00:00",  # STP
    ],
)
def test_parse_mac_vm_rejects_zero_and_group_addresses(text: str) -> None:
    parse_mac(text)  # a well-formed MAC: fine as a plain MAC (e.g. a router's)
    with pytest.raises(InvalidValue) as err:
        parse_mac(text, vm=True)
    assert "vNIC" in str(err.value)


@pytest.mark.parametrize("text", ["52:54:00:00:00:01", "02:00:00:00:00:00", "fe:ff:ff:ff:ff:ff", "00:00:00:00:00:01"])
def test_parse_mac_vm_accepts_unicast(text: str) -> None:
    assert parse_mac(text, vm=True) == text


@PROPERTY
@given(
    value=st.integers(0, 2**48 - 1), upper=st.lists(st.booleans(), min_size=12, max_size=12), sep=st.sampled_from(":-")
)
def test_parse_mac_property_any_spelling(value: int, upper: list[bool], sep: str) -> None:
    digits = f"{value:012x}"
    spelled = "".join(c.upper() if u else c for c, u in zip(digits, upper, strict=True))
    text = sep.join(spelled[i : i + 2] for i in range(0, 12, 2))
    assert parse_mac(text) == int_to_mac(value)
    vm_ok = value != 0 and not (value >> 40) & 1
    if vm_ok:
        assert parse_mac(text, vm=True) == int_to_mac(value)
    else:
        with pytest.raises(InvalidValue):
            parse_mac(text, vm=True)


@PROPERTY
@given(text=st.text(alphabet="0123456789abcdefABCDEF:- g\n", max_size=20) | st.text(max_size=20))
def test_parse_mac_property_never_other_errors(text: str) -> None:
    """Any string is either a normalised MAC or an InvalidValue, never another error."""
    try:
        mac = parse_mac(text)
    except InvalidValue:
        return
    assert mac == int_to_mac(mac_to_int(mac))


# ----- mac_to_int / int_to_mac / tap_mac -----------------------------------------------


@PROPERTY
@given(value=st.integers(0, 2**48 - 1))
def test_int_mac_round_trip(value: int) -> None:
    mac = int_to_mac(value)
    assert parse_mac(mac) == mac  # already normalised
    assert mac_to_int(mac) == value


@PROPERTY
@given(mac=any_mac)
def test_mac_int_round_trip(mac: Mac) -> None:
    assert int_to_mac(mac_to_int(mac)) == mac


def test_int_to_mac_examples() -> None:
    assert int_to_mac(0) == "00:00:00:00:00:00"
    assert int_to_mac(0x525400ABCDEF) == "52:54:00:ab:cd:ef"
    assert int_to_mac(2**48 - 1) == "ff:ff:ff:ff:ff:ff"
    assert mac_to_int(Mac("00:00:00:00:01:00")) == 256


def test_tap_mac_example() -> None:
    assert tap_mac(Mac("52:54:00:12:34:56")) == "fe:54:00:12:34:56"


@PROPERTY
@given(mac=any_mac)
def test_tap_mac_property(mac: Mac) -> None:
    tap = tap_mac(mac)
    assert parse_mac(tap) == tap
    assert tap.startswith("fe:")
    assert tap[3:] == mac[3:]
    assert (tap == mac) == mac.startswith("fe:")


# ----- parse_lnid / format_lnid(s) -----------------------------------------------------


@pytest.mark.parametrize("text", ["global", "GLOBAL", "Global", "gLoBaL", "  global "])
def test_parse_lnid_global_any_case(text: str) -> None:
    assert parse_lnid(text) == GLOBAL == 0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (1, 1),
        ("1", 1),
        (" 7 ", 7),
        ("+5", 5),
        (4095, 4095),
        (2**24, 2**24),
        (2**63 - 1, 2**63 - 1),
        (str(2**63 - 1), 2**63 - 1),
    ],
)
def test_parse_lnid_accepts_range(text: object, want: int) -> None:
    got = parse_lnid(text)
    assert got == want
    assert type(got) is int


@pytest.mark.parametrize(
    "text",
    [
        0,
        "0",
        -1,
        "-1",
        2**63,
        str(2**63),
        "abc",
        "1.5",
        1.5,
        1.0,
        "1e3",
        "0x10",
        "1_000",
        "",
        " ",
        "global1",
        "globall",
        True,
        False,
        None,
        [1],
        "١",  # Arabic-Indic digit one: int() would accept it
        "9" * 5000,  # more digits than int() converts
    ],
)
def test_parse_lnid_rejects(text: object) -> None:
    with pytest.raises(InvalidValue):
        parse_lnid(text)


@PROPERTY
@given(value=user_lnid)
def test_parse_lnid_property_in_range(value: Lnid) -> None:
    assert parse_lnid(value) == value
    assert parse_lnid(str(value)) == value
    assert parse_lnid(format_lnid(value)) == value


@PROPERTY
@given(value=st.integers(max_value=0) | st.integers(min_value=2**63))
def test_parse_lnid_property_out_of_range(value: int) -> None:
    with pytest.raises(InvalidValue, match="out of range"):
        parse_lnid(value)
    with pytest.raises(InvalidValue):
        parse_lnid(str(value))


@PROPERTY
@given(text=st.text(max_size=30) | st.text(alphabet="0123456789+- ", max_size=30))
def test_parse_lnid_property_never_other_errors(text: str) -> None:
    try:
        value = parse_lnid(text)
    except InvalidValue:
        return
    assert value == GLOBAL or 1 <= value <= LNID_MAX


def test_format_lnid() -> None:
    assert format_lnid(GLOBAL) == "global"
    assert format_lnid(Lnid(1)) == "1"
    assert format_lnid(Lnid(2**63 - 1)) == "9223372036854775807"


def test_format_lnids_global_first_then_numeric_order() -> None:
    assert format_lnids({Lnid(10), Lnid(9), GLOBAL, Lnid(1)}) == "global,1,9,10"
    assert format_lnids(frozenset({Lnid(7)})) == "7"
    assert format_lnids(set()) == "-"
    assert format_lnids(frozenset()) == "-"


@PROPERTY
@given(lnids=st.frozensets(user_lnid | st.just(GLOBAL), min_size=1, max_size=6))
def test_format_lnids_round_trip(lnids: frozenset[Lnid]) -> None:
    text = format_lnids(lnids)
    parts = text.split(",")
    assert len(parts) == len(lnids)
    assert frozenset(parse_lnid(p) for p in parts) == lnids
    assert [parse_lnid(p) for p in parts] == sorted(lnids)


# ----- parse_port ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["eth0", "a", "x" * 15, "vnet12", "br-0.100", "é" * 7, "tap_vm@1"])
def test_parse_port_accepts(text: str) -> None:
    assert parse_port(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * 16,
        "é" * 8,  # 8 characters but 16 bytes
        "eth/0",
        "eth:0",
        "eth 0",
        " eth0",
        "eth0 ",
        "eth\t0",
        "eth\n0",
        "eth\r0",
        "eth\x0b0",
        "eth\x0c0",
        "eth\u00a00",  # no-break space
        "eth\x000",  # NUL: the kernel would see "eth"
        "eth\udc800",  # lone surrogate: not encodable
        ".",
        "..",
        None,
        5,
        b"eth0",
    ],
)
def test_parse_port_rejects(text: object) -> None:
    with pytest.raises(InvalidValue):
        parse_port(text)


def test_parse_port_16_bytes_message_names_limit() -> None:
    with pytest.raises(InvalidValue, match="15 bytes"):
        parse_port("x" * 16)


@PROPERTY
@given(text=st.text(max_size=20) | st.text(alphabet="ab/: \t\r\n\x0b\x0c\x00.é", max_size=17))
def test_parse_port_property_kernel_rules(text: str) -> None:
    """What parse_port accepts is a name the kernel accepts (dev_valid_name) unchanged."""
    try:
        port = parse_port(text)
    except InvalidValue:
        return
    raw = port.encode()
    assert 1 <= len(raw) <= 15
    assert port not in (".", "..")
    assert not any(c in "/:\x00" or c.isspace() for c in port)


# ----- parse_host ----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["h1", "a", "A" * 63, "ehs-1.dc_2", "0host"])
def test_parse_host_accepts(text: str) -> None:
    assert parse_host(text) == text


@pytest.mark.parametrize("text", ["", "a" * 64, "-h", "_h", ".h", "h 1", "h/1", "h:1", "h1\n", "\nh1", "hö", None, 1])
def test_parse_host_rejects(text: object) -> None:
    with pytest.raises(InvalidValue, match="host name"):
        parse_host(text)


@PROPERTY
@given(text=st.text(max_size=70) | st.text(alphabet="ab-_.\n ", max_size=10))
def test_parse_host_property(text: str) -> None:
    try:
        host = parse_host(text)
    except InvalidValue:
        return
    assert host == text
    assert 1 <= len(host) <= 63
    assert host[0].isascii() and host[0].isalnum()
    assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in host)
