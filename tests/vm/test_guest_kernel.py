"""The guest is what the VM tests need: a stock kernel with kprobes and BPF LSM, bcc
compiling against that kernel's own headers, the agent's probe seeing both."""

from __future__ import annotations

import os
from pathlib import Path

from tpfilter.programs.probe import probe_features


def test_headers_are_the_running_kernels() -> None:
    build = Path("/lib/modules") / os.uname().release / "build"
    assert (build / "include").is_dir(), f"no headers for {os.uname().release}"


def test_probe_sees_kprobes_and_lsm() -> None:
    features = probe_features()
    assert features.kprobes is None, features.kprobes
    assert features.lsm is None, features.lsm
    assert "bpf" in Path("/sys/kernel/security/lsm").read_text().split(",")
