"""The kernel-object reader (bpf/programs/tpf_obj.c) on this host's kernel: the kprobe
programs, object stage included, compiled with this kernel's BTF and loaded through its
verifier (a kprobe-type program loads without CONFIG_KPROBES; attaching one needs it, so
what the reader copies is tested in the guest: tests/vm/test_object_args.py), and the C
layout the agent writes and decodes equal to tpfilter.programs.objargs' constants.
"""

from __future__ import annotations

import ctypes as ct
from collections.abc import Iterator
from typing import Any

import pytest
from kernelkit import kernel_marks, scratch_pin_dir, skip_reason

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.indexmap import PinnedCandidateIndex
from tpfilter.programs import objargs
from tpfilter.programs.btf import KernelBtf
from tpfilter.programs.loader import Programs
from tpfilter.programs.probe import probe_features
from tpfilter.programs.tracefs import read_format

pytestmark = kernel_marks(skip_reason("load BPF programs and pin maps", bcc=True))


@pytest.fixture(scope="module")
def programs() -> Iterator[Any]:
    tracefs = probe_features(lsm=False).tracefs
    assert tracefs is not None
    fmt = read_format(tracefs, "sched", "sched_process_exec")
    assert fmt is not None
    with scratch_pin_dir("tpf-test-obj") as pin_dir:
        maps = PinnedFilterMaps(pin_dir=pin_dir)
        index = PinnedCandidateIndex(pin_dir=pin_dir)
        try:
            yield Programs(pin_dir=pin_dir, exec_format=fmt, kprobes=True, kernel=KernelBtf.load())
        finally:
            maps.close()
            index.close()


def test_the_object_stage_loads_and_is_in_the_stage_array(programs: Any) -> None:
    kstages = programs.bpf.get_table(b"tpf_kstages")
    assert kstages[ct.c_int(5)].value > 0  # TPF_STAGE_OBJ: tpf_kstage_obj's fd


def test_the_layout_is_objargs(programs: Any) -> None:
    khook = programs.bpf.get_table(b"tpf_khooks").Leaf()
    assert len(khook.obj) == objargs.NR_OBJ and len(khook.str_add) == 8
    assert len(khook.obj[0].f) == objargs.OBJ_FIELDS
    copy = programs.event_type().obj[0]
    assert len(programs.event_type().obj) == objargs.NR_OBJ
    assert len(copy.data) == objargs.OBJ_BYTES


def test_every_type_is_readable_with_this_kernels_btf() -> None:
    kernel = KernelBtf.load()
    for name, t in objargs.OBJ_TYPES.items():
        if t.fields:
            reads = objargs.field_reads(name, kernel)
            assert not isinstance(reads, str), (name, reads)
