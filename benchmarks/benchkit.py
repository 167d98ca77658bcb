"""Scratch kernel resources shared by the benchmarks.

The benchmarks run as scripts (``.venv/bin/python benchmarks/bench_x.py``), which puts
this directory on ``sys.path``: they import this module as ``benchkit``. Everything made
here is named ``tpf-bench-*`` and removed by whoever made it (:func:`program_bench`: the
programs' benchmarks' common set-up and teardown).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.indexmap import PinnedCandidateIndex
from tpfilter.indexsync import IndexKeeper
from tpfilter.programs import ProgramManager
from tpfilter_dev.cgroupfs import rmdir_cgroup

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


STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


@dataclass
class ProgramBench:
    """What :func:`program_bench` made: a started ProgramManager on a scratch pin dir, its
    filter maps and candidate index, and scratch cgroups by name."""

    manager: ProgramManager
    maps: PinnedFilterMaps
    index: PinnedCandidateIndex
    cgroups: dict[str, Path]

    def cgroup_id(self, name: str) -> int:
        return os.stat(self.cgroups[name]).st_ino

    def select(self, desired: Mapping[int, frozenset[int]]) -> None:
        """Policy ID -> the cgroup IDs it selects: the index first, then the filter maps,
        in the order the engine writes them."""
        keeper = IndexKeeper(self.index)
        keeper.before(desired)
        failed = self.maps.install_many([(i, ids, 8) for i, ids in desired.items()])
        if failed:
            raise SystemExit(f"filter map install failed: {list(failed.items())[:3]}")
        keeper.after(inner_maps_ok=True)


@contextmanager
def program_bench(cgroups: Sequence[str], **manager_args: Any) -> Iterator[ProgramBench]:
    """The load / measure / teardown every program benchmark shares: scratch cgroups
    ``tpf-bench-<name>-<tag>``, a pin dir, the manager started (events to /dev/null) and
    kernel.bpf_stats_enabled on; afterwards everything removed and the sysctl restored,
    whatever happened in between."""
    mount = find_cgroup2_mount()
    tag = uuid.uuid4().hex[:8]
    pin_dir = BPF_ROOT / f"tpf-bench-{tag}"
    made = {name: mount / f"tpf-bench-{name}-{tag}" for name in cgroups}
    for path in made.values():
        path.mkdir()
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    index = PinnedCandidateIndex(pin_dir=pin_dir)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    manager = ProgramManager(
        pin_dir=pin_dir,
        node_name="bench",
        resolve=lambda c: None,
        events_out=devnull,
        **manager_args,
    )
    stats_before = STATS_SYSCTL.read_text().strip() if STATS_SYSCTL.exists() else None
    try:
        manager.start(events_thread=False)
        if stats_before is not None:
            STATS_SYSCTL.write_text("1")
        yield ProgramBench(manager, maps, index, made)
    finally:
        if stats_before is not None:
            STATS_SYSCTL.write_text(stats_before)
        manager.close()
        maps.close()
        index.close()
        index.remove_pins()
        maps.remove_pins()
        devnull.close()
        for path in made.values():
            rmdir_cgroup(path)
