"""The kprobe programs (tpf_kprobe.c: the path walk with the fd lookup, the network
readers, the kprobe-typed stages) pass this host kernel's verifier.

This machine cannot attach a kprobe (no CONFIG_KPROBES), but it loads kprobe-type
programs, so the verifier budget on a current kernel is checked here, with the offsets of
this kernel's BTF; attaching and behaviour are tests/vm's (Debian 6.1's verifier).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kernelkit import kernel_marks, scratch_pin_dir, skip_reason

from tpfilter.programs.btf import KernelBtf
from tpfilter.programs.fileargs import fd_cflags
from tpfilter.programs.loader import Programs
from tpfilter.programs.pathwalk import path_cflags
from tpfilter.programs.probe import probe_features
from tpfilter.programs.tracefs import read_format

pytestmark = kernel_marks(skip_reason("load BPF programs and pin maps", bcc=True))


@pytest.fixture(scope="module")
def kernel() -> KernelBtf:
    kernel = KernelBtf.load_or_none()
    if kernel is None:
        pytest.skip("no readable BTF (/sys/kernel/btf/vmlinux): the readers need its offsets")
    return kernel


@pytest.fixture(scope="module")
def programs(kernel: KernelBtf) -> Iterator[Programs]:
    features = probe_features(lsm=False)
    assert features.tracefs is not None
    exec_format = read_format(features.tracefs, "sched", "sched_process_exec")
    assert exec_format is not None
    with scratch_pin_dir("tpf-test-kverify") as pin_dir:
        loaded = Programs(pin_dir=pin_dir, exec_format=exec_format, kprobes=True, kernel=kernel)
        try:
            yield loaded
        finally:
            loaded.close()


def test_the_fd_lookup_and_path_walk_are_compiled_for_this_kernel(kernel: KernelBtf) -> None:
    assert path_cflags(kernel)[0] == "-DTPF_WITH_PATHS"
    assert fd_cflags(kernel)[0] == "-DTPF_WITH_FD"


def test_every_kprobe_program_loads(programs: Programs) -> None:
    """Programs() has loaded every kprobe program (bcc's load_func runs the verifier and
    raises on a rejection): the path stage, with the fd lookup, among them."""
    assert programs.kprobes
    loaded = {name.decode() if isinstance(name, bytes) else name for name in programs.bpf.funcs}
    assert {
        "tpf_kprobe",
        "tpf_kretprobe",
        "tpf_kstage_filter",
        "tpf_kstage_strings",
        "tpf_kstage_select",
        "tpf_kstage_path",
        "tpf_kstage_net",
    } <= loaded, loaded
