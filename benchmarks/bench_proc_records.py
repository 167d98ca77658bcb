"""Kernel memory of the process records (matchNamespaceChanges, matchCapabilityChanges),
and the time to record the running processes from /proc. Root only.

Why: a per-process record is the one piece of state these selectors need, and keeping it
for every process on every node, always, is what Tetragon does (its execve_map). tpfilter
makes the record map only while a loaded policy has a change selector
(tpfilter/programs/procrecords.py). This measures, with the kernel's own accounting
(fdinfo ``memlock``), in one run, for 0 .. 10,000 recorded processes:

  (a) a record map kept always and preallocated, 32,768 records of tpfilter's 72 bytes
      (a lower bound for Tetragon's map, whose records also hold the binary and more);
  (b) the same map kept always without preallocation;
  (c) tpfilter: nothing while no change selector is loaded, else (b)'s map.

Run: ``sudo .venv/bin/python benchmarks/bench_proc_records.py``.
"""

from __future__ import annotations

import os
import struct
import time

from bench_map_memory import fmt_bytes, table
from tpfilter import bpfsys
from tpfilter.programs.procrecords import MAX_RECORDS, RECORD, read_record

COUNTS = (0, 100, 1_000, 10_000)
FIRST_PID = 10_000_000  # fake PIDs: above any real one


def record_map(*, prealloc: bool, records: int) -> int:
    fd = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="tpf_bench_procs",
        key_size=4,
        value_size=RECORD.size,
        max_entries=MAX_RECORDS,
        flags=0 if prealloc else bpfsys.BPF_F_NO_PREALLOC,
    )
    value = RECORD.pack(*range(1, 11), 0x1FF, 0, 0x1FF)
    for i in range(records):
        bpfsys.map_update(fd, struct.pack("<I", FIRST_PID + i), value)
    return fd


def memory_rows() -> list[list[str]]:
    rows, fds = [], []
    try:
        for n in COUNTS:
            a = record_map(prealloc=True, records=n)
            b = record_map(prealloc=False, records=n)
            fds += [a, b]
            mem_a, mem_b = bpfsys.memlock(a), bpfsys.memlock(b)
            rows.append([f"{n:,}", fmt_bytes(mem_a), fmt_bytes(mem_b), "0", fmt_bytes(mem_b)])
    finally:
        for fd in fds:
            os.close(fd)
    return rows


def proc_scan() -> tuple[int, float]:
    t0 = time.perf_counter()
    n = sum(1 for e in os.scandir("/proc") if e.name.isdigit() and read_record(int(e.name)))
    return n, time.perf_counter() - t0


def main() -> None:
    header = [
        "processes",
        "(a) always, prealloc",
        "(b) always, no prealloc",
        "(c) no change selector",
        "(c) with one",
    ]
    print("Kernel memory of the process records (bytes, fdinfo memlock), one run:\n")
    print(table(header, memory_rows()))
    n, seconds = proc_scan()
    print(f"\nRecording the running processes from /proc: {n} processes in {seconds * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
