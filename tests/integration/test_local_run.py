"""The README's one-command local run works as written, and cleans up after itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "policy-1" in status_row and " 1 " in status_row and "1,096 B" in status_row
    assert "ubuntu  /usr/bin/true    -> killed by SIGKILL" in out
    assert "ubuntu  /usr/bin/sleep 0 -> exit 0" in out
    assert "nginx   /usr/bin/true    -> exit 0" in out
    assert out.rstrip().endswith("stopped; cgroups and pins removed")
    assert not Path("/sys/fs/bpf/tpfilter-demo").exists()
    assert not (find_cgroup2_mount() / "tpfilter-demo").exists()
