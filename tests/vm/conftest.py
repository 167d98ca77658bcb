"""tests/vm runs INSIDE the VM that tpfilter_dev.vm boots (Debian's stock kernel: kprobes,
BPF LSM, fmod_ret). On the host these files are not collected: tests/kernel/test_vm_suite.py
boots the VM and runs this directory there, failing if any guest test fails."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tpfilter_dev.vm import IN_VM_ENV

if not os.environ.get(IN_VM_ENV):
    collect_ignore_glob = ["test_*.py"]
else:  # the kernel tests' helpers (scratch cgroups, pin dirs, a started ProgramManager)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
    from collections.abc import Iterator

    import pytest
    from kernelkit import Cgroups, Env, cgroup2_mount, program_env

    @pytest.fixture(scope="module")
    def env() -> Iterator[Env]:
        """A started ProgramManager with BPF LSM probed (Override), one compile a module."""
        with program_env(probe_lsm=True) as e:
            yield e

    @pytest.fixture(scope="module")
    def cgroups(env: Env) -> Iterator[Cgroups]:
        """Scratch cgroup2 directories ("containers"), removed after the module."""
        mount = cgroup2_mount()
        assert mount is not None
        made = Cgroups(mount)
        try:
            yield made
        finally:
            made.close()
