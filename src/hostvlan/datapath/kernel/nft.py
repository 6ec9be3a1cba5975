"""libnftables through ctypes: one JSON batch = one netlink transaction, no process.

This is what Debian's python3-nftables does, kept here so the virtualenv needs no
system site-packages. The context's netlink socket is opened when the context is
created, so a context made inside a network namespace programs that namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import re
from typing import Any

from hostvlan.datapath.base import DatapathError

_NFT_CTX_OUTPUT_HANDLE = 1 << 2
_NFT_CTX_OUTPUT_JSON = 1 << 4

_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            raise DatapathError(f"cannot load libnftables ({name}): install the 'libnftables1' package") from exc
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
    return _lib


class Nft:
    """One libnftables context (bound to the network namespace it was created in)."""

    def __init__(self) -> None:
        self._lib = _load()
        ctx = self._lib.nft_ctx_new(0)
        if not ctx:
            raise DatapathError("nft_ctx_new failed")
        self._ctx: int | None = ctx
        self._lib.nft_ctx_output_set_flags(ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)
        self._lib.nft_ctx_buffer_output(ctx)
        self._lib.nft_ctx_buffer_error(ctx)

    def close(self) -> None:
        if self._ctx is not None:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        self.close()

    def run(self, commands: list[dict[str, Any]]) -> dict[str, Any]:
        """Run a batch of JSON commands as one transaction; raise DatapathError on failure."""
        return self._run(json.dumps({"nftables": commands}), what=f"batch of {len(commands)} commands")

    def run_text(self, text: str) -> None:
        """Commands in nft's own syntax, one transaction (for what nft 1.0.6's JSON cannot say,
        e.g. a set's `flags dynamic`)."""
        self._run(text, what="commands")

    def list(self, what: str) -> dict[str, Any]:
        """`nft -j list …` as a dict, e.g. list("table bridge hostvlan")."""
        return self.list_obj(_list_obj(what))

    def list_obj(self, obj: dict[str, Any]) -> dict[str, Any]:
        """List one JSON object spec, e.g. {"set": {"family": …, "table": …, "name": …}}."""
        return self._run(json.dumps({"nftables": [{"list": obj}]}), what=f"list {next(iter(obj))}")

    def list_counted(self, obj: dict[str, Any]) -> dict[str, Any]:
        """`list_obj` without handles: with them nft 1.0.6 prints a set element's counter as null."""
        if self._ctx is None:
            raise DatapathError("nftables context is closed")
        self._lib.nft_ctx_output_set_flags(self._ctx, _NFT_CTX_OUTPUT_JSON)
        try:
            return self.list_obj(obj)
        finally:
            self._lib.nft_ctx_output_set_flags(self._ctx, _NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE)

    def _run(self, text: str, what: str) -> dict[str, Any]:
        if self._ctx is None:
            raise DatapathError("nftables context is closed")
        rc = self._lib.nft_run_cmd_from_buffer(self._ctx, text.encode())
        out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
        err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise DatapathError(f"nftables rejected {what}: {err.strip() or 'rc=' + str(rc)}", errno=_errno_of(err))
        return json.loads(out) if out.strip() else {}


# libnftables reports the kernel's error only as text ("Error: No such file or directory", "Error:
# Could not process rule: Device or resource busy"): the errno is recovered from its strerror
_KNOWN = (errno.ENOENT, errno.EEXIST, errno.EINVAL, errno.EPERM, errno.EBUSY, errno.ENOSPC, errno.E2BIG, errno.ENOMEM)
_BY_TEXT = {os.strerror(code): code for code in _KNOWN}
_CAUSE = re.compile(r"Error: (?:Could not process rule: )?([^\n;]+)")


def _errno_of(err: str) -> int | None:
    for m in _CAUSE.finditer(err):
        code = _BY_TEXT.get(m.group(1).strip())
        if code is not None:
            return code
    return None


def _list_obj(what: str) -> dict[str, Any]:
    kind, family, table = what.split()
    if kind != "table":
        raise ValueError(what)
    return {"table": {"family": family, "name": table}}
