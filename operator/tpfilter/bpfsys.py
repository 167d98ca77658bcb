"""The raw bpf(2) and libbcc calls behind :mod:`tpfilter.bpfmaps`, typed and kept small.

Why a module of its own: bcc's libbcc already wraps most map operations (create a plain
map, look up, update, delete, iterate, read object info), and those are used as they are.
What it does not export is what a *pinned map-of-maps managed from userspace* needs:

* ``BPF_MAP_CREATE`` with ``inner_map_fd`` (bcc only makes a hash-of-maps while compiling
  a C program, and its ``bcc_create_map_xattr`` takes a bcc-private struct whose layout
  changes between bcc releases);
* ``BPF_MAP_GET_FD_BY_ID`` (a userspace lookup in a map-of-maps returns the inner map's
  *ID*, not an fd);
* ``BPF_OBJ_PIN`` / ``BPF_OBJ_GET`` (bpffs pins).

Those go straight to the bpf(2) syscall through ctypes with the kernel's ``union bpf_attr``
laid out below. Everything here raises :class:`OSError` carrying the errno and a message
that says what was attempted, so a failure deep in a reconcile loop is still readable.

Keys and values cross this boundary as ``bytes`` in host byte order, which is what the
kernel and BPF programs use; callers pack them with :mod:`struct` (``"=Q"``, ``"=I"``).
"""

from __future__ import annotations

import ctypes as ct
import errno
import functools
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

# enum bpf_cmd (include/uapi/linux/bpf.h): only the commands used here.
BPF_MAP_CREATE = 0
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_MAP_GET_FD_BY_ID = 14
BPF_MAP_UPDATE_BATCH = 26
BPF_MAP_DELETE_BATCH = 27

# enum bpf_map_type
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_HASH_OF_MAPS = 13

# map_flags and update flags
BPF_F_NO_PREALLOC = 1
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2

BPF_OBJ_NAME_LEN = 16

# The bpf(2) syscall number is per architecture; unknown ones are reported, not guessed.
_SYSCALL_NR: dict[str, int] = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361}


