"""Per-event cost of the generic kprobe program on a hot path, in one run: file open (an
``int`` argument), or with ``--workload sock`` / ``skb`` a TCP send (``sock``) or a UDP
packet's ``ip_output`` (``skb``): the network readers (benchmarks/kprobe_workloads.py).

This machine's kernel has no kprobes: run it in the VM (Debian's stock kernel in QEMU,
``scripts/build-vm.sh`` builds it), from the repository root:

    sudo PYTHONPATH=operator .venv/bin/python -m tpfilter_dev.vm --timeout 1200 \\
        python benchmarks/bench_kprobe.py [--events 10000] [--rounds 30] [--counts 1,100] \
        [--workload open|sock|skb]

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
from pathlib import Path

from benchkit import program_bench
from kprobe_workloads import WORKLOADS, Workload
from tpfilter.models import Policy, parse_policy
from tpfilter.programs.probe import probe_kprobes
from tpfilter.programs.tracefs import find_tracefs
from tpfilter_dev import contain
from tpfilter_dev.vm import IN_VM_ENV

OTHER_CGROUPS = 50
VM_COMMAND = (
    "sudo PYTHONPATH=operator .venv/bin/python -m tpfilter_dev.vm --timeout 1200 "
    "python benchmarks/bench_kprobe.py"
)


def policy(i: int, workload: Workload) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": f"bench-kprobe-{i}", "uid": f"bench-kprobe-{i}"},
            "spec": {
                "podSelector": {"matchLabels": {"bench": str(i)}},
                "kprobes": [workload.kprobe()],
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

    def __init__(self, cgroup: Path, loop: str) -> None:
        command = contain.argv(cgroup, [sys.executable, "-c", loop], pid_ns="new")
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
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="open")
    args = parser.parse_args(argv)
    workload = WORKLOADS[args.workload]
    function = workload.function
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
    none_label = "{:,} loaded, none selects the caller".format
    one_label = "{:,} loaded, 1 selects the caller".format
    labels = ["no program", *map(none_label, counts), *map(one_label, counts)]
    wall: dict[str, list[float]] = {}
    bpf_ns: dict[str, list[float]] = {}
    runs: list[int] = []
    stats: ProgStats | None = None
    callers: list[Caller] = []
    syncs: dict[int, list[float]] = {}
    others = [f"o{k}" for k in range(OTHER_CGROUPS)]
    started = time.monotonic()
    # probe_lsm=False: Override is not benchmarked, no second compile for the probe
    with program_bench(["in", "out", *others], probe_lsm=False) as bench:
        try:
            manager = bench.manager
            if not manager.available:
                raise SystemExit(f"bench_kprobe: programs unavailable: {manager._unavailable}")
            programs = manager._programs
            if not programs.kprobes:
                raise SystemExit("bench_kprobe: the kprobe program was not loaded")
            compile_seconds = manager.load_report.compile_seconds
            progress(f"programs compiled and loaded ({compile_seconds:.0f} s of compile)")
            stats = ProgStats(programs.program_fd("tpf_kprobe"))
            # Policy i selects one of the other cgroups; policy 1 also selects `inside`.
            desired = {
                i: frozenset({bench.cgroup_id(others[i % OTHER_CGROUPS])})
                for i in range(1, top + 1)
            }
            desired[1] = desired[1] | {bench.cgroup_id("in")}
            bench.select(desired)
            policies = [policy(i, workload) for i in range(1, top + 1)]
            callers.append(Caller(bench.cgroups["out"], workload.loop()))
            callers.append(Caller(bench.cgroups["in"], workload.loop()))
            out_caller, in_caller = callers

            def measure(label: str, caller: Caller, attached: bool) -> None:
                seconds, ns, count = caller.run(args.events, stats if attached else None)
                wall.setdefault(label, []).append(seconds / args.events)
                if attached:
                    runs.append(count)
                    if count:
                        bpf_ns.setdefault(label, []).append(ns / count)

            def warm_up() -> None:
                # After each change, unmeasured: under TCG, code the kernel patched (the
                # kprobe attached or detached) and new JIT code are translated again on
                # first use.
                for caller in callers:
                    caller.run(args.events // 5 or 1, None)

            for r in range(args.rounds):
                # Every round visits every configuration, so drift spreads evenly.
                manager.sync([])  # detaches the kprobe
                if f"kprobe/{function}" in programs.attached:
                    raise SystemExit("bench_kprobe: the kprobe stayed attached without policies")
                warm_up()
                measure("no program", out_caller, attached=False)
                for n in counts[:: -1 if r % 2 else 1]:  # each order in turn
                    t0 = time.monotonic()
                    loaded = [(p, i) for i, p in enumerate(policies[:n], start=1)]
                    statuses = manager.sync(loaded)
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
        finally:  # the callers and the stats fd go before the programs and cgroups do
            for caller in callers:
                caller.close()
            if stats is not None:
                stats.close()
    total = time.monotonic() - started

    med = statistics.median
    in_vm = bool(os.environ.get(IN_VM_ENV))
    print(
        f"kprobe/{function} ({workload.arg['type']} argument, {workload.match['operator']}):"
        f" `{workload.op}` in a loop by a container's process,"
        f" {args.events:,} calls x {args.rounds} rounds (median), {os.cpu_count()} CPUs,"
        f" kernel {os.uname().release}{' in QEMU (TCG)' if in_vm else ''};"
        f" kprobe runs per measurement {min(runs):,}-{max(runs):,} (calls: {args.events:,})."
    )
    print(
        f"bcc compile {compile_seconds:.0f} s (once); sync to N policies "
        + ", ".join(f"{n:,}: {med(t):.2f} s" for n, t in syncs.items())
        + f"; whole run {total:.0f} s."
    )
    base = med(wall["no program"])
    table: list[tuple[str, ...]] = [
        ("configuration", "BPF ns/event", "rounds' range", "wall µs/call", "wall vs no program")
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
        " (kernel.bpf_stats_enabled); wall: the loop's own time per call (with the kprobe's"
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
