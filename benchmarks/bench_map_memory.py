"""Kernel memory per policy map, and the cost of keeping maps right-sized. Root only.

Why: tpfilter's claim is that sizing each policy's inner map to its content (with
BPF_F_NO_PREALLOC) costs a small fraction of Tetragon's fixed 32,768-entry preallocated
maps, and that keeping the size right (rebuild + atomic swap) is cheap. This measures both
on the running kernel, with the kernel's own accounting (fdinfo ``memlock``):

* memory at 0, 1, 8, 64 and 1,024 selected cgroups for
  (a) a preallocated 32,768-entry inner map (what Tetragon does),
  (b) the same without prealloc (the one-flag "seed fix"),
  (c) tpfilter's maps sized by ``sizing.target_capacity(n, limit=32768)``, made through
      PinnedFilterMaps, next to
  (d) the floor: a no-prealloc map of exactly ``max(n, 1)`` entries holding the n IDs (the
      least any hash map holding them costs on this kernel);
  all maps are alive at the same time, in one run;
* the time to apply 10,000 cgroup adds across 100 policies through PinnedFilterMaps:
  by installing full sets, and by single in-place updates that rebuild (install) when
  ``sizing.needs_rebuild`` says so, as the engine does.

Run: ``sudo .venv/bin/python benchmarks/bench_map_memory.py``. Uses and removes a
scratch pin directory under /sys/fs/bpf; never touches /sys/fs/bpf/tpfilter.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchkit import scratch_pin_dir
from tpfilter import bpfsys, sizing
from tpfilter.bpfmaps import PinnedFilterMaps, probe

LIMIT = 32_768
SIZES = (0, 1, 8, 64, 1024)
POLICIES = 100
ADDS = 10_000
FIRST_CGROUP_ID = 1 << 32  # fake IDs in the range real cgroup inode numbers use


def standalone_map(max_entries: int, *, prealloc: bool, entries: int) -> int:
    """A u64 -> u8 hash like an inner map, filled with ``entries`` IDs; returns its fd."""
    fd = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="tpf_bench",
        key_size=8,
        value_size=1,
        max_entries=max_entries,
        flags=0 if prealloc else bpfsys.BPF_F_NO_PREALLOC,
    )
    for i in range(entries):
        bpfsys.map_update(fd, (FIRST_CGROUP_ID + i).to_bytes(8, sys.byteorder), b"\x01")
    return fd


def fmt_bytes(n: float) -> str:
    return f"{n:,.0f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def memory_table(pin_dir: Path) -> str:
    fds: list[int] = []
    rows: list[list[str]] = []
    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=len(SIZES)) as maps:
        try:
            for policy_id, n in enumerate(SIZES, start=1):
                fd_a = standalone_map(LIMIT, prealloc=True, entries=n)
                fds.append(fd_a)
                fd_b = standalone_map(LIMIT, prealloc=False, entries=n)
                fds.append(fd_b)
                fds.append(standalone_map(max(n, 1), prealloc=False, entries=n))
                capacity = sizing.target_capacity(n, limit=LIMIT)
                maps.install(
                    policy_id, range(FIRST_CGROUP_ID, FIRST_CGROUP_ID + n), max_entries=capacity
                )
            # Read every number only once all maps exist: one run, one kernel state.
            usage = {u.policy_id: u for u in maps.usage()}
            for i, n in enumerate(SIZES):
                a, b, d = (bpfsys.memlock(fd) for fd in fds[3 * i : 3 * i + 3])
                c = usage[i + 1]
                assert c.entries == n
                rows.append(
                    [
                        f"{n:,}",
                        fmt_bytes(a),
                        fmt_bytes(b),
                        f"{c.max_entries:,}",
                        fmt_bytes(c.memlock),
                        fmt_bytes(d),
                        f"{c.memlock / d:,.2f}x",
                        f"{b / c.memlock:,.1f}x",
                        f"{a / c.memlock:,.1f}x",
                    ]
                )
        finally:
            for fd in fds:
                os.close(fd)
        outer = maps.outer_memlock()
    header = [
        "cgroups",
        "(a) prealloc 32768",
        "(b) no-prealloc 32768",
        "(c) max_entries",
        "(c) memlock",
        "(d) floor",
        "(c)/(d)",
        "(b)/(c)",
        "(a)/(c)",
    ]
    return (
        "kernel memory per policy inner map (fdinfo memlock, bytes)\n"
        + table(header, rows)
        + f"\n(outer map, {len(SIZES)} slots, no prealloc: {outer:,} B)"
    )


def plan_of_adds() -> list[tuple[int, int]]:
    """10,000 (policy, cgroup) adds, round-robin over the policies like pods arriving."""
    return [(i % POLICIES + 1, FIRST_CGROUP_ID + i) for i in range(ADDS)]


@dataclass
class Calls:
    """What a strategy asked of PinnedFilterMaps (outer-slot writes are the dear part)."""

    installs: int = 0
    updates: int = 0


def final_sets() -> dict[int, set[int]]:
    sets: dict[int, set[int]] = {}
    for policy_id, cgroup_id in plan_of_adds():
        sets.setdefault(policy_id, set()).add(cgroup_id)
    return sets


def bench_install_full_sets(maps: PinnedFilterMaps) -> Calls:
    """Each policy's final set in one install (a resync after a restart looks like this)."""
    calls = Calls()
    for policy_id, ids in final_sets().items():
        maps.install(policy_id, ids, max_entries=sizing.target_capacity(len(ids), limit=LIMIT))
        calls.installs += 1
    return calls


