"""Boots Debian's stock kernel in QEMU (tpfilter_dev.vm, built by scripts/build-vm.sh) once
and runs the tests/vm suite inside it: kprobes, BPF LSM and fmod_ret, which this machine's
kernel lacks. Fails if any guest test fails (or none ran)."""

from __future__ import annotations

import os
import shutil

import pytest

from tpfilter_dev import vm

pytestmark = pytest.mark.kernel

GUEST_TIMEOUT = 3300.0  # 12 guest files since stop 18: 30+ min seen on a 2-CPU machine


@pytest.mark.timeout(GUEST_TIMEOUT + 60)
def test_vm_suite() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (QEMU with the cached root over 9p)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("no qemu-system-x86_64: run scripts/build-vm.sh")
    image = vm.VmImage.current()
    if image is None:
        pytest.skip(f"no VM image in {vm.cache_dir()}: run scripts/build-vm.sh")
    result = vm.run(
        # tests/vm, and the exec tracepoint programs on this older kernel's verifier too
        "python -m pytest -p no:cacheprovider -q -rA --timeout 900 tests/vm"
        " tests/kernel/test_programs_exec.py tests/kernel/test_programs_hooks.py",
        image=image,
        timeout=GUEST_TIMEOUT,
    )
    tail = "\n".join(result.output.splitlines()[-150:])
    assert not result.timed_out, f"the VM run passed {GUEST_TIMEOUT} s:\n{tail}"
    assert result.returncode == 0, f"guest pytest exited {result.returncode}:\n{tail}"
    assert " passed" in result.output, tail
