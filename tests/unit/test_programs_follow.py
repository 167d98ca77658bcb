"""tpfilter.programs.follow: followForks filters' node-wide IDs and tpf_follow's content."""

from __future__ import annotations

import pytest

from tpfilter.programs.follow import MAX_IDS, FollowIds, changes
from tpfilter.programs.tasksel import F_FOLLOW, F_PID, FOLLOW_HOST, FOLLOW_NS, TaskFilter


def follow(*pids: int, kind: int = FOLLOW_HOST) -> TaskFilter:
    return TaskFilter(F_FOLLOW, 2, pids, kind)


def test_ids_are_distinct_reused_after_release_and_map_the_pids() -> None:
    ids = FollowIds()
    assert ids.assign(
        10, [follow(7, 8), TaskFilter(F_PID, 0, (9,)), follow(1, kind=FOLLOW_NS)]
    ) == [0, 1]
    assert ids.assign(11, [follow(8)]) == [2]
    assert ids.content() == {
        (FOLLOW_HOST, 7): 1 << 0,
        (FOLLOW_HOST, 8): 1 << 0 | 1 << 2,  # two filters name PID 8
        (FOLLOW_NS, 1): 1 << 1,  # namespace PIDs are another key space
    }
    ids.release(10)
    assert ids.content() == {(FOLLOW_HOST, 8): 1 << 2}
    assert ids.assign(12, [follow(5)]) == [0]  # a released ID is free again


def test_past_the_bits_the_load_fails_with_the_reason() -> None:
    ids = FollowIds()
    ids.assign(1, [follow(i) for i in range(MAX_IDS)])
    with pytest.raises(RuntimeError, match="no followForks ID left: at most 64"):
        ids.assign(2, [follow(1)])


def test_changes_write_new_and_changed_delete_gone() -> None:
    old = {(1, 7): 1, (1, 8): 1}
    new = {(1, 8): 3, (2, 1): 2}
    assert changes(old, new) == ({(1, 8): 3, (2, 1): 2}, [(1, 7)])
    assert changes(new, new) == ({}, [])
