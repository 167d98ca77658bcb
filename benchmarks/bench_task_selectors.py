"""What the task selectors (matchPIDs, matchNamespaces, matchCapabilities) add to an event,
against a selector of matchArgs only, measured in the same run.

    sudo .venv/bin/python benchmarks/bench_task_selectors.py [--events 20000] [--rounds 3]

One policy on syscalls/sys_enter_lseek selects the caller's cgroup (a Python loop of
lseek(0, 0, SEEK_SET) as a container's process, bench_exec.run_loop); its one selector
passes its first matchArgs (whence == 0) and fails on its last filter, so every event runs
the whole selector and nothing is killed. Rows: the selector's last filter is a second
matchArgs (offset == 12345: the baseline); matchNamespaces + matchCapabilities (the task's
facts read once per event in STRINGS, compared in SELECT); matchPIDs followForks (also the
walk of 8 ancestors and their tpf_follow lookups); matchNamespaceChanges +
matchCapabilityChanges (the facts and the caller's process record, looked up once per
event: the records are made for this row); matchBinaries (the BINARY stage: the
caller's executable walked to a path name and looked up in the three tpf_bin_* sets, one
more tail call); matchBinaries followChildren (also each ancestor's executable, up to 8 in
all, as many as the caller has). BPF run time per event from the
kernel's statistics (kernel.bpf_stats_enabled, restored afterwards).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from bench_exec import prog_stats, run_loop
from benchkit import program_bench
from tpfilter.models import Policy, parse_policy

WHENCE_0 = {"index": 7, "operator": "Equal", "values": ["0"]}
ROWS: dict[str, dict[str, Any]] = {
    "matchArgs x2 (baseline)": {
        "matchArgs": [WHENCE_0, {"index": 6, "operator": "Equal", "values": ["12345"]}]
    },
    "matchArgs + matchNamespaces x2 + matchCapabilities": {
        "matchArgs": [WHENCE_0],
        "matchNamespaces": [
            {"namespace": "Uts", "operator": "In", "values": ["host_ns"]},
            {"namespace": "Net", "operator": "In", "values": ["host_ns"]},
        ],
        "matchCapabilities": [{"operator": "NotIn", "values": ["CAP_SYS_ADMIN"]}],
    },
    "matchArgs + matchPIDs followForks": {
        "matchArgs": [WHENCE_0],
        "matchPIDs": [
            {"operator": "NotIn", "values": [1], "isNamespacePID": True, "followForks": True}
        ],
    },
    "matchArgs + matchNamespaceChanges + matchCapabilityChanges": {
        "matchArgs": [WHENCE_0],
        "matchNamespaceChanges": [{"operator": "In", "values": ["Uts", "Net"]}],
        "matchCapabilityChanges": [{"operator": "In", "values": ["CAP_SYS_ADMIN"]}],
    },
    "matchArgs + matchBinaries": {
        "matchArgs": [WHENCE_0],
        "matchBinaries": [{"operator": "In", "values": ["/nowhere/python3"]}],
    },
    "matchArgs + matchBinaries followChildren": {
        "matchArgs": [WHENCE_0],
        "matchBinaries": [
            {"operator": "In", "values": ["/nowhere/python3"], "followChildren": True}
        ],
    },
}


def policy(name: str, selector: dict[str, Any]) -> Policy:
    tp = {
        "subsystem": "syscalls",
        "event": "sys_enter_lseek",
        "args": [{"index": 6, "type": "int64"}, {"index": 7, "type": "int32"}],
        "selectors": [{**selector, "matchActions": [{"action": "Sigkill"}]}],
    }
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {"podSelector": {"matchLabels": {"bench": "1"}}, "tracepoints": [tp]},
        }
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_task_selectors: needs root", file=sys.stderr)
        return 2
    kernel: dict[str, list[float]] = {}
    with program_bench(["in"]) as bench:
        fd = bench.manager._programs.program_fd("tpf_sys_enter")
        inside = bench.cgroups["in"]
        bench.select({1: frozenset({bench.cgroup_id("in")})})
        for _ in range(args.rounds):
            for label, selector in ROWS.items():
                p = policy(f"bench-{len(label)}", selector)
                (status,) = bench.manager.sync([(p, 1)]).values()
                if status.state != "loaded":
                    raise SystemExit(f"{label}: {status}")
                run_loop("lseek", Path("/"), 200, inside)  # warm up
                t0, c0 = prog_stats(fd)
                run_loop("lseek", Path("/"), args.events, inside)
                t1, c1 = prog_stats(fd)
                kernel.setdefault(label, []).append((t1 - t0) / max(c1 - c0, 1))
        bench.manager.sync([])
    base = statistics.median(kernel["matchArgs x2 (baseline)"])
    print(
        f"syscalls/sys_enter_lseek, one selected caller, {args.events} events x {args.rounds}"
        f" rounds (median), kernel {os.uname().release} (one machine's measurement)"
    )
    width = max(len(label) for label in ROWS)
    print(f"{'selector':<{width}}  BPF us/event  vs baseline")
    for label in ROWS:
        us = statistics.median(kernel[label])
        print(f"{label:<{width}}  {us / 1e3:12.2f}  {us / base:10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
