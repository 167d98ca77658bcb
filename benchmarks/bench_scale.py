"""Scale and per-check cost of the policy filter, on the running kernel. Root only.

Two tables (both go to docs/scale.md):

``check``: nanoseconds per ``policy_filter_check()`` call, for a task in a selected
    container, in a child / grandchild cgroup it made, in another pod's container, in a
    host service and in the root cgroup; with the child-cgroup walk as tpfilter runs it
    (levels where containers are), with the walk disabled (the check before child cgroups
    were handled: children escape), with the fallback that tries every level, and with
    the alternative not chosen (a descendant -> container map, as a cgroup_mkdir tracker
    would fill), and the PID namespace helper alone (what telling a container's own
    process from the runtime's adds to a match). Timed inside the kernel:
    benchmarks/bpf/check_cost.c runs 32 checks between two bpf_ktime_get_ns() per
    BPF_PROG_TEST_RUN, in the measuring task (moved into each cgroup); the best of 5
    medians of 200 runs, minus an empty loop's, over 32. The measuring task must be a
    container's own process, in a PID namespace other than the node's, and no task can
    change its own: so it is a child started like one (tpfilter_dev.contain), told the
    node's namespace.

``load``: total kernel memory (fdinfo memlock of every map) and time to load N filtered
    policies over 110 pods (one container cgroup each, real cgroups at kubepods depth;
    each policy selects 1 to 5 pods), for N = 10, 100, 128, 1,000, 10,000:
    tpfilter's layout (no-prealloc outer map of 16,384 slots, right-sized no-prealloc
    inner maps) loaded one ``install()`` at a time and with ``install_many()`` (one
    BPF_MAP_UPDATE_BATCH per 1,024 policies); and Tetragon's layout (preallocated
    128-slot outer map, preallocated 32,768-entry inner maps, one outer update per
    policy), measured for real where it can hold N (at most 128 policies).

Run: ``sudo .venv/bin/python benchmarks/bench_scale.py [check|load|all] [--quick]``
(``--quick``: one-by-one loads only up to 1,000 policies; 10,000 take ~2 minutes).
Uses scratch pin dirs under /sys/fs/bpf and scratch cgroups, removed afterwards.
"""

from __future__ import annotations

import argparse
import ctypes as ct
import os
import platform
import random
import statistics
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchkit import move_self, scratch_pin_dir
from tpfilter import bpfsys, sizing
from tpfilter.bpfmaps import InstallItem, PinnedFilterMaps, probe
from tpfilter.bpfsrc import PidNamespace, bcc_source, node_pid_namespace
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.descendants import WALK_ALL
from tpfilter.indexmap import PinnedCandidateIndex
from tpfilter.indexsync import IndexKeeper
from tpfilter_dev import contain
from tpfilter_dev.cgroupfs import rmdir_cgroup

HERE = Path(__file__).resolve().parent
CHECK_COST_C = HERE / "bpf" / "check_cost.c"
CHECKS_PER_RUN = 32
RUNS = 200  # test runs per measurement (median)
ROUNDS = 5  # measurements per cell (best)
PODS = 110
COUNTS = (10, 100, 128, 1_000, 10_000)
TETRAGON_SLOTS = 128
TETRAGON_INNER = 32_768
LIMIT = 32_768
BPF_PROG_TEST_RUN = 10
NODE_PIDNS_ENV = "TPF_BENCH_NODE_PIDNS"  # "dev:ino", set for the measuring child


# -- scratch resources ------------------------------------------------------------------


class CgroupTree:
    """Scratch cgroups under the cgroup2 mount, removed deepest first."""

    def __init__(self) -> None:
        self.mount = find_cgroup2_mount()
        self.base = self.mount / f"tpf-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._made: list[Path] = []

    def make(self, relative: str) -> tuple[Path, int]:
        path = self.base
        for part in (None, *Path(relative).parts):
            path = path if part is None else path / part
            if not path.exists():
                path.mkdir()
                self._made.append(path)
        return path, os.stat(path).st_ino

    def close(self) -> None:
        for path in sorted(self._made, key=lambda p: len(p.parts), reverse=True):
            rmdir_cgroup(path)
        self._made.clear()


@contextmanager
def cgroup_tree() -> Iterator[CgroupTree]:
    tree = CgroupTree()
    try:
        yield tree
    finally:
        move_self(tree.mount)  # out of the scratch tree before removing it
        tree.close()


# -- table output -----------------------------------------------------------------------


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (readable as text too)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def machine() -> str:
    cpu = "?"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                mem_kb = int(text.split()[1])
    except OSError:
        pass
    return (
        f"Linux {platform.release()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), "
        f"{mem_kb / 1024 / 1024:.0f} GiB RAM, bpf_jit_enable="
        f"{Path('/proc/sys/net/core/bpf_jit_enable').read_text().strip()}"
    )


