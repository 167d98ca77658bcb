"""The README's one-command local run works as written, and cleans up after itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tpfilter import bpfsys
from tpfilter.cgroups import find_cgroup2_mount

pytestmark = pytest.mark.apiserver


def one_entry_map_memlock() -> int:
    """What this kernel accounts for an 8-slot no-prealloc inner map holding one cgroup
    (a map made here: the figure changes between kernels)."""
    fd = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="tpf_reference",
        key_size=8,
        value_size=1,
        max_entries=8,
        flags=bpfsys.BPF_F_NO_PREALLOC,
    )
    try:
        bpfsys.map_update(fd, (1).to_bytes(8, "little"), b"\x01")
        return bpfsys.memlock(fd)
    finally:
        os.close(fd)


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
    memlock = f"{one_entry_map_memlock():,} B"
    assert "policy-1" in status_row and " 1 " in status_row and memlock in status_row
    assert "candidate index: 1 cgroups (and host) indexed" in out
    assert "ubuntu  /usr/bin/true    -> killed by SIGKILL" in out
    assert "ubuntu  /usr/bin/sleep 0 -> exit 0" in out
    assert "nginx   /usr/bin/true    -> exit 0" in out
    assert out.rstrip().endswith("stopped; cgroups and pins removed")
    assert not Path("/sys/fs/bpf/tpfilter-demo").exists()
    assert not (find_cgroup2_mount() / "tpfilter-demo").exists()
