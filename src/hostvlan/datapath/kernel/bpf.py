"""libbpf through ctypes: load an object, pin it, batch map updates, tcx attach. No process.

Debian's `libbpf1` (1.1) is the loader; the kernel does the rest. Every call that names a
network device by ifindex (tcx attach, detach, query) resolves it in the calling THREAD's
network namespace: callers run these on a thread that lives in the host's namespace.
Map updates and deletions go in batches (`BPF_MAP_*_BATCH`): one syscall per few thousand
elements, never one process (or one syscall) per rule.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from hostvlan.datapath.base import DatapathError

TCX_INGRESS, TCX_EGRESS = 46, 47  # enum bpf_attach_type BPF_TCX_INGRESS/EGRESS (kernel >= 6.6)
F_REPLACE = 1 << 2  # BPF_F_REPLACE
F_BEFORE = 1 << 3  # BPF_F_BEFORE: with no relative program, first in the hook's chain
BPF_FS_MAGIC = 0xCAFE4A11
_BATCH = 4096

_lib: ctypes.CDLL | None = None


class _AttachOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("replace_prog_fd", ctypes.c_int)]


class _BatchOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class _QueryOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.POINTER(ctypes.c_uint32)),
        ("prog_cnt", ctypes.c_uint32),
        ("prog_attach_flags", ctypes.POINTER(ctypes.c_uint32)),
    ]


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise DatapathError(
                "cannot load libbpf.so.1: install the 'libbpf1' package (make setup)", errno=exc.errno
            ) from exc
        vp, i, u32p = ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)
        sig: dict[str, tuple[object, list[object]]] = {
            "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
            "bpf_object__load": (i, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
            "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
            "bpf_program__fd": (i, [vp]),
            "bpf_map__fd": (i, [vp]),
            "bpf_map__set_max_entries": (i, [vp, ctypes.c_uint32]),
            "bpf_obj_pin": (i, [i, ctypes.c_char_p]),
            "bpf_obj_get": (i, [ctypes.c_char_p]),
            "bpf_prog_attach_opts": (i, [i, i, i, ctypes.POINTER(_AttachOpts)]),
            "bpf_prog_detach2": (i, [i, i, i]),
            "bpf_prog_query_opts": (i, [i, i, ctypes.POINTER(_QueryOpts)]),
            "bpf_prog_get_fd_by_id": (i, [ctypes.c_uint32]),
            "bpf_obj_get_info_by_fd": (i, [i, vp, u32p]),
            "bpf_map_update_batch": (i, [i, vp, vp, u32p, ctypes.POINTER(_BatchOpts)]),
            "bpf_map_delete_batch": (i, [i, vp, u32p, ctypes.POINTER(_BatchOpts)]),
            "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, u32p, ctypes.POINTER(_BatchOpts)]),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        _lib = lib
    return _lib


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno() or -rc
        raise DatapathError(f"{what}: {os.strerror(err)}", errno=err)
    return rc


def _err(rc: int) -> int:
    return ctypes.get_errno() or -rc


def ensure_bpffs(path: Path) -> None:
    """Mount a bpffs of our own at `path` unless one is there (mode 0700: root's alone)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if _is_bpffs(path):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.mount(b"bpf", str(path).encode(), b"bpf", 0, b"mode=0700")
    if rc != 0 and not _is_bpffs(path):
        err = ctypes.get_errno()
        raise DatapathError(f"cannot mount a bpffs at {path}: {os.strerror(err)}", errno=err)


def _is_bpffs(path: Path) -> bool:
    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    buf = StatFs()
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.statfs(str(path).encode(), ctypes.byref(buf)) == 0 and buf.f_type == BPF_FS_MAGIC)


