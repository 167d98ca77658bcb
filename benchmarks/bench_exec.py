"""Exec cost of the policy programs: a small binary exec'd in a loop, inside a cgroup the
policies select and outside it, with 0, 1, 10 and 100 policies loaded, in one run.

    sudo .venv/bin/python benchmarks/bench_exec.py [--execs 2000] [--rounds 5]

Each measurement is a shell, started in the cgroup as a container's process (in a PID
namespace of its own: a process of the node's would be the runtime's, not the
container's), that fork+execs a copy of /usr/bin/true N times; the shell's own cost and
the ~1 ms of util-linux `unshare` that starts it are the same in every row. "no programs" is
measured with the exec program detached. Every policy is on
sched/sched_process_exec with a NotIn allow list that contains the benchmark binary, so
inside the selected cgroup each exec runs every policy's filter check *and* its
selectors (the most work a non-matching exec can cost); outside it only the filter
checks. Every round measures every configuration (inside and outside); medians are
reported. Besides wall time, the programs' own run time per exec is read from the
kernel (kernel.bpf_stats_enabled, restored afterwards).
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
import uuid
from pathlib import Path

from benchkit import move_self
from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.models import Policy, parse_policy
from tpfilter.programs import ProgramManager
from tpfilter_dev.cgroupfs import rmdir_cgroup


def exec_loop(binary: Path, n: int, cgroup: Path) -> float:
    """Seconds for a shell in ``cgroup`` to fork+exec ``binary`` n times."""
    script = f'i=0; while [ "$i" -lt {n} ]; do "{binary}"; i=$((i+1)); done'
    t0 = time.perf_counter()
    command = ["unshare", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", script]
    subprocess.run(command, preexec_fn=lambda: move_self(cgroup), check=True)
    return time.perf_counter() - t0


def policy(i: int, allowed: Path) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": f"bench-{i}", "uid": f"bench-{i}"},
            "spec": {
                "podSelector": {"matchLabels": {"bench": str(i)}},
                "tracepoints": [
                    {
                        "subsystem": "sched",
                        "event": "sched_process_exec",
                        "selectors": [
                            {
                                "matchBinaries": [
                                    {"operator": "NotIn", "values": [str(allowed), "/bin/sh"]}
                                ],
                                "matchActions": [{"action": "Sigkill"}],
                            }
                        ],
                    }
                ],
            },
        }
    )


STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program, from its fdinfo (bpf_stats_enabled)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines()
    )
    return int(fields.get("run_time_ns", "0")), int(fields.get("run_cnt", "0"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=2000, help="execs per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--counts", default="0,1,10,100")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_exec: needs root", file=sys.stderr)
        return 2
    counts = [int(c) for c in args.counts.split(",")]
    mount = find_cgroup2_mount()
    tag = uuid.uuid4().hex[:8]
    pin_dir = Path("/sys/fs/bpf") / f"tpf-bench-{tag}"
    inside, outside = mount / f"tpf-bench-in-{tag}", mount / f"tpf-bench-out-{tag}"
    inside.mkdir()
    outside.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="tpf-bench-"))
    binary = tmp / "true"
    shutil.copy("/usr/bin/true", binary)
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    manager = ProgramManager(
        pin_dir=pin_dir, node_name="bench", resolve=lambda c: None, events_out=devnull
    )
    stats_before = STATS_SYSCTL.read_text().strip() if STATS_SYSCTL.exists() else None
    labels = ["no programs", *(f"{n} policies" for n in counts)]
    wall: dict[tuple[str, str], list[float]] = {}
    kernel: dict[tuple[str, str], list[float]] = {}
    report = None
    try:
        manager.start(events_thread=False)
        report = manager.load_report
        programs = manager._programs
        if STATS_SYSCTL.exists():
            STATS_SYSCTL.write_text("1")
        exec_fd = programs._exec_fn.fd
        inside_id = os.stat(inside).st_ino
        for i in range(1, max(counts) + 1):
            maps.install(i, {inside_id}, max_entries=8)
        exec_loop(binary, 200, inside)  # warm up
        for _ in range(args.rounds):
            # Every round visits every configuration, so drift and noise spread evenly.
            # "no programs": the exec program detached (attaching again compiles nothing).
            programs.detach("sched/sched_process_exec")
            for where, cgroup in (("in", inside), ("out", outside)):
                seconds = exec_loop(binary, args.execs, cgroup)
                wall.setdefault(("no programs", where), []).append(seconds / args.execs)
            programs.attach("sched/sched_process_exec")
            for n in counts:
                statuses = manager.sync([(policy(i, binary), i) for i in range(1, n + 1)])
                bad = [s for s in statuses.values() if s.state != "loaded"]
                if bad:
                    raise SystemExit(f"policies not loaded: {bad[:3]}")
                for where, cgroup in (("in", inside), ("out", outside)):
                    t0, c0 = prog_stats(exec_fd)
                    seconds = exec_loop(binary, args.execs, cgroup)
                    t1, c1 = prog_stats(exec_fd)
                    wall.setdefault((f"{n} policies", where), []).append(seconds / args.execs)
                    if c1 > c0:
                        per_exec = (t1 - t0) / (c1 - c0)
                        kernel.setdefault((f"{n} policies", where), []).append(per_exec)
        manager.sync([])
    finally:
        if stats_before is not None:
            STATS_SYSCTL.write_text(stats_before)
        manager.close()
        maps.close()
        maps.remove_pins()
        devnull.close()
        rmdir_cgroup(inside)
        rmdir_cgroup(outside)
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    base_in, base_out = med(wall[("no programs", "in")]), med(wall[("no programs", "out")])
    print(
        f"exec of a copy of /usr/bin/true from /bin/sh, {args.execs} execs x {args.rounds} "
        f"rounds (median), {os.cpu_count()} CPUs, kernel {os.uname().release}"
    )
    if report is not None:
        print(
            f"programs: compile {report.compile_seconds:.2f} s, load {report.load_seconds:.2f} s,"
            f" agent RSS after load {report.rss_now_bytes / 2**20:.0f} MiB"
            f" (peak {report.rss_after_bytes / 2**20:.0f} MiB)"
        )
    head = (
        "loaded",
        "in: exec/s",
        "us/exec",
        "added us (wall)",
        "BPF us/exec",
        "out: exec/s",
        "us/exec",
        "added us (wall)",
        "BPF us/exec",
    )
    table: list[tuple[str, ...]] = [head]
    for label in labels:
        row = [label]
        for where, base in (("in", base_in), ("out", base_out)):
            t = med(wall[(label, where)])
            k = kernel.get((label, where))
            row += [
                f"{1 / t:,.0f}",
                f"{t * 1e6:.1f}",
                f"{(t - base) * 1e6:+.1f}",
                f"{med(k) / 1e3:.2f}" if k else "0",
            ]
        table.append(tuple(row))
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    for r in table:
        cells = zip(r, widths, strict=True)
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(cells)))
    print(
        "BPF us/exec: run time of the exec program and its tail-called stages per exec"
        " (kernel.bpf_stats_enabled), the precise added cost; wall: noisy on a shared VM."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
