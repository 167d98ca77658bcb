"""Per-event cost of the generic kprobe program on a hot path (file open), in one run.

This machine's kernel has no kprobes: run it in the VM (Debian's stock kernel in QEMU,
``scripts/build-vm.sh`` builds it), from the repository root:

    sudo PYTHONPATH=operator .venv/bin/python -m tpfilter_dev.vm --timeout 1200 \\
        python benchmarks/bench_kprobe.py [--events 10000] [--rounds 30] [--counts 1,100]

(on a node whose kernel has kprobes, ``sudo .venv/bin/python benchmarks/bench_kprobe.py``
runs it directly).

Every policy is a kprobe on ``do_sys_openat2`` (once per open/openat/openat2 call) with
a selector on its first argument, ``int dfd``: Equal 4444, never matched (the caller
opens relative to AT_FDCWD, -100), action Sigkill, so a selected caller runs the whole
path (candidate index, ``policy_filter_check``, selectors) and is never killed. The
caller is a Python loop of ``os.close(os.open("/dev/null", O_RDONLY))`` started as a
container's process (``tpfilter_dev.contain``: its own cgroup and PID namespace).

Rows: the kprobe detached ("no program": wall time only); N policies loaded where none
selects the caller (each selects one of 50 other cgroups); N loaded where exactly one
selects it. BPF run time per event is the kernel's own statistic
(kernel.bpf_stats_enabled, restored afterwards): run_time_ns / run_cnt of the kprobe
program, its tail-called stages included, read just before and after the loop, which is
the only thing that opens files meanwhile. Wall time per open is measured by the loop.
One caller per cgroup, started once; after each change of the programs both run an
unmeasured warm-up first (under TCG, patched kernel text and new JIT code are translated
again on first use), and every round measures every row, in orders that alternate
(fewer and more policies first, the unselected and the selected caller first).

In the VM the figures are under QEMU's software emulation (TCG): the absolute values are
not what hardware would show, the ratios between rows are what to read. One ProgramManager
(one bcc compile, BPF LSM not probed) serves the whole run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.indexmap import PinnedCandidateIndex
from tpfilter.indexsync import IndexKeeper
from tpfilter.models import Policy, parse_policy
from tpfilter.programs import ProgramManager
from tpfilter.programs.probe import probe_kprobes
from tpfilter.programs.tracefs import find_tracefs
from tpfilter_dev import contain
from tpfilter_dev.cgroupfs import rmdir_cgroup
from tpfilter_dev.vm import IN_VM_ENV

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
FUNCTION = "do_sys_openat2"
NEVER = 4444  # the dfd every selector asks for
OTHER_CGROUPS = 50
VM_COMMAND = (
    "sudo PYTHONPATH=operator .venv/bin/python -m tpfilter_dev.vm --timeout 1200 "
    "python benchmarks/bench_kprobe.py"
)

# The caller: warms up, says "ready", then for each line "N" on stdin opens and closes
# /dev/null N times and prints the loop's seconds; it ends at end of input. Between a line
# in and its answer out it opens nothing else, so the kprobe's run count over that window
# is the loop's (and the parent reads the statistics without opening anything).
LOOP = """\
import os, sys, time
for _ in range(100):
    os.close(os.open("/dev/null", os.O_RDONLY))
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t0 = time.perf_counter()
    for _ in range(n):
        os.close(os.open("/dev/null", os.O_RDONLY))
    print(time.perf_counter() - t0, flush=True)