def load_and_pin(obj_path: Path, pins: Path, progs: list[str], sizes: dict[str, int], suffix: str = "") -> None:
    """Load the object with maps sized `sizes`, pin each map and program as `pins/<name><suffix>`
    (pins already there are replaced, by rename, so a reader never finds one missing)."""
    lib = _load()
    if not obj_path.exists():
        raise DatapathError(f"BPF object {obj_path} missing: build it with `make setup` (needs clang)")
    obj = lib.bpf_object__open_file(str(obj_path).encode(), None)
    if not obj:
        err = ctypes.get_errno()
        raise DatapathError(f"cannot open BPF object {obj_path}: {os.strerror(err)}", errno=err)
    try:
        for name, size in sizes.items():
            m = lib.bpf_object__find_map_by_name(obj, name.encode())
            if not m:
                raise DatapathError(f"BPF object {obj_path} lacks map {name}")
            _check(lib.bpf_map__set_max_entries(m, size), f"sizing map {name}")
        _check(lib.bpf_object__load(obj), f"loading {obj_path.name} (verifier or kernel refused it)")
        fds: dict[str, int] = {}
        for name in progs:
            p = lib.bpf_object__find_program_by_name(obj, name.encode())
            if not p:
                raise DatapathError(f"BPF object {obj_path} lacks program {name}")
            fds[name] = lib.bpf_program__fd(p)
        for name in sizes:
            fds[name] = lib.bpf_map__fd(lib.bpf_object__find_map_by_name(obj, name.encode()))
        for name, fd in fds.items():
            tmp = pins / f"new_{name}{suffix}"  # bpffs refuses names with dots
            if tmp.exists():
                tmp.unlink()
            _check(lib.bpf_obj_pin(fd, str(tmp).encode()), f"pinning {name} in {pins}")
        for name in fds:
            os.replace(pins / f"new_{name}{suffix}", pins / f"{name}{suffix}")
    finally:
        lib.bpf_object__close(obj)


def obj_get(path: Path) -> int | None:
    """A new fd on the pinned object, None if nothing is pinned there."""
    fd = _load().bpf_obj_get(str(path).encode())
    if fd < 0:
        if _err(fd) == errno.ENOENT:
            return None
        _check(fd, f"opening pinned {path}")
    return int(fd)


def prog_info(fd: int) -> tuple[int, str]:
    """(id, name) of a program."""
    buf = ctypes.create_string_buffer(256)
    n = ctypes.c_uint32(256)
    _check(_load().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(n)), "reading program info")
    raw = buf.raw
    return int.from_bytes(raw[4:8], "little"), raw[64:80].split(b"\0", 1)[0].decode()


def prog_fd_by_id(prog_id: int) -> int | None:
    fd = _load().bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        if _err(fd) == errno.ENOENT:
            return None
        _check(fd, f"opening program {prog_id}")
    return int(fd)


def tcx_egress_ids(ifindex: int, hook: int = TCX_EGRESS) -> list[int]:
    """Ids of the programs attached at the device's tcx egress (or `hook`) hook, in order."""
    ids = (ctypes.c_uint32 * 64)()
    opts = _QueryOpts(ctypes.sizeof(_QueryOpts), 0, 0, ids, 64, None)
    rc = _load().bpf_prog_query_opts(ifindex, hook, ctypes.byref(opts))
    if rc < 0 and _err(rc) == errno.ENODEV:
        return []
    _check(rc, f"querying tcx egress of ifindex {ifindex}")
    return list(ids[: opts.prog_cnt])


def tcx_egress_programs(ifindex: int, hook: int = TCX_EGRESS) -> Iterator[tuple[int, str, int]]:
    """(id, name, fd) of each program at the device's tcx egress hook; each fd is closed once
    the caller moves past it."""
    for prog_id in tcx_egress_ids(ifindex, hook):
        fd = prog_fd_by_id(prog_id)
        if fd is None:
            continue  # detached meanwhile
        try:
            yield prog_id, prog_info(fd)[1], fd
        finally:
            close(fd)