# -- part 1: cost per check -------------------------------------------------------------


class _TestRunAttr(ct.Structure):
    """The BPF_PROG_TEST_RUN member of ``union bpf_attr``."""

    _fields_ = (
        ("prog_fd", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("data_in", ct.c_uint64),
        ("data_out", ct.c_uint64),
        ("repeat", ct.c_uint32),
        ("duration", ct.c_uint32),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("ctx_in", ct.c_uint64),
        ("ctx_out", ct.c_uint64),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
        ("_pad", ct.c_uint32),
    )


_LIBC = ct.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ct.c_long


def test_run(prog_fd: int) -> None:
    """Run a raw_tp program once in this task (no repeat: raw_tp test runs refuse it)."""
    attr = _TestRunAttr(prog_fd=prog_fd)
    if _LIBC.syscall(321, BPF_PROG_TEST_RUN, ct.byref(attr), ct.sizeof(attr)) < 0:
        err = ct.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN: {os.strerror(err)}")


class CostProgram:
    def __init__(self, pin_dir: Path, mode: int) -> None:
        from bcc import BPF

        dev, ino = os.environ[NODE_PIDNS_ENV].split(":")
        node = PidNamespace(dev=int(dev), ino=int(ino))
        src = bcc_source(CHECK_COST_C, pin_dir=pin_dir, node_pidns=node)
        flags = [
            *src.cflags,
            f"-DTPF_BENCH_MODE={mode}",
            f"-DTPF_BENCH_N={CHECKS_PER_RUN}",
            "-DTPF_BENCH_POLICY=1",
        ]
        self.bpf: Any = BPF(text=src.text.encode(), cflags=flags)
        self.fd = int(self.bpf.load_func(b"bench_checks", BPF.RAW_TRACEPOINT).fd)

    def measure(self, runs: int = RUNS) -> tuple[float, int]:
        """(median ns per run of 32 checks, "applies" answers in the last run)."""
        out = self.bpf[b"bench_out"]
        samples = []
        for _ in range(runs):
            test_run(self.fd)
            samples.append(int(out[ct.c_int(0)].value))
        return statistics.median(samples), int(out[ct.c_int(1)].value)

    def close(self) -> None:
        self.bpf.cleanup()


def set_mask(maps: PinnedFilterMaps, mask: int) -> None:
    fd = bpfsys.obj_get(maps.levels_path)
    try:
        bpfsys.map_update(fd, struct.pack("=I", 0), struct.pack("=Q", mask))
    finally:
        os.close(fd)


def check_cost() -> str:
    """The check table, measured by a child that is a container's own process (see the
    module docstring)."""
    node = node_pid_namespace()
    mount = find_cgroup2_mount()
    # The cgroup v2 line "0::/path" (on a hybrid host it is not the only line).
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    own = next(line.split("::", 1)[1] for line in lines if line.startswith("0::"))
    command = [sys.executable, __file__, "_check_in_container"]
    done = subprocess.run(
        contain.argv(mount / own.lstrip("/"), command),
        env={**os.environ, NODE_PIDNS_ENV: f"{node.dev}:{node.ino}"},
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return done.stdout.rstrip("\n")


def _check_cost_in_container() -> str:
    with cgroup_tree() as tree, scratch_pin_dir() as pin_dir:
        # Like a systemd-driver node: kubepods.slice / qos slice / pod slice / container
        # scope (under the scratch directory, one level deeper than on a node), and a
        # host service like system.slice/x.service.
        container, container_id = tree.make("kubepods/burstable/pod-a/ctr")
        child, child_id = tree.make("kubepods/burstable/pod-a/ctr/child")
        grandchild, grandchild_id = tree.make("kubepods/burstable/pod-a/ctr/child/grandchild")
        other, _ = tree.make("kubepods/burstable/pod-b/ctr")
        host, _ = tree.make("system/host.service")

        def at(label: str, path: Path) -> str:
            return f"{label} (level {len(path.relative_to(tree.mount).parts)})"

        places = [
            (at("selected container", container), container, True),
            (at("child cgroup it made", child), child, True),
            (at("grandchild", grandchild), grandchild, True),
            (at("other pod's container", other), other, False),
            (at("host service", host), host, False),
            (at("root cgroup", tree.mount), tree.mount, False),
        ]
        with PinnedFilterMaps(pin_dir=pin_dir) as maps:
            maps.install(1, {container_id}, max_entries=8)  # sets the container's level bit
            agent_mask = maps.levels_mask()
            programs = {mode: CostProgram(pin_dir, mode) for mode in (0, 1, 2, 3)}
            try:
                descendants = programs[2].bpf[b"bench_descendants"]
                for cid in (child_id, grandchild_id):
                    descendants[descendants.Key(cid)] = descendants.Leaf(container_id)
                variants: list[tuple[str, int, int | None]] = [
                    ("walk off (before: exact only)", 1, 0),
                    ("tpfilter: walk container levels", 1, agent_mask),
                    ("walk every level (fallback)", 1, WALK_ALL),
                    ("descendant map (not chosen)", 2, None),
                    ("PID namespace helper alone", 3, None),
                ]
                rows = []
                escapes: dict[int, bool] = {}
                for label, path, selected in places:
                    move_self(path)
                    # Rounds interleave the variants, so that a noisy moment of the
                    # (virtual) machine hits all of them; each cell keeps its best round.
                    best: dict[int, float] = {}
                    best_empty = float("inf")
                    for _ in range(ROUNDS):
                        best_empty = min(best_empty, programs[0].measure()[0])
                        for i, (_, mode, mask) in enumerate(variants):
                            if mask is not None:
                                set_mask(maps, mask)
                            total, hits = programs[mode].measure()
                            assert hits in (0, CHECKS_PER_RUN), hits
                            matched = hits == CHECKS_PER_RUN
                            # (mode 3 is right when it never finds the node's namespace)
                            right = not matched if mode == 3 else matched == selected
                            if i != 0 and not right:
                                raise AssertionError(f"{variants[i][0]} is wrong in {label}")
                            best[i] = min(best.get(i, float("inf")), total)
                            escapes[i] = escapes.get(i, False) or (
                                mode != 3 and matched != selected
                            )
                    set_mask(maps, agent_mask)
                    row = [label]
                    for i in range(len(variants)):
                        net = max(0.0, (best[i] - best_empty) / CHECKS_PER_RUN)
                        row.append(f"{net:.0f}" + (" (ESCAPES)" if escapes.pop(i) else ""))
                    row.append(f"{best_empty / CHECKS_PER_RUN:.1f}")
                    rows.append(row)
                move_self(tree.mount)
            finally:
                for program in programs.values():
                    program.close()
            header = ["task's cgroup", *(v[0] for v in variants), "empty loop"]
            return (
                f"ns per policy_filter_check(): best of {ROUNDS} medians of {RUNS} runs of "
                f"{CHECKS_PER_RUN} checks, minus the empty loop, over {CHECKS_PER_RUN}; "
                f"levels mask set by the agent: {agent_mask:#x}\n\n" + table(header, rows)
            )


# -- part 2: memory and load time -------------------------------------------------------


def policies(count: int, pods: Sequence[int], seed: int = 1) -> list[InstallItem]:
    rnd = random.Random(seed)
    items: list[InstallItem] = []
    for policy_id in range(1, count + 1):
        chosen = frozenset(rnd.sample(list(pods), rnd.randint(1, 5)))
        items.append((policy_id, chosen, sizing.target_capacity(len(chosen), limit=LIMIT)))
    return items


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def tpfilter_total_memory(maps: PinnedFilterMaps) -> tuple[int, int]:
    """(outer + levels map, all inner maps), bytes of memlock."""
    fd = bpfsys.obj_get(maps.levels_path)
    try:
        fixed = maps.outer_memlock() + bpfsys.memlock(fd)
    finally:
        os.close(fd)
    return fixed, sum(u.memlock for u in maps.usage())


def load_tpfilter(items: list[InstallItem], *, batch: bool) -> tuple[float, int, int, int, float]:
    """(seconds to load maps and candidate index, fixed bytes, inner bytes, index bytes,
    seconds to delete them all in batches). The index is written as the engine writes it:
    grown before the inner maps, trimmed after."""
    with (
        scratch_pin_dir() as pin_dir,
        PinnedFilterMaps(pin_dir=pin_dir) as maps,
        PinnedCandidateIndex(pin_dir=pin_dir) as index,
    ):
        keeper = IndexKeeper(index)
        desired = {p: frozenset(ids) for p, ids, _ in items}
        try:

            def load() -> None:
                keeper.before(desired)
                if batch:
                    _no_failures(maps.install_many(items))
                else:
                    for policy_id, ids, max_entries in items:
                        maps.install(policy_id, ids, max_entries=max_entries)
                assert keeper.after(inner_maps_ok=True) is None

            seconds = timed(load)
            fixed, inner = tpfilter_total_memory(maps)
            index_bytes = index.usage().memlock
            state = maps.read_all()
            assert {p: s.cgroup_ids for p, s in state.items()} == {p: i for p, i, _ in items}

            def unload() -> None:
                keeper.before({})
                _no_failures(maps.delete_many(p for p, _, _ in items))
                assert keeper.after(inner_maps_ok=True) is None

            unload_seconds = timed(unload)
            assert not maps.read_all() and not index.read_all()
        finally:
            index.remove_pins()
            maps.remove_pins()
    return seconds, fixed, inner, index_bytes, unload_seconds


def _no_failures(failures: dict[int, Any]) -> None:
    assert not failures, failures


def load_tetragon(items: list[InstallItem]) -> tuple[float, int, int]:
    """Tetragon's layout, made the way its agent makes it: (seconds, outer B, inner B)."""
    template = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="tg_tmpl",
        key_size=8,
        value_size=1,
        max_entries=1,
        flags=0,
    )
    try:
        outer = bpfsys.create_map_in_map(
            bpfsys.BPF_MAP_TYPE_HASH_OF_MAPS,
            name="tg_policy_maps",
            key_size=4,
            max_entries=TETRAGON_SLOTS,
            flags=0,
            inner_map_fd=template,
        )
    finally:
        os.close(template)
    inner_fds: list[int] = []
    try:

        def load() -> None:
            for policy_id, ids, _ in items:
                fd = bpfsys.create_map(
                    bpfsys.BPF_MAP_TYPE_HASH,
                    name=f"tg_p{policy_id}",
                    key_size=8,
                    value_size=1,
                    max_entries=TETRAGON_INNER,
                    flags=0,
                )
                inner_fds.append(fd)
                for cgroup_id in ids:
                    bpfsys.map_update(fd, struct.pack("=Q", cgroup_id), b"\x01")
                bpfsys.map_update(outer, struct.pack("=I", policy_id), struct.pack("=I", fd))

        seconds = timed(load)
        return seconds, bpfsys.memlock(outer), sum(bpfsys.memlock(fd) for fd in inner_fds)
    finally:
        for fd in inner_fds:
            os.close(fd)
        os.close(outer)


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def secs(s: float) -> str:
    return f"{s * 1000:,.0f} ms" if s < 10 else f"{s:,.1f} s"


def load_table(*, quick: bool) -> str:
    rows: list[list[str]] = []
    tetragon_per_policy = 0.0  # measured, for the "would be" of counts it cannot hold
    with cgroup_tree() as tree:
        pods = [tree.make(f"kubepods/burstable/pod-{i:03d}/ctr")[1] for i in range(PODS)]
        for count in COUNTS:
            items = policies(count, pods)
            b_secs, fixed, inner, index_bytes, unload = load_tpfilter(items, batch=True)
            if quick and count > 1_000:
                one = "(skipped: --quick)"
            else:
                one = secs(load_tpfilter(items, batch=False)[0])
            if count <= TETRAGON_SLOTS:
                t_secs, t_outer, t_inner = load_tetragon(items)
                tetragon = [mb(t_outer + t_inner), secs(t_secs)]
                tetragon_per_policy = t_inner / count
            else:
                would = tetragon_per_policy * count
                tetragon = [
                    f"impossible: {TETRAGON_SLOTS} slots (would be ~{would / 1e9:,.1f} GB)",
                    "impossible",
                ]
            rows.append(
                [
                    f"{count:,}",
                    mb(fixed + inner + index_bytes),
                    f"{inner / count:,.0f} B",
                    mb(index_bytes),
                    secs(b_secs),
                    one,
                    secs(unload),
                    *tetragon,
                ]
            )
            print(f"  measured {count:,} policies", file=sys.stderr, flush=True)
    header = [
        "policies",
        "tpfilter memory",
        "inner B/policy",
        "candidate index",
        "load: install_many",
        "load: install one by one",
        "unload: delete_many",
        "Tetragon memory",
        "Tetragon load",
    ]
    return (
        f"{PODS} pods (one container cgroup each), every policy selecting 1-5 of them; "
        "tpfilter memory = outer map (16,384 slots, no prealloc) + levels array + all inner "
        "maps + candidate index (loads include writing it); Tetragon = its 128-slot "
        "preallocated outer map + 32,768-entry preallocated "
        "inner maps\n\n" + table(header, rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "part", nargs="?", choices=["check", "load", "all", "_check_in_container"], default="all"
    )
    parser.add_argument("--quick", action="store_true", help="one-by-one loads only to 1,000")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    support = probe()
    if not support.ok:
        print(f"kernel/machine lacks: {support.reason}", file=sys.stderr)
        return 2
    if args.part == "_check_in_container":  # the child of check_cost()
        print(_check_cost_in_container())
        return 0
    print(f"machine: {machine()}\n")
    if args.part in ("check", "all"):
        print(check_cost() + "\n")
    if args.part in ("load", "all"):
        print(load_table(quick=args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
