"""Scratch kernel resources shared by the benchmarks.

The benchmarks run as scripts (``.venv/bin/python benchmarks/bench_x.py``), which puts
this directory on ``sys.path``: they import this module as ``benchkit``. Everything made
here is named ``tpf-bench-*`` and removed by whoever made it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BPF_ROOT = Path("/sys/fs/bpf")


@contextmanager
def scratch_pin_dir() -> Iterator[Path]:
    """A unique pin dir path under /sys/fs/bpf (not created: PinnedFilterMaps does that),
    removed afterwards with whatever is pinned in it."""
    path = BPF_ROOT / f"tpf-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        if path.exists():
            for entry in path.iterdir():
                entry.unlink()
            path.rmdir()


def move_self(cgroup: Path) -> None:
    """Move the calling process into ``cgroup`` (also a ``preexec_fn``: the child moves
    itself between fork and exec)."""
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
