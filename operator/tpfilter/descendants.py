"""Child cgroups of a selected container: which cgroup *levels* the BPF check walks.

The problem: cgroup v2 lets a process create cgroups below its own (where it may write
its cgroup directory: a privileged container, or one with a delegated cgroup namespace)
and move itself there. ``bpf_get_current_cgroup_id()`` then returns the child's ID, which
is in no policy map. A filter that only looks the current cgroup up is escaped that way.

How ``bpf/policy_filter.h`` closes it: a process belongs to a selected container if its
cgroup *or one of its ancestors* is in the policy's inner map. The BPF helper
``bpf_get_current_ancestor_cgroup_id(level)`` returns the ID of the current cgroup's
ancestor at an absolute depth (0 = the root cgroup), so the check is one exact lookup and
then, on a miss, one lookup per level at which a container can be. Which levels those
are is written by the agent into a pinned one-element array next to the outer map
(``<pin_dir>/policy_filter_maps_levels``): a u64 bitmask, bit ``L`` set when some cgroup
in some inner map is at depth ``L`` (kubepods containers are at 3 to 5 levels, so 1 to 3
bits). Bit 63 (:data:`WALK_ALL`) means "a level could not be determined: try every level".

Why this and not a descendant map filled from the cgroup_mkdir tracepoint (what Tetragon's
cgtracker does): measured on the same machine (docs/scale.md), the walk adds one helper
call to a miss (~28 ns there) and a helper call plus a lookup to a match in a child cgroup
(~58 ns), a descendant map one lookup to a miss (~18 ns) and ~53 ns to a child; close. But
the walk

* has no state per cgroup: nothing to fill, nothing to remove on rmdir, nothing stale,
  nothing to scan when a container is adopted with children it made earlier;
* cannot be exhausted: a descendant map has a capacity, and a process that makes enough
  cgroups to fill it escapes through the next one (fail-open); the walk has no capacity;
* needs no program attached for the whole node lifetime (a tracker that is not running,
  e.g. while the agent restarts, misses mkdirs for good), and no kernel struct layouts
  (``cgrp->kn->id`` on the mkdir tracepoint would need BTF offsets or CO-RE, which bcc
  lacks): only two helpers.

This module is the userspace half: the absolute level of a cgroup, from its ID. The
kernel resolves a cgroup ID (the kernfs node ID, also the directory's inode number) to
the directory with ``open_by_handle_at`` (a kernfs file handle *is* the 8-byte ID); the
level is the number of path components below the cgroup2 mount, which must show the
hierarchy root (its inode is 1, the root cgroup's ID) for levels to be absolute.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import errno
import functools
import logging
import os
from pathlib import Path
from typing import Any, Final, Protocol

from tpfilter.cgroups import CgroupMountError, find_cgroup2_mount

log = logging.getLogger(__name__)

__all__ = [
    "GONE",
    "MAX_LEVEL",
    "ROOT_CGROUP_ID",
    "UNKNOWN",
    "WALK_ALL",
    "CgroupFsLevels",
    "LevelResolver",
    "mask_for",
]

# Bits 0..62 are levels; bit 63 says "walk every level". Keep in sync with policy_filter.h.
MAX_LEVEL: Final = 62
WALK_ALL: Final = 1 << 63
ROOT_CGROUP_ID: Final = 1  # the root cgroup's kernfs node ID (and inode) on cgroup v2

# What a resolver answers besides a level.
GONE: Final = -1  # the cgroup does not exist (removed): no process can be in it
UNKNOWN: Final = -2  # cannot tell (no permission, namespaced mount, ...): walk every level

_FILEID_KERNFS = 0xFE  # include/linux/exportfs.h: a kernfs handle is the u64 node ID
# ENOTDIR: the ID is a kernfs *file* (e.g. a cgroup.procs), not a cgroup: holds no process.
_GONE_ERRNOS = frozenset({errno.ESTALE, errno.ENOENT, errno.ENOTDIR})
_CACHE_LIMIT = 65536


class LevelResolver(Protocol):
    """Gives the absolute cgroup v2 depth of a cgroup ID, or :data:`GONE` / :data:`UNKNOWN`."""

    def level(self, cgroup_id: int) -> int:
        """0 for the root cgroup, 1 for its children, ..."""
        ...


def mask_for(level: int) -> int:
    """The bit(s) of the levels map that make the BPF check look at ``level``."""
    if level == GONE:
        return 0
    if 0 <= level <= MAX_LEVEL:
        return 1 << level
    return WALK_ALL  # UNKNOWN, or deeper than the map can say


class _FileHandle(ct.Structure):
    _fields_ = (
        ("handle_bytes", ct.c_uint),
        ("handle_type", ct.c_int),
        ("f_handle", ct.c_uint64),
    )


@functools.cache
def _libc() -> Any:
    libc = ct.CDLL(None, use_errno=True)
    libc.open_by_handle_at.restype = ct.c_int
    libc.open_by_handle_at.argtypes = (ct.c_int, ct.c_void_p, ct.c_int)
    return libc


class CgroupFsLevels:
    """:class:`LevelResolver` on the cgroup2 filesystem, with open_by_handle_at (root).

    Answers are cached: cgroup IDs are never reused (64-bit kernfs IDs), so a level, or
    "gone", stays true. The cache is cleared when it reaches 65,536 IDs, which bounds
    memory; a cleared ID costs one more open (about 35 us on a 2-CPU VM).
    """

    def __init__(self, mount: str | os.PathLike[str] | None = None) -> None:
        self._mount_arg = None if mount is None else Path(mount)
        self._mount: Path | None = None
        self._mount_fd = -1
        self._absolute = False
        self._cache: dict[int, int] = {}
        self._warned = False

    def _open_mount(self) -> int:
        if self._mount_fd >= 0:
            return self._mount_fd
        mount = self._mount_arg if self._mount_arg is not None else find_cgroup2_mount()
        fd = os.open(mount, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # Levels count from the hierarchy root; a mount of a sub-tree (cgroup namespace,
        # bind mount) cannot say how deep its own root is.
        self._absolute = os.fstat(fd).st_ino == ROOT_CGROUP_ID
        if not self._absolute:
            log.warning(
                "%s is not the root of the cgroup v2 hierarchy (cgroup namespace?): child "
                "cgroups of containers are matched by trying every level",
                mount,
            )
        self._mount, self._mount_fd = mount, fd
        return fd

    def level(self, cgroup_id: int) -> int:
        cached = self._cache.get(cgroup_id)
        if cached is not None:
            return cached
        answer = self._resolve(cgroup_id)
        if answer != UNKNOWN:  # UNKNOWN may be a passing problem: ask again next time
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[cgroup_id] = answer
        return answer

    def _resolve(self, cgroup_id: int) -> int:
        if cgroup_id == ROOT_CGROUP_ID:
            return 0
        try:
            mount_fd = self._open_mount()
        except (OSError, CgroupMountError) as e:
            self._warn(f"no cgroup2 mount to resolve cgroup levels: {e}")
            return UNKNOWN
        if not self._absolute:
            return UNKNOWN
        handle = _FileHandle(handle_bytes=8, handle_type=_FILEID_KERNFS, f_handle=cgroup_id)
        ct.set_errno(0)
        fd = int(
            _libc().open_by_handle_at(
                mount_fd, ct.byref(handle), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        )
        if fd < 0:
            err = ct.get_errno()
            if err in _GONE_ERRNOS:
                return GONE
            self._warn(f"open_by_handle_at(cgroup {cgroup_id}): {os.strerror(err)}")
            return UNKNOWN
        try:
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError as e:
            self._warn(f"cgroup {cgroup_id}: cannot read its path: {e}")
            return UNKNOWN
        finally:
            os.close(fd)
        assert self._mount is not None
        try:
            relative = path.relative_to(self._mount)
        except ValueError:
            return UNKNOWN  # outside the mount we opened: cannot count from the root
        return len(relative.parts)

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning("%s; child cgroups are matched by trying every level", message)
            self._warned = True

    def close(self) -> None:
        if self._mount_fd >= 0:
            os.close(self._mount_fd)
            self._mount_fd = -1

    def __del__(self) -> None:
        if getattr(self, "_mount_fd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self._mount_fd)
