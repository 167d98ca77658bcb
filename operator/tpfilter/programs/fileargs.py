"""Kprobe arguments compared as a path name: ``file``, ``path``, ``fd`` and ``dentry``. Pure.

All four end in the kprobe program's path walk (bpf/programs/tpf_kprobe.c,
``tpf_kstage_path``), which runs after the filter check, for selected tasks only:

* ``file`` / ``path``: from the dentry up to the root of the process's mount namespace,
  crossing mounts (tpfilter.programs.pathwalk has the offsets);
* ``fd``: the number is looked up in the calling task's file table *at the call*
  (``task->files->fdt->fd[fd]``, bounds-checked against ``max_fds``: bpf/programs/
  tpf_fd.h), then walked as its ``struct file``. An fd that is not open there, or out of
  range, is unreadable and matches no operator (``Not…`` included). Tetragon instead
  remembers fd -> name in a map filled by ``FollowFD`` at ``fd_install`` and kept by
  ``UnfollowFD``/``CopyFD``; resolving at the call needs no such map, so those actions
  are refused as unneeded (tpfilter.programs.actions), not silently ignored;
* ``dentry``: a ``struct dentry *`` has no mount, so its name is walked only up to the
  root of its own file system (Tetragon: "the related path within one mountpoint"); a
  file under a mount at /mnt/x reads as /file, not /mnt/x/file.

The fd table's offsets come from the node's BTF like the walk's: a kernel whose BTF lacks
one refuses ``fd`` naming the member.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tpfilter.programs import btf, layout
from tpfilter.programs.pathwalk import path_offsets

# -D name -> (struct, member): what tpf_fd.h reads.
FD_MEMBERS: Mapping[str, btf.MemberPath] = {
    "TPF_FOFF_TASK_FILES": ("task_struct", "files"),
    "TPF_FOFF_FILES_FDT": ("files_struct", "fdt"),
    "TPF_FOFF_FDT_MAX_FDS": ("fdtable", "max_fds"),
    "TPF_FOFF_FDT_FD": ("fdtable", "fd"),
}

# type in a policy -> (the kernel parameter's C types it takes, layout.READ_*)
_INT_PARAMS = frozenset(
    {"int", "unsigned int", "long", "long int", "unsigned long", "long unsigned int", "u32", "s32"}
)
PATH_TYPES: Mapping[str, tuple[frozenset[str], int]] = {
    "file": (frozenset({"struct file *"}), layout.READ_FILE),
    "path": (frozenset({"struct path *"}), layout.READ_PATH),
    "fd": (_INT_PARAMS, layout.READ_FD),
    "dentry": (frozenset({"struct dentry *"}), layout.READ_DENTRY),
}


def fd_offsets(kernel: Any) -> dict[str, int] | str:
    """The fd table's offsets by -D name, or why an fd cannot be resolved on this kernel."""
    return btf.offsets(kernel, FD_MEMBERS)


def fd_cflags(kernel: Any) -> list[str]:
    """-D flags that compile the fd lookup in (with the path walk), none where it cannot."""
    return btf.feature_cflags("TPF_WITH_FD", fd_offsets(kernel))


def path_reader(
    user_type: str, params: tuple[str, ...] | None, index: int, kernel: Any
) -> int | str:
    """The layout.READ_* of argument ``index`` of a function with parameters ``params``
    (None: a syscall's, which are integers from the user's registers), or why not."""
    c_types, reader = PATH_TYPES[user_type]
    if params is not None and params[index] not in c_types:
        want = "an integer (int, unsigned int, ...)" if user_type == "fd" else next(iter(c_types))
        return f"parameter {index} is {params[index]}, not {want} (type {user_type})"
    if params is None and user_type != "fd":  # a syscall's arguments are user values
        return f"parameter {index} is a syscall argument, not {next(iter(c_types))}"
    walk = path_offsets(kernel)
    if isinstance(walk, str):
        return f"type {user_type}: its path cannot be walked on this node: {walk}"
    if user_type == "fd":
        table = fd_offsets(kernel)
        if isinstance(table, str):
            return f"type fd: the task's file table cannot be read on this node: {table}"
    return reader
