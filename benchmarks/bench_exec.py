"""Per-event cost of the policy programs against the number of policies loaded, in one run.

    sudo .venv/bin/python benchmarks/bench_exec.py [--hook exec|lseek] [--events 2000]
         [--rounds 3] [--counts 1,10,100,1000,10000] [--one 100,1000]

Rows: the program detached ("no program"); N policies loaded where none selects the
calling process (each selects one of 50 other cgroups); N loaded where exactly one selects
it. The figure is the BPF run time per event from the kernel's own statistics
(kernel.bpf_stats_enabled, restored afterwards: run_time_ns / run_cnt of the entry
program, its tail-called stages included); wall time per event is printed beside it but
is noisy on a shared machine.

``--hook exec`` (default): sched/sched_process_exec; the caller is a shell started as a
container's process (a PID namespace of its own) that fork+execs a copy of /usr/bin/true;
every policy is a Sigkill with a NotIn allow list that holds that binary, so the selected
caller runs its policy's filter check *and* selectors, never killed. ``--hook lseek``: the
sys_enter variant, syscalls/sys_enter_lseek, a Python loop of lseek(0, 0, SEEK_SET) in the
same kind of process, every policy a Sigkill on whence == 4444 (never matched).

Before the candidate index every loaded policy cost every event ~0.4 us (outside a
selected cgroup); with it an unselected caller pays the index lookup only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchkit import move_self, program_bench
from tpfilter.models import Policy, parse_policy

OTHER_CGROUPS = 50


def run_loop(hook: str, binary: Path, n: int, cgroup: Path) -> float:
    """Seconds for a container-like process in ``cgroup`` to make n events of ``hook``."""
    if hook == "exec":
        script = f'i=0; while [ "$i" -lt {n} ]; do "{binary}"; i=$((i+1)); done'
        inner = ["/bin/sh", "-c", script]
    else:
        code = f"import os\nfor _ in range({n}):\n    os.lseek(0, 0, 0)\n"
        inner = [sys.executable, "-c", code]
    command = ["unshare", "--pid", "--fork", "--kill-child", *inner]
    t0 = time.perf_counter()
    subprocess.run(
        command, preexec_fn=lambda: move_self(cgroup), check=True, stdin=subprocess.DEVNULL
    )
    return time.perf_counter() - t0


def policy(i: int, hook: str, allowed: Path) -> Policy:
    tp: dict[str, Any]
    if hook == "exec":
        tp = {
            "subsystem": "sched",
            "event": "sched_process_exec",
            "selectors": [
                {
                    "matchBinaries": [{"operator": "NotIn", "values": [str(allowed), "/bin/sh"]}],
                    "matchActions": [{"action": "Sigkill"}],
                }
            ],
        }
    else:
        tp = {
            "subsystem": "syscalls",
            "event": "sys_enter_lseek",
            "args": [{"index": 7, "type": "int32", "label": "whence"}],
            "selectors": [
                {
                    "matchArgs": [{"index": 7, "operator": "Equal", "values": ["4444"]}],
                    "matchActions": [{"action": "Sigkill"}],
                }
            ],
        }
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": f"bench-{i}", "uid": f"bench-{i}"},
            "spec": {"podSelector": {"matchLabels": {"bench": str(i)}}, "tracepoints": [tp]},
        }
    )


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, from its fdinfo (bpf_stats_enabled)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    )
    return int(fields.get("run_time_ns", "0")), int(fields.get("run_cnt", "0"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hook", choices=["exec", "lseek"], default="exec")
    parser.add_argument("--events", type=int, default=2000, help="events per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--counts", default="1,10,100,1000,10000")
    parser.add_argument("--one", default="100,1000", help="counts measured with 1 selecting")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_exec: needs root", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.counts.split(",")]
    one = [int(c) for c in args.one.split(",") if c]
    hook = args.hook
    tracepoint = "sched/sched_process_exec" if hook == "exec" else "syscalls/sys_enter_lseek"
    tmp = Path(tempfile.mkdtemp(prefix="tpf-bench-"))
    binary = tmp / "true"
    shutil.copy("/usr/bin/true", binary)
    wall: dict[str, list[float]] = {}
    kernel: dict[str, list[float]] = {}
    rows: list[str] = ["no program"]
    rows += [f"{n:,} loaded, none selects the caller" for n in counts]
    rows += [f"{n:,} loaded, 1 selects the caller" for n in one]
    others = [f"o{k}" for k in range(OTHER_CGROUPS)]
    try:
        with program_bench(["in", "out", *others]) as bench:
            manager, programs = bench.manager, bench.manager._programs
            inside, outside = bench.cgroups["in"], bench.cgroups["out"]
            fd = programs.program_fd("tpf_exec" if hook == "exec" else "tpf_sys_enter")
            # Policy i selects one of the other cgroups; policy 1 also selects `inside`.
            top = max([*counts, *one])
            desired = {
                i: frozenset({bench.cgroup_id(others[i % OTHER_CGROUPS])})
                for i in range(1, top + 1)
            }
            desired[1] = desired[1] | {bench.cgroup_id("in")}
            t0 = time.monotonic()
            bench.select(desired)
            load_seconds = time.monotonic() - t0

            def measure(label: str, cgroup: Path) -> None:
                t0, c0 = prog_stats(fd)
                seconds = run_loop(hook, binary, args.events, cgroup)
                t1, c1 = prog_stats(fd)
                wall.setdefault(label, []).append(seconds / args.events)
                if c1 > c0:
                    kernel.setdefault(label, []).append((t1 - t0) / (c1 - c0))

            run_loop(hook, binary, 200, outside)  # warm up
            for _ in range(args.rounds):
                # Every round visits every configuration, so drift and noise spread evenly.
                manager.sync([])
                if tracepoint in programs.attached:
                    programs.detach(tracepoint)
                measure("no program", outside)
                if hook == "exec":
                    programs.attach(tracepoint)  # compiles nothing (sys_enter: sync attaches)
                for n in sorted({*counts, *one}):
                    loaded = [(policy(i, hook, binary), i) for i in range(1, n + 1)]
                    bad = [s for s in manager.sync(loaded).values() if s.state != "loaded"]
                    if bad:
                        raise SystemExit(f"policies not loaded: {bad[:3]}")
                    if n in counts:
                        measure(f"{n:,} loaded, none selects the caller", outside)
                    if n in one:
                        measure(f"{n:,} loaded, 1 selects the caller", inside)
            manager.sync([])
            usage = bench.index.usage()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    what = "exec of a copy of /usr/bin/true from /bin/sh" if hook == "exec" else "lseek(0, 0, 0)"
    print(
        f"{tracepoint}: {what}, {args.events} events x {args.rounds} rounds (median), "
        f"{os.cpu_count()} CPUs, kernel {os.uname().release} (one machine's measurement)"
    )
    print(
        f"filter maps + candidate index for {top:,} policies written in {load_seconds:.2f} s;"
        f" index: {usage.entries} entries, max_entries {usage.max_entries},"
        f" {usage.memlock:,} B of kernel memory"
    )
    table = [("configuration", "BPF us/event", "wall us/event")]
    for label in rows:
        k = kernel.get(label)
        table.append(
            (label, f"{med(k) / 1e3:.2f}" if k else "0 (not run)", f"{med(wall[label]) * 1e6:.1f}")
        )
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    for r in table:
        print(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print(
        "BPF us/event: run time of the entry program and its tail-called stages per event"
        " (kernel.bpf_stats_enabled), the precise added cost; wall: noisy on a shared VM."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
