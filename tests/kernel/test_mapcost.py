"""mapcost: the running kernel's accounting of an inner map, measured, as root.

What the memory tests compare policy maps with, so it is itself checked against maps made
independently here, at sizes and fills it did not sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from kernelkit import kernel_marks, skip_reason

from tpfilter import bpfsys, mapcost

pytestmark = kernel_marks(skip_reason("create BPF maps (CAP_BPF/CAP_SYS_ADMIN)"))


def memlock_of_map(max_entries: int, entries: int) -> int:
    fd = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="tpf_test_ref",
        key_size=8,
        value_size=1,
        max_entries=max_entries,
        flags=bpfsys.BPF_F_NO_PREALLOC,
    )
    try:
        for i in range(entries):
            bpfsys.map_update(fd, (1000 + i).to_bytes(8, sys.byteorder), b"\x01")
        return bpfsys.memlock(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("max_entries", "entries"), [(1, 1), (8, 0), (16, 13), (128, 100), (4096, 300)]
)
def test_predicts_what_the_kernel_charges_beyond_its_sample(max_entries: int, entries: int) -> None:
    cost = mapcost.measure(max_entries)
    assert cost.max_entries == max_entries and cost.per_entry > 0
    assert cost.bytes(entries) == memlock_of_map(max_entries, entries)


def test_bigger_maps_cost_more_empty() -> None:
    # The bucket array follows max_entries: what tpfilter's sizing saves.
    assert mapcost.measure(8).empty < mapcost.measure(64).empty < mapcost.measure(32_768).empty


def test_refuses_a_size_no_map_has() -> None:
    with pytest.raises(ValueError, match="max_entries must be positive"):
        mapcost.measure(0)


def test_probe_reports_this_kernels_map_cost() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tpfilter.cli", "probe", "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    reported = json.loads(out)["inner_map_cost"]
    assert reported == {
        "empty_min_map": memlock_of_map(8, 0),
        "per_cgroup": mapcost.measure(8).per_entry,
    }
