"""DatapathError carries the errno; nftables' error text maps back to it; the factory's spec."""

from __future__ import annotations

import errno

import pytest

from hostvlan.datapath.base import DatapathError
from hostvlan.datapath.factory import BackendSpec
from hostvlan.datapath.kernel.nft import _errno_of


def test_datapath_error_carries_the_errno() -> None:
    assert DatapathError("gone", errno=errno.ENOENT).errno == errno.ENOENT
    assert DatapathError("no cause").errno is None
    assert str(DatapathError("msg", errno=errno.E2BIG)) == "msg"


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("internal:0:0-0: Error: No such file or directory", errno.ENOENT),
        ("Error: No such file or directory\nlist table bridge hostvlan\n", errno.ENOENT),
        ("Error: Could not process rule: Device or resource busy\nadd chain …", errno.EBUSY),
        ("Error: No such file or directory; did you mean table 'x' in family bridge?", errno.ENOENT),
        ("Error: syntax error, unexpected newline", None),
        ("", None),
    ],
)
def test_nft_error_text_gives_the_errno(text: str, code: int | None) -> None:
    assert _errno_of(text) == code


def test_spec_names_the_receive_filter_in_force() -> None:
    assert BackendSpec().receive == "tc"
    assert BackendSpec(send_check="nft").receive == "nft"
    assert BackendSpec(receive_filter="nft").receive == "nft"
    with pytest.raises(ValueError, match="needs --send-check locked"):
        BackendSpec(send_check="nft", receive_filter="tc")
