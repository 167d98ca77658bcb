"""The README's one-command local run works as written, and cleans up after itself."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tpfilter import mapcost
from tpfilter.cgroups import find_cgroup2_mount

pytestmark = pytest.mark.apiserver


def test_local_run_shows_maps_and_enforcement_then_cleans_up(control_plane: object) -> None:
    # control_plane: only for its checks (root, binaries); the demo starts its own.
    done = subprocess.run(
        [sys.executable, "-m", "tpfilter_dev.demo", "--once"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tracingpolicy.cilium.io/policy-1 created" in out
    status_row = next(line for line in out.splitlines() if line.startswith("1 "))
    # ID KIND NAME CGROUPS PENDING MAX_ENTRIES MEMLOCK PROGRAM: the memlock is the kernel's own
    # figure, so it is checked against a reference map of the same size made here, on
    # this kernel, never against a byte count (the fixed part differs between machines).
    row = re.match(r"1\s+TracingPolicy\s+policy-1\s+1\s+0\s+(\d+)\s+([\d,]+) B\s+(\S+)", status_row)
    assert row, status_row
    max_entries, memlock = int(row[1]), int(row[2].replace(",", ""))
    assert memlock == mapcost.measure(max_entries).bytes(1)
    seed_runs = row[3] != "unsupported"  # a kprobe: this kernel may have no kprobes
    assert "candidate index: 1 cgroups (and host) indexed" in out
    assert "ubuntu  /usr/bin/true    -> killed by SIGKILL" in out
    assert "ubuntu  /usr/bin/sleep 0 -> exit 0" in out
    assert "nginx   /usr/bin/true    -> exit 0" in out
    _assert_cluster_status(out, seed_runs=seed_runs)
    assert out.rstrip().endswith("stopped; cgroups and pins removed")
    assert not Path("/sys/fs/bpf/tpfilter-demo").exists()
    assert not (find_cgroup2_mount() / "tpfilter-demo").exists()


def _section(out: str, title: str) -> list[str]:
    """The lines under ``title`` up to the next blank line or step ("[n] ...")."""
    lines = out.splitlines()
    start = lines.index(title) + 1
    end = next(
        (i for i in range(start, len(lines)) if not lines[i] or lines[i].startswith("[")),
        len(lines),
    )
    return lines[start:end]


def _assert_cluster_status(out: str, *, seed_runs: bool) -> None:
    """The controller ran and filled every policy's status: the seed is Ready on the node,
    or Unsupported there when the node reports that its programs cannot run."""
    assert "controller running (log: " in out
    seed = ["1", "1", "1", "AllNodesReady"] if seed_runs else ["0", "1", "1", "UnsupportedOnNodes"]
    header, *rows = _section(out, "$ kubectl get tracingpolicies")
    assert header.split()[:6] == ["NAME", "POD-SELECTOR", "READY", "NODES", "PODS", "REASON"]
    columns = {r.split()[0]: r.split()[2:6] for r in rows}
    assert columns == {"policy-1": seed, "policy-1-tracepoint": ["1", "1", "1", "AllNodesReady"]}

    header, *lines = _section(out, "$ tpfilter status --cluster")
    assert (
        header == "KIND           NAMESPACE/NAME       ACCEPTED  READY  READY/NODES  PODS  REASON"
    )
    seed_row = ["True", "False", "0/1", "1", "UnsupportedOnNodes"]
    if seed_runs:
        seed_row = ["True", "True", "1/1", "1", "AllNodesReady"]
    tracepoint_row = ["TracingPolicy", "policy-1-tracepoint", "True", "True", "1/1", "1"]
    expected = [["TracingPolicy", "policy-1", *seed_row], [*tracepoint_row, "AllNodesReady"]]
    assert [line.split() for line in lines if not line.startswith("  ")] == expected
    details = [line for line in lines if line.startswith("  ")]
    if seed_runs:
        assert details == []
    else:
        [why] = details
        assert ": Unsupported (Unsupported): spec.kprobes: " in why