def tcx_attach(
    prog_fd: int, ifindex: int, replace_fd: int | None = None, hook: int = TCX_EGRESS, flags: int = 0
) -> None:
    flags |= F_REPLACE if replace_fd is not None else 0
    opts = _AttachOpts(ctypes.sizeof(_AttachOpts), flags, replace_fd or 0)
    _check(_load().bpf_prog_attach_opts(prog_fd, ifindex, hook, ctypes.byref(opts)), f"tcx attach to {ifindex}")


def tcx_detach(prog_fd: int, ifindex: int, hook: int = TCX_EGRESS) -> None:
    rc = _load().bpf_prog_detach2(prog_fd, ifindex, hook)
    if rc < 0 and _err(rc) not in (errno.ENOENT, errno.ENODEV):
        _check(rc, f"tcx detach from {ifindex}")


def _chunks(data: bytes, size: int) -> Iterator[tuple[bytes, int]]:
    step = size * _BATCH
    for off in range(0, len(data), step):
        part = data[off : off + step]
        yield part, len(part) // size


def update(fd: int, keys: bytes, values: bytes, key_size: int, value_size: int) -> None:
    """Add or overwrite elements, `keys`/`values` packed back to back."""
    lib = _load()
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    for (k, n), (v, _) in zip(_chunks(keys, key_size), _chunks(values, value_size), strict=True):
        count = ctypes.c_uint32(n)
        rc = lib.bpf_map_update_batch(fd, k, v, ctypes.byref(count), ctypes.byref(opts))
        _check(rc, f"updating {n} map elements")


def delete(fd: int, keys: bytes, key_size: int) -> None:
    """Delete elements; keys already absent are skipped."""
    lib = _load()
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    for k, n in _chunks(keys, key_size):
        while n:
            count = ctypes.c_uint32(n)
            rc = lib.bpf_map_delete_batch(fd, k, ctypes.byref(count), ctypes.byref(opts))
            if rc >= 0:
                break
            if _err(rc) != errno.ENOENT:
                _check(rc, f"deleting {n} map elements")
            done = count.value + 1  # the batch stopped at an absent key: skip it, go on
            k, n = k[done * key_size :], n - done


def dump(fd: int, key_size: int, value_size: int) -> list[tuple[bytes, bytes]]:
    """Every element of a hash map, in batches."""
    lib = _load()
    opts = _BatchOpts(ctypes.sizeof(_BatchOpts), 0, 0)
    out: list[tuple[bytes, bytes]] = []
    keys = ctypes.create_string_buffer(key_size * _BATCH)
    vals = ctypes.create_string_buffer(value_size * _BATCH)
    in_batch = ctypes.c_uint64(0)
    out_batch = ctypes.c_uint64(0)
    first = True
    while True:
        count = ctypes.c_uint32(_BATCH)
        rc = lib.bpf_map_lookup_batch(
            fd,
            None if first else ctypes.byref(in_batch),
            ctypes.byref(out_batch),
            keys,
            vals,
            ctypes.byref(count),
            ctypes.byref(opts),
        )
        done = rc < 0 and _err(rc) == errno.ENOENT
        if rc < 0 and not done:
            _check(rc, "reading a map")
        kr, vr = keys.raw, vals.raw
        for i in range(count.value):
            out.append((kr[i * key_size : (i + 1) * key_size], vr[i * value_size : (i + 1) * value_size]))
        if done:
            return out
        in_batch.value = out_batch.value
        first = False


def close(fd: int) -> None:
    os.close(fd)


def obj_get_all(pins: Path, names: Iterable[str], tag: str) -> dict[str, int] | None:
    """Fds on the objects pinned as `pins/NAME-TAG`, one per name; None (and nothing left
    open) unless every one of them is pinned."""
    fds: dict[str, int] = {}
    for name in names:
        fd = obj_get(pins / f"{name}-{tag}")
        if fd is None:
            for f in fds.values():
                close(f)
            return None
        fds[name] = fd
    return fds