def bench_incremental(maps: PinnedFilterMaps) -> Calls:
    """One update per add; a rebuild (install of the grown set) when sizing says so."""
    calls = Calls()
    content: dict[int, set[int]] = {p: set() for p in range(1, POLICIES + 1)}
    capacity: dict[int, int] = {}
    for policy_id in content:
        capacity[policy_id] = sizing.target_capacity(0, limit=LIMIT)
        maps.install(policy_id, (), max_entries=capacity[policy_id])
        calls.installs += 1
    for policy_id, cgroup_id in plan_of_adds():
        ids = content[policy_id]
        ids.add(cgroup_id)
        if sizing.needs_rebuild(len(ids), capacity[policy_id], limit=LIMIT):
            capacity[policy_id] = sizing.target_capacity(len(ids), limit=LIMIT)
            maps.install(policy_id, ids, max_entries=capacity[policy_id])
            calls.installs += 1
        else:
            maps.update(policy_id, add=(cgroup_id,), remove=())
            calls.updates += 1
    return calls


def bench_presized_updates(maps: PinnedFilterMaps) -> Calls:
    """Reference: the same single updates into maps already big enough (no rebuilds)."""
    calls = Calls()
    for policy_id, ids in final_sets().items():
        maps.install(policy_id, (), max_entries=sizing.target_capacity(len(ids), limit=LIMIT))
        calls.installs += 1
    for policy_id, cgroup_id in plan_of_adds():
        maps.update(policy_id, add=(cgroup_id,), remove=())
        calls.updates += 1
    return calls


def check_final(maps: PinnedFilterMaps) -> int:
    state = maps.read_all()
    assert {p: set(s.cgroup_ids) for p, s in state.items()} == final_sets()
    return sum(u.memlock for u in maps.usage())


def outer_write_seconds(maps: PinnedFilterMaps, rounds: int = 20) -> float:
    """Time of one install of an empty map: almost all of it is the outer-slot write."""
    start = time.perf_counter()
    for _ in range(rounds):
        maps.install(1, (), max_entries=8)
    return (time.perf_counter() - start) / rounds


def timing_table() -> str:
    rows: list[list[str]] = []
    runs: list[tuple[str, Callable[[PinnedFilterMaps], Calls]]] = [
        ("install of full sets", bench_install_full_sets),
        ("update per add, rebuild on needs_rebuild", bench_incremental),
        ("(reference) update per add, pre-sized", bench_presized_updates),
    ]
    for label, fn in runs:
        with (
            scratch_pin_dir() as pin_dir,
            PinnedFilterMaps(pin_dir=pin_dir, max_policies=POLICIES) as maps,
        ):
            start = time.perf_counter()
            calls = fn(maps)
            seconds = time.perf_counter() - start
            total = check_final(maps)
            rows.append(
                [
                    label,
                    f"{seconds * 1000:,.0f} ms",
                    f"{seconds / ADDS * 1e6:,.1f} us",
                    f"{calls.installs:,}",
                    f"{calls.updates:,}",
                    fmt_bytes(total),
                ]
            )
    with scratch_pin_dir() as pin_dir, PinnedFilterMaps(pin_dir=pin_dir, max_policies=1) as maps:
        swap = outer_write_seconds(maps)
    header = [
        f"{ADDS:,} adds over {POLICIES} policies",
        "total",
        "per add",
        "installs",
        "updates",
        "memlock after",
    ]
    return (
        table(header, rows)
        + f"\none install of an empty map (outer-slot write): {swap * 1000:,.1f} ms"
    )


def main() -> int:
    if os.geteuid() != 0:
        print("needs root (creates BPF maps and pins)", file=sys.stderr)
        return 2
    support = probe()
    if not support.ok:
        print(f"cannot run here: {support.reason}", file=sys.stderr)
        return 2
    print(f"kernel {os.uname().release}\n")
    with scratch_pin_dir() as pin_dir:
        print(memory_table(pin_dir))
    print()
    print(timing_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
