"""The struct offsets the kprobe program's path walk needs, from the node's BTF. Pure.

A ``file`` or ``path`` argument is compared as its path name, which the program builds by
walking from the dentry up to the root of its mount namespace, crossing mounts
(bpf/programs/tpf_kprobe.c, ``tpf_kstage_path``; ``bpf_d_path`` is not allowed in kprobe
programs). ``struct mount`` is private to fs/ (no header has it) and the others change
between kernels, so every offset comes from the running kernel's BTF and goes into the
compile as a -D flag; a kernel whose BTF lacks one gets no path walk, and ``file``/``path``
arguments are refused there with the member named.
"""

from __future__ import annotations

from typing import Any

from tpfilter.programs import btf

# -D name -> (struct, member)
MEMBERS = {
    "TPF_OFF_FILE_PATH": ("file", "f_path"),
    "TPF_OFF_PATH_MNT": ("path", "mnt"),
    "TPF_OFF_PATH_DENTRY": ("path", "dentry"),
    "TPF_OFF_VFSMOUNT_ROOT": ("vfsmount", "mnt_root"),
    "TPF_OFF_DENTRY_PARENT": ("dentry", "d_parent"),
    "TPF_OFF_DENTRY_NAME": ("dentry", "d_name"),
    "TPF_OFF_QSTR_NAME": ("qstr", "name"),
    "TPF_OFF_MOUNT_PARENT": ("mount", "mnt_parent"),
    "TPF_OFF_MOUNT_MOUNTPOINT": ("mount", "mnt_mountpoint"),
    "TPF_OFF_MOUNT_MNT": ("mount", "mnt"),
}


def path_offsets(kernel: Any) -> dict[str, int] | str:
    """The offsets by -D name, or why the walk cannot be compiled for this kernel."""
    return btf.offsets(kernel, MEMBERS)


def path_cflags(kernel: Any) -> list[str]:
    """-D flags that compile the path walk in, none where it cannot be."""
    return btf.feature_cflags("TPF_WITH_PATHS", path_offsets(kernel))
