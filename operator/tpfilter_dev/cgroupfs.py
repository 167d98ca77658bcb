"""Removing scratch cgroups: shared by the kubelet stand-in, the kernel tests and benchmarks.

cgroupfs refuses ``rm -r`` (a cgroup is removed by rmdir, leaves first) and a cgroup whose
last process was just killed, even reaped, stays busy for a moment while the kernel finishes
the exit: rmdir is retried on EBUSY for a short while, then the error is raised, so a leak
shows instead of hiding.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from pathlib import Path


def rmdir_cgroup(path: Path, *, timeout: float = 5.0) -> None:
    """rmdir one cgroup, retrying EBUSY up to ``timeout`` seconds; gone already is fine."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def remove_cgroup_tree(top: Path, *, move_to: Path | None = None) -> None:
    """rmdir ``top`` and every cgroup below it, deepest first.

    With ``move_to``, the processes still in each cgroup are moved there first.
    """
    if not top.exists():
        return
    for dirpath, _dirs, _files in os.walk(top, topdown=False):
        path = Path(dirpath)
        if move_to is not None:
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile
                    (move_to / "cgroup.procs").write_text(pid)
        rmdir_cgroup(path)