"""


def policy(i: int) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": f"bench-kprobe-{i}", "uid": f"bench-kprobe-{i}"},
            "spec": {
                "podSelector": {"matchLabels": {"bench": str(i)}},
                "kprobes": [
                    {
                        "call": FUNCTION,
                        "syscall": False,
                        "args": [{"index": 0, "type": "int", "label": "dfd"}],
                        "selectors": [
                            {
                                "matchArgs": [
                                    {"index": 0, "operator": "Equal", "values": [str(NEVER)]}
                                ],
                                "matchActions": [{"action": "Sigkill"}],
                            }
                        ],
                    }
                ],
            },
        }
    )


class ProgStats:
    """(run_time_ns, run_cnt) of a loaded program from its fdinfo, the file kept open so
    that reading it opens nothing (an open would be one more kprobe event)."""

    def __init__(self, prog_fd: int) -> None:
        self._fd = os.open(f"/proc/self/fdinfo/{prog_fd}", os.O_RDONLY)

    def read(self) -> tuple[int, int]:
        os.lseek(self._fd, 0, os.SEEK_SET)
        text = os.read(self._fd, 65536).decode()
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        return int(fields.get("run_time_ns", "0")), int(fields.get("run_cnt", "0"))

    def close(self) -> None:
        os.close(self._fd)


class Caller:
    """The loop, started once as a container's process in ``cgroup`` (its own PID
    namespace: ``tpfilter_dev.contain``), kept for the whole run."""

    def __init__(self, cgroup: Path) -> None:
        command = contain.argv(cgroup, [sys.executable, "-c", LOOP], pid_ns="new")
        self._proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        said = self._readline()
        if said != "ready":
            self.close()
            raise SystemExit(f"bench_kprobe: the caller in {cgroup} did not start ({said!r})")

    def _readline(self) -> str:
        assert self._proc.stdout is not None
        return self._proc.stdout.readline().strip()

    def run(self, n: int, stats: ProgStats | None) -> tuple[float, int, int]:
        """(seconds, BPF run time ns, BPF runs) of n opens; BPF figures 0 without stats."""
        assert self._proc.stdin is not None
        t0, c0 = stats.read() if stats else (0, 0)
        self._proc.stdin.write(f"{n}\n")
        self._proc.stdin.flush()
        said = self._readline()
        t1, c1 = stats.read() if stats else (0, 0)
        try:
            seconds = float(said)
        except ValueError:
            raise SystemExit(f"bench_kprobe: the caller said {said!r}") from None
        return seconds, t1 - t0, c1 - c0

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def progress(message: str) -> None:
    print(f"bench_kprobe: {message}", file=sys.stderr, flush=True)


def print_table(rows: list[tuple[str, ...]]) -> None:
    """A markdown table: the first row is the header, the other columns right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    print(line(rows[0]))
    print(
        "|"
        + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2)) for i, w in enumerate(widths))
        + "|"
    )
    for r in rows[1:]:
        print(line(r))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10000, help="opens per measurement")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--counts", default="1,100", help="numbers of policies loaded")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_kprobe: needs root", file=sys.stderr)
        return 2
    no_kprobes = probe_kprobes(find_tracefs())
    if no_kprobes is not None:
        print(
            f"bench_kprobe: {no_kprobes}.\nRun it in the VM (Debian's stock kernel in QEMU,"
            f" scripts/build-vm.sh), from the repository root:\n    {VM_COMMAND}",
            file=sys.stderr,
        )
        return 2
    counts = sorted({int(c) for c in args.counts.split(",") if c})
    top = max(counts)
    mount = find_cgroup2_mount()
    tag = uuid.uuid4().hex[:8]
    pin_dir = Path("/sys/fs/bpf") / f"tpf-bench-{tag}"
    inside, outside = mount / f"tpf-bench-in-{tag}", mount / f"tpf-bench-out-{tag}"
    others = [mount / f"tpf-bench-o{k}-{tag}" for k in range(OTHER_CGROUPS)]
    for cg in (inside, outside, *others):
        cg.mkdir()
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    index = PinnedCandidateIndex(pin_dir=pin_dir)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    manager = ProgramManager(
        pin_dir=pin_dir,
        node_name="bench",
        resolve=lambda c: None,
        events_out=devnull,
        probe_lsm=False,  # Override is not benchmarked: no second compile for the probe
    )
    stats_before = STATS_SYSCTL.read_text().strip() if STATS_SYSCTL.exists() else None
    none_label = "{:,} loaded, none selects the caller".format
    one_label = "{:,} loaded, 1 selects the caller".format
    labels = ["no program", *map(none_label, counts), *map(one_label, counts)]
    wall: dict[str, list[float]] = {}
    bpf_ns: dict[str, list[float]] = {}
    runs: list[int] = []
    stats: ProgStats | None = None
    callers: list[Caller] = []
    syncs: dict[int, list[float]] = {}
    started = time.monotonic()
    try:
        manager.start(events_thread=False)
        if not manager.available:
            raise SystemExit(f"bench_kprobe: programs unavailable: {manager._unavailable}")
        programs = manager._programs
        if not programs.kprobes:
            raise SystemExit("bench_kprobe: the kprobe program was not loaded")
        compile_seconds = manager.load_report.compile_seconds
        progress(f"programs compiled and loaded ({compile_seconds:.0f} s of compile)")
        if STATS_SYSCTL.exists():
            STATS_SYSCTL.write_text("1")
        stats = ProgStats(programs.bpf.funcs[b"tpf_kprobe"].fd)
        # Policy i selects one of the other cgroups; policy 1 also selects `inside`.
        desired = {
            i: frozenset({os.stat(others[i % OTHER_CGROUPS]).st_ino}) for i in range(1, top + 1)
        }
        desired[1] = desired[1] | {os.stat(inside).st_ino}
        keeper = IndexKeeper(index)
        keeper.before(desired)  # the index first, as the engine writes it
        failed = maps.install_many([(i, ids, 8) for i, ids in desired.items()])
        if failed:
            raise SystemExit(f"bench_kprobe: filter map install failed: {list(failed)[:3]}")
        keeper.after(inner_maps_ok=True)
        policies = [policy(i) for i in range(1, top + 1)]
        callers.append(Caller(outside))
        callers.append(Caller(inside))
        out_caller, in_caller = callers

        def measure(label: str, caller: Caller, attached: bool) -> None:
            seconds, ns, count = caller.run(args.events, stats if attached else None)
            wall.setdefault(label, []).append(seconds / args.events)
            if attached:
                runs.append(count)
                if count:
                    bpf_ns.setdefault(label, []).append(ns / count)

        def warm_up() -> None:
            # After each change, unmeasured: under TCG, code the kernel patched (the kprobe
            # attached or detached) and new JIT code are translated again on first use.
            for caller in callers:
                caller.run(args.events // 5 or 1, None)

        for r in range(args.rounds):
            # Every round visits every configuration, so drift spreads evenly.
            manager.sync([])  # detaches the kprobe
            if f"kprobe/{FUNCTION}" in programs.attached:
                raise SystemExit("bench_kprobe: the kprobe stayed attached without policies")
            warm_up()
            measure("no program", out_caller, attached=False)
            for n in counts[:: -1 if r % 2 else 1]:  # each order in turn
                t0 = time.monotonic()
                statuses = manager.sync([(p, i) for i, p in enumerate(policies[:n], start=1)])
                syncs.setdefault(n, []).append(time.monotonic() - t0)
                bad = [s for s in statuses.values() if s.state != "loaded"]
                if bad:
                    raise SystemExit(f"bench_kprobe: policies not loaded: {bad[:3]}")
                warm_up()
                pair = [(none_label(n), out_caller), (one_label(n), in_caller)]
                for label, caller in pair[:: -1 if r // 2 % 2 else 1]:
                    measure(label, caller, attached=True)
            progress(f"round {r + 1}/{args.rounds} done ({time.monotonic() - started:.0f} s)")
        manager.sync([])
    finally:
        for caller in callers:
            caller.close()
        if stats is not None:
            stats.close()
        if stats_before is not None:
            STATS_SYSCTL.write_text(stats_before)
        manager.close()
        maps.close()
        index.close()
        index.remove_pins()
        maps.remove_pins()
        devnull.close()
        for cg in (inside, outside, *others):
            rmdir_cgroup(cg)
    total = time.monotonic() - started

    med = statistics.median
    in_vm = bool(os.environ.get(IN_VM_ENV))
    print(
        f"kprobe/{FUNCTION}: os.open+close of /dev/null by a container's process,"
        f" {args.events:,} opens x {args.rounds} rounds (median), {os.cpu_count()} CPUs,"
        f" kernel {os.uname().release}{' in QEMU (TCG)' if in_vm else ''};"
        f" kprobe runs per measurement {min(runs):,}-{max(runs):,} (opens: {args.events:,})."
    )
    print(
        f"bcc compile {compile_seconds:.0f} s (once); sync to N policies "
        + ", ".join(f"{n:,}: {med(t):.2f} s" for n, t in syncs.items())
        + f"; whole run {total:.0f} s."
    )
    base = med(wall["no program"])
    table: list[tuple[str, ...]] = [
        ("configuration", "BPF ns/event", "rounds' range", "wall µs/open", "wall vs no program")
    ]
    for label in labels:
        k = bpf_ns.get(label)
        w = med(wall[label])
        table.append(
            (
                label,
                f"{med(k):,.0f}" if k else "0 (detached)",
                f"{min(k):,.0f}-{max(k):,.0f}" if k else "",
                f"{w * 1e6:.2f}",
                f"{w / base:.2f}x",
            )
        )
    print_table(table)
    print(
        "BPF ns/event: run time of the kprobe program and its tail-called stages per event"
        " (kernel.bpf_stats_enabled); wall: the loop's own time per open (with the kprobe's"
        " entry cost, which BPF run time does not include)."
    )
    if in_vm:
        print(
            "Measured under QEMU software emulation (TCG): absolute figures are not the"
            " hardware's; the ratios between rows are what carries over."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