class _MapCreateAttr(ct.Structure):
    """The BPF_MAP_CREATE member of ``union bpf_attr`` (through ``map_extra``, 72 bytes)."""

    _fields_ = (
        ("map_type", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("inner_map_fd", ct.c_uint32),
        ("numa_node", ct.c_uint32),
        ("map_name", ct.c_char * BPF_OBJ_NAME_LEN),
        ("map_ifindex", ct.c_uint32),
        ("btf_fd", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("map_extra", ct.c_uint64),
    )


class _ObjAttr(ct.Structure):
    """The BPF_OBJ_PIN / BPF_OBJ_GET member (``pathname`` is a user pointer as u64)."""

    _fields_ = (
        ("pathname", ct.c_uint64),
        ("bpf_fd", ct.c_uint32),
        ("file_flags", ct.c_uint32),
    )


class _GetIdAttr(ct.Structure):
    """The BPF_*_GET_FD_BY_ID member (``start_id`` is a union with ``map_id``)."""

    _fields_ = (
        ("map_id", ct.c_uint32),
        ("next_id", ct.c_uint32),
        ("open_flags", ct.c_uint32),
    )


class _BatchAttr(ct.Structure):
    """The BPF_MAP_*_BATCH member (``keys``/``values`` are user pointers as u64)."""

    _fields_ = (
        ("in_batch", ct.c_uint64),
        ("out_batch", ct.c_uint64),
        ("keys", ct.c_uint64),
        ("values", ct.c_uint64),
        ("count", ct.c_uint32),
        ("map_fd", ct.c_uint32),
        ("elem_flags", ct.c_uint64),
        ("flags", ct.c_uint64),
    )


class _BpfAttr(ct.Union):
    """``union bpf_attr``, reduced to the members used here.

    The kernel accepts a shorter attr than its own (it zero-fills the rest) and checks that
    bytes past each command's last field are zero; a zero-initialised ctypes union of the
    members we use satisfies both.
    """

    _fields_ = (
        ("map_create", _MapCreateAttr),
        ("obj", _ObjAttr),
        ("get_id", _GetIdAttr),
        ("batch", _BatchAttr),
    )


class _BpfMapInfo(ct.Structure):
    """``struct bpf_map_info`` as filled by BPF_OBJ_GET_INFO_BY_FD (80 bytes, 8-aligned)."""

    _fields_ = (
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * BPF_OBJ_NAME_LEN),
        ("ifindex", ct.c_uint32),
        ("btf_vmlinux_value_type_id", ct.c_uint32),
        ("netns_dev", ct.c_uint64),
        ("netns_ino", ct.c_uint64),
        ("btf_id", ct.c_uint32),
        ("btf_key_type_id", ct.c_uint32),
        ("btf_value_type_id", ct.c_uint32),
        ("_pad", ct.c_uint32),
        ("map_extra", ct.c_uint64),
    )


@dataclass(frozen=True, slots=True)
class MapInfo:
    """What the kernel reports about a map (BPF_OBJ_GET_INFO_BY_FD)."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


def errno_name(err: int) -> str:
    """``E2BIG`` for 7, so messages show the symbol people grep for."""
    return errno.errorcode.get(err, f"errno {err}")


def _raise(what: str, err: int) -> NoReturn:
    raise OSError(err, f"{what}: {os.strerror(err)} ({errno_name(err)})")


@functools.cache
def _libc() -> Any:
    libc = ct.CDLL(None, use_errno=True)
    libc.syscall.restype = ct.c_long
    libc.syscall.argtypes = (ct.c_long, ct.c_int, ct.c_void_p, ct.c_uint)
    return libc


@functools.cache
def libbcc() -> Any:
    """libbcc with the prototypes used here declared.

    Loaded on first use, not at import, so this module (and tests that only want to skip)
    imports on machines without bcc. It is a separate handle from ``bcc.libbcc.lib``, so
    the argtypes set here cannot disturb bcc's own Python bindings.
    """
    lib = ct.CDLL("libbcc.so.0", use_errno=True)
    lib.bcc_create_map.restype = ct.c_int
    lib.bcc_create_map.argtypes = (
        ct.c_int,  # enum bpf_map_type
        ct.c_char_p,  # name
        ct.c_int,  # key_size
        ct.c_int,  # value_size
        ct.c_int,  # max_entries
        ct.c_int,  # map_flags
    )
    lib.bpf_update_elem.restype = ct.c_int
    lib.bpf_update_elem.argtypes = (ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_ulonglong)
    lib.bpf_lookup_elem.restype = ct.c_int
    lib.bpf_lookup_elem.argtypes = (ct.c_int, ct.c_void_p, ct.c_void_p)
    lib.bpf_delete_elem.restype = ct.c_int
    lib.bpf_delete_elem.argtypes = (ct.c_int, ct.c_void_p)
    lib.bpf_get_next_key.restype = ct.c_int
    lib.bpf_get_next_key.argtypes = (ct.c_int, ct.c_void_p, ct.c_void_p)
    lib.bpf_obj_get_info.restype = ct.c_int
    lib.bpf_obj_get_info.argtypes = (ct.c_int, ct.c_void_p, ct.POINTER(ct.c_uint32))
    return lib


def _sys_bpf(cmd: int, attr: _BpfAttr, what: str) -> int:
    nr = _SYSCALL_NR.get(platform.machine())
    if nr is None:
        _raise(f"{what}: no known bpf(2) syscall number for {platform.machine()}", errno.ENOSYS)
    ct.set_errno(0)
    ret = int(_libc().syscall(nr, cmd, ct.byref(attr), ct.sizeof(attr)))
    if ret < 0:
        _raise(what, ct.get_errno())
    return ret


def _check_bcc(ret: int, what: str) -> int:
    """libbcc returns a negative value on failure; libbpf underneath also sets errno."""
    if ret < 0:
        err = ct.get_errno() or -ret
        _raise(what, err)
    return ret


def _map_name(name: str) -> bytes:
    raw = name.encode()
    # The kernel takes [A-Za-z0-9_.] and at most 15 characters plus the NUL.
    if len(raw) >= BPF_OBJ_NAME_LEN:
        raise ValueError(f"map name {name!r} is longer than {BPF_OBJ_NAME_LEN - 1} bytes")
    return raw


def create_map(
    map_type: int, *, name: str, key_size: int, value_size: int, max_entries: int, flags: int
) -> int:
    """A new map through ``bcc_create_map``; returns its fd (close-on-exec, owned by caller)."""
    ret = libbcc().bcc_create_map(
        map_type, _map_name(name), key_size, value_size, max_entries, flags
    )
    return _check_bcc(
        int(ret),
        f"create map {name!r} (type {map_type}, key {key_size} B, value {value_size} B, "
        f"max_entries {max_entries}, flags {flags:#x})",
    )


def create_map_in_map(
    map_type: int, *, name: str, key_size: int, max_entries: int, flags: int, inner_map_fd: int
) -> int:
    """A new map-of-maps whose inner maps must look like ``inner_map_fd`` (the template).

    Value size is 4: userspace writes an inner map fd and reads back an inner map ID. The
    kernel keeps only the template's metadata, so the caller may close the template.
    """
    attr = _BpfAttr()
    mc = attr.map_create
    mc.map_type = map_type
    mc.key_size = key_size
    mc.value_size = 4
    mc.max_entries = max_entries
    mc.map_flags = flags
    mc.inner_map_fd = inner_map_fd
    mc.map_name = _map_name(name)
    return _sys_bpf(
        BPF_MAP_CREATE,
        attr,
        f"bpf(BPF_MAP_CREATE) map-of-maps {name!r} (type {map_type}, key {key_size} B, "
        f"max_entries {max_entries}, flags {flags:#x}, inner template fd {inner_map_fd})",
    )


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """Insert or replace one element (``flags``: BPF_ANY, BPF_NOEXIST or BPF_EXIST)."""
    k = ct.create_string_buffer(key, len(key))
    v = ct.create_string_buffer(value, len(value))
    ct.set_errno(0)
    ret = int(libbcc().bpf_update_elem(fd, k, v, flags))
    _check_bcc(ret, f"update element {key.hex()} in map fd {fd}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The element's value, or None if the key is absent."""
    k = ct.create_string_buffer(key, len(key))
    v = ct.create_string_buffer(value_size)
    ct.set_errno(0)
    ret = int(libbcc().bpf_lookup_elem(fd, k, v))
    if ret < 0 and (ct.get_errno() or -ret) == errno.ENOENT:
        return None
    _check_bcc(ret, f"look up element {key.hex()} in map fd {fd}")
    return v.raw


def map_delete(fd: int, key: bytes) -> bool:
    """Delete one element; False if it was not there (deleting is idempotent)."""
    k = ct.create_string_buffer(key, len(key))
    ct.set_errno(0)
    ret = int(libbcc().bpf_delete_elem(fd, k))
    if ret < 0 and (ct.get_errno() or -ret) == errno.ENOENT:
        return False
    _check_bcc(ret, f"delete element {key.hex()} from map fd {fd}")
    return True


def map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    """Every key of a hash map, by BPF_MAP_GET_NEXT_KEY starting from a NULL key.

    Not a snapshot: keys added or removed meanwhile may or may not show. tpfilter has one
    writer, which does not iterate and write at the same time.
    """
    lib = libbcc()
    prev: ct.Array[ct.c_char] | None = None
    while True:
        nxt = ct.create_string_buffer(key_size)
        ct.set_errno(0)
        ret = int(lib.bpf_get_next_key(fd, prev, nxt))
        if ret < 0:
            if (ct.get_errno() or -ret) == errno.ENOENT:
                return  # past the last key
            _check_bcc(ret, f"iterate keys of map fd {fd}")
        yield nxt.raw
        prev = nxt


class BatchError(OSError):
    """A batch command stopped at an element: ``done`` elements before it were applied.

    The element at index ``done`` is the one that failed (errno); the ones after it were
    not attempted.
    """

    def __init__(self, err: int, message: str, *, done: int) -> None:
        super().__init__(err, message)
        self.done = done


def _batch(
    cmd: int, name: str, fd: int, keys: bytes, values: bytes | None, count: int, flags: int
) -> None:
    if count <= 0:
        return
    kbuf = ct.create_string_buffer(keys, len(keys))
    vbuf = None if values is None else ct.create_string_buffer(values, len(values))
    attr = _BpfAttr()
    b = attr.batch
    b.keys = ct.addressof(kbuf)
    b.values = 0 if vbuf is None else ct.addressof(vbuf)
    b.count = count
    b.map_fd = fd
    b.elem_flags = flags
    what = f"bpf({name}) of {count} elements in map fd {fd}"
    try:
        _sys_bpf(cmd, attr, what)
    except OSError as e:
        # The kernel writes back how many elements it applied before the failing one.
        done = int(b.count)
        err = e.errno or errno.EIO
        raise BatchError(
            err,
            f"{what}: element {done} failed: {os.strerror(err)} ({errno_name(err)})",
            done=done,
        ) from None


def map_update_batch(
    fd: int, keys: bytes, values: bytes, *, key_size: int, value_size: int, flags: int = BPF_ANY
) -> None:
    """BPF_MAP_UPDATE_BATCH: ``keys``/``values`` are the packed arrays of one batch.

    On a map-of-maps the kernel waits for one RCU grace period for the whole batch instead
    of one per element. Raises :class:`BatchError` (with ``done``) if an element fails.
    """
    count = len(keys) // key_size
    if len(keys) != count * key_size or len(values) != count * value_size:
        raise ValueError("batch keys/values are not whole elements of the same count")
    _batch(BPF_MAP_UPDATE_BATCH, "BPF_MAP_UPDATE_BATCH", fd, keys, values, count, flags)


def map_delete_batch(fd: int, keys: bytes, *, key_size: int) -> None:
    """BPF_MAP_DELETE_BATCH: delete every key of the packed array; a missing key stops the
    batch with ENOENT (:class:`BatchError`, ``done`` = keys deleted before it)."""
    count = len(keys) // key_size
    if len(keys) != count * key_size:
        raise ValueError("batch keys are not whole elements")
    _batch(BPF_MAP_DELETE_BATCH, "BPF_MAP_DELETE_BATCH", fd, keys, None, count, 0)


def map_info(fd: int) -> MapInfo:
    """BPF_OBJ_GET_INFO_BY_FD through libbcc's ``bpf_obj_get_info``."""
    info = _BpfMapInfo()
    length = ct.c_uint32(ct.sizeof(info))
    ct.set_errno(0)
    ret = int(libbcc().bpf_obj_get_info(fd, ct.byref(info), ct.byref(length)))
    _check_bcc(ret, f"bpf(BPF_OBJ_GET_INFO_BY_FD) on map fd {fd}")
    return MapInfo(
        type=info.type,
        id=info.id,
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        map_flags=info.map_flags,
        name=info.name.decode(errors="replace"),
    )


def obj_pin(fd: int, path: Path) -> None:
    """Pin a BPF object at ``path`` on a bpffs (EEXIST if something is pinned there)."""
    raw = ct.create_string_buffer(os.fsencode(path))
    attr = _BpfAttr()
    attr.obj.pathname = ct.addressof(raw)
    attr.obj.bpf_fd = fd
    _sys_bpf(BPF_OBJ_PIN, attr, f"bpf(BPF_OBJ_PIN) fd {fd} at {path} (is it on a bpffs?)")


def obj_get(path: Path) -> int:
    """A new fd to the BPF object pinned at ``path`` (ENOENT if nothing is pinned there)."""
    raw = ct.create_string_buffer(os.fsencode(path))
    attr = _BpfAttr()
    attr.obj.pathname = ct.addressof(raw)
    return _sys_bpf(BPF_OBJ_GET, attr, f"bpf(BPF_OBJ_GET) {path}")


def map_fd_by_id(map_id: int) -> int:
    """A new fd to the map with this kernel-wide ID (ENOENT once the kernel freed it)."""
    attr = _BpfAttr()
    attr.get_id.map_id = map_id
    return _sys_bpf(BPF_MAP_GET_FD_BY_ID, attr, f"bpf(BPF_MAP_GET_FD_BY_ID) map id {map_id}")


def fdinfo(fd: int) -> dict[str, str]:
    """``/proc/self/fdinfo/<fd>`` as a dict (for a map: map_type, max_entries, memlock, ...)."""
    fields: dict[str, str] = {}
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip()] = value.strip()
    return fields


def memlock(fd: int) -> int:
    """The kernel's own accounting of a map's memory, in bytes (fdinfo ``memlock``).

    On current kernels this is the map's ``map_mem_usage``: for a no-prealloc hash it
    follows the live entries, which is what the sizing rules are about.
    """
    info = fdinfo(fd)
    if "memlock" not in info:
        _raise(f"read memlock of fd {fd}: not a BPF map", errno.EINVAL)
    return int(info["memlock"])
