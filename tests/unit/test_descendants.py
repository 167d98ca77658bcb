"""tpfilter.descendants without root: the level bits, and what a resolver says when it
cannot count levels from the hierarchy root (the kernel side is tests/kernel/
test_child_cgroups.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpfilter.descendants import GONE, MAX_LEVEL, UNKNOWN, WALK_ALL, CgroupFsLevels, mask_for


@pytest.mark.parametrize(
    ("level", "bits"),
    [
        (0, 1),
        (1, 2),
        (4, 1 << 4),
        (MAX_LEVEL, 1 << 62),
        (MAX_LEVEL + 1, WALK_ALL),  # deeper than the mask can name: try every level
        (UNKNOWN, WALK_ALL),
        (GONE, 0),  # a removed cgroup holds no process: nothing to walk
    ],
)
def test_mask_bits(level: int, bits: int) -> None:
    assert mask_for(level) == bits


def test_the_walk_all_bit_is_not_a_level() -> None:
    assert WALK_ALL == 1 << 63 and MAX_LEVEL == 62
    assert all(mask_for(level) != WALK_ALL for level in range(MAX_LEVEL + 1))


def test_root_cgroup_is_level_zero_without_any_lookup(tmp_path: Path) -> None:
    levels = CgroupFsLevels(tmp_path)  # not even a cgroup mount: never opened for ID 1
    try:
        assert levels.level(1) == 0
    finally:
        levels.close()


def test_a_mount_that_is_not_the_hierarchy_root_cannot_count(tmp_path: Path) -> None:
    # A cgroup namespace or a bind mount of a sub-tree shows a directory whose inode is
    # not the root cgroup's (1): depths below it are not absolute, so "unknown".
    levels = CgroupFsLevels(tmp_path)
    try:
        assert levels.level(12345) == UNKNOWN
        assert levels.level(12345) == UNKNOWN  # not cached: may be a passing problem
    finally:
        levels.close()


def test_no_mount_at_all_is_unknown(tmp_path: Path) -> None:
    levels = CgroupFsLevels(tmp_path / "missing")
    assert levels.level(777) == UNKNOWN
