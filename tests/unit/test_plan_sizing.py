"""Inner map sizing and the desired-vs-actual plan."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpfilter import sizing
from tpfilter.interfaces import InnerMapState
from tpfilter.plan import Delete, Install, Update, plan

LIMIT = 32768


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


# --- sizing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "expected"), [(0, 1), (1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (1000, 1024)]
)
def test_next_power_of_two(n: int, expected: int) -> None:
    assert sizing.next_power_of_two(n) == expected


@pytest.mark.parametrize(
    ("entries", "capacity"),
    [(0, 8), (1, 8), (4, 8), (5, 16), (8, 16), (9, 32), (16, 32), (17, 64), (100, 256)],
)
def test_target_capacity_examples(entries: int, capacity: int) -> None:
    assert sizing.target_capacity(entries, limit=LIMIT) == capacity


@given(st.integers(min_value=0, max_value=LIMIT // 2))
def test_target_capacity_properties(entries: int) -> None:
    cap = sizing.target_capacity(entries, limit=LIMIT)
    assert is_power_of_two(cap)
    assert cap >= sizing.MIN_ENTRIES == 8
    assert cap >= 2 * entries  # room to grow
    assert cap < 4 * max(entries, 4)  # but the *next* power of two, not more
    # fresh map never needs immediate rebuild
    assert not sizing.needs_rebuild(entries, cap, limit=LIMIT)


@pytest.mark.parametrize(("entries", "limit"), [(100, 64), (64, 64), (40, 64), (5, 4), (0, 4)])
def test_target_capacity_capped_at_limit(entries: int, limit: int) -> None:
    assert sizing.target_capacity(entries, limit=limit) == limit


def test_grow_only_when_over_capacity() -> None:
    assert not sizing.needs_rebuild(8, 8, limit=LIMIT)  # exactly full still fits
    assert sizing.needs_rebuild(9, 8, limit=LIMIT)
    assert not sizing.needs_rebuild(16, 16, limit=LIMIT)
    assert sizing.needs_rebuild(17, 16, limit=LIMIT)
    for entries in range(9, 65):  # between shrink (<= 64//8) and grow (> 64): leave it
        assert not sizing.needs_rebuild(entries, 64, limit=LIMIT), entries


def test_no_grow_beyond_limit() -> None:
    assert not sizing.needs_rebuild(65, 64, limit=64)  # nothing bigger to build: full
    assert sizing.needs_rebuild(65, 32, limit=64)


def test_shrink_at_one_eighth() -> None:
    assert sizing.needs_rebuild(8, 64, limit=LIMIT)
    assert not sizing.needs_rebuild(9, 64, limit=LIMIT)
    assert sizing.needs_rebuild(0, 16, limit=LIMIT)
    assert sizing.needs_rebuild(2, 16, limit=LIMIT)
    assert not sizing.needs_rebuild(3, 16, limit=LIMIT)
    assert sizing.needs_rebuild(128, 1024, limit=LIMIT)
    assert not sizing.needs_rebuild(129, 1024, limit=LIMIT)


def test_min_size_never_shrinks() -> None:
    for entries in range(9):
        assert not sizing.needs_rebuild(entries, 8, limit=LIMIT)


@given(st.integers(0, 4096), st.integers(0, 4096))
def test_hysteresis_no_flapping(start: int, other: int) -> None:
    """After a rebuild for n entries, moving one entry back never rebuilds again."""
    cap = sizing.target_capacity(start, limit=LIMIT)
    for n in (start - 1, start + 1):
        if n >= 0:
            rebuild = sizing.needs_rebuild(n, cap, limit=LIMIT)
            assert not rebuild or n > cap or n <= cap // 8
    # any state the rules leave alone is neither over-full nor under 1/8 (above the minimum)
    if not sizing.needs_rebuild(other, cap, limit=LIMIT):
        assert other <= cap
        assert cap == 8 or other > cap // 8


def test_estimated_kernel_bytes_rounds_buckets_up() -> None:
    assert sizing.estimated_kernel_bytes(8, 0) == 896 + 16 * 8
    assert sizing.estimated_kernel_bytes(8, 8) == 896 + 16 * 8 + 72 * 8
    assert sizing.estimated_kernel_bytes(100, 3) == 896 + 16 * 128 + 72 * 3  # buckets round up


def test_map_for_8_entries_costs_within_1_5x_of_minimum() -> None:
    minimum = 896 + 16 * 8 + 72 * 8
    cap = sizing.target_capacity(8, limit=LIMIT)
    cost = sizing.estimated_kernel_bytes(cap, 8)
    assert minimum <= cost <= 1.5 * minimum


@given(st.integers(1, 20000))
def test_built_maps_cost_at_most_twice_the_minimum(entries: int) -> None:
    cap = sizing.target_capacity(entries, limit=LIMIT)
    minimum = sizing.estimated_kernel_bytes(entries, entries)
    assert sizing.estimated_kernel_bytes(cap, entries) <= 2 * minimum


# --- plan -------------------------------------------------------------------------------


def state(ids: set[int] | frozenset[int], cap: int = 8) -> InnerMapState:
    return InnerMapState(frozenset(ids), cap)


def test_nothing_to_do() -> None:
    assert plan({}, {}, limit=LIMIT) == []
    assert plan({1: frozenset({10, 11})}, {1: state({10, 11})}, limit=LIMIT) == []
    assert plan({1: frozenset()}, {1: state(set())}, limit=LIMIT) == []


def test_install_for_new_policy() -> None:
    ops = plan({3: frozenset({1, 2, 3}), 4: frozenset()}, {}, limit=LIMIT)
    assert ops == [Install(3, frozenset({1, 2, 3}), 8), Install(4, frozenset(), 8)]


def test_install_sized_for_content() -> None:
    want = frozenset(range(100))
    (op,) = plan({1: want}, {}, limit=LIMIT)
    assert op == Install(1, want, 256)


def test_delete_unwanted() -> None:
    assert plan({}, {5: state({1}), 2: state(set())}, limit=LIMIT) == [Delete(2), Delete(5)]


def test_update_add_and_remove() -> None:
    ops = plan({1: frozenset({1, 2, 5})}, {1: state({1, 2, 3, 4})}, limit=LIMIT)
    assert ops == [Update(1, add=frozenset({5}), remove=frozenset({3, 4}))]


def test_update_only_add_and_only_remove() -> None:
    assert plan({1: frozenset({1, 2})}, {1: state({1})}, limit=LIMIT) == [
        Update(1, add=frozenset({2}), remove=frozenset())
    ]
    assert plan({1: frozenset({1})}, {1: state({1, 2})}, limit=LIMIT) == [
        Update(1, add=frozenset(), remove=frozenset({2}))
    ]


def test_rebuild_when_growing_past_capacity() -> None:
    want = frozenset(range(9))
    ops = plan({1: want}, {1: state(range(8), 8)}, limit=LIMIT)  # type: ignore[arg-type]
    assert ops == [Install(1, want, 32)]


def test_rebuild_when_shrinking_to_an_eighth() -> None:
    ops = plan({1: frozenset({1})}, {1: state(set(range(100)), 1024)}, limit=LIMIT)
    assert ops == [Install(1, frozenset({1}), 8)]


def test_rebuild_even_if_content_equal_when_grossly_oversized() -> None:
    ops = plan({1: frozenset({1})}, {1: state({1}, 1024)}, limit=LIMIT)
    assert ops == [Install(1, frozenset({1}), 8)]


def test_in_place_update_between_thresholds() -> None:
    ops = plan({1: frozenset(range(20))}, {1: state(set(range(30)), 64)}, limit=LIMIT)
    assert ops == [Update(1, add=frozenset(), remove=frozenset(range(20, 30)))]


def test_over_limit_planned_in_full() -> None:
    want = frozenset(range(10))
    # a map already at the limit cannot grow: plan the update, the map layer reports full
    ops = plan({1: want}, {1: state(set(range(4)), 4)}, limit=4)
    assert ops == [Update(1, add=frozenset(range(4, 10)), remove=frozenset())]


def test_deletes_come_first() -> None:
    desired = {1: frozenset({1}), 3: frozenset({3}), 5: frozenset({7})}
    actual = {2: state({2}), 3: state({4}), 4: state(set()), 5: state({7})}
    ops = plan(desired, actual, limit=LIMIT)
    assert ops == [
        Delete(2),
        Delete(4),
        Install(1, frozenset({1}), 8),
        Update(3, add=frozenset({3}), remove=frozenset({4})),
    ]


@given(
    desired=st.dictionaries(
        st.integers(1, 6), st.frozensets(st.integers(1, 40), max_size=20), max_size=5
    ),
    actual=st.dictionaries(
        st.integers(1, 6),
        st.builds(
            lambda ids, cap: InnerMapState(frozenset(ids), max(cap, len(ids))),
            st.frozensets(st.integers(1, 40), max_size=20),
            st.sampled_from([8, 16, 32, 64, 128]),
        ),
        max_size=5,
    ),
)
def test_plan_applied_gives_desired(
    desired: dict[int, frozenset[int]], actual: dict[int, InnerMapState]
) -> None:
    ops = plan(desired, actual, limit=LIMIT)
    kernel = {pid: (set(s.cgroup_ids), s.max_entries) for pid, s in actual.items()}
    seen_write = False
    touched: list[int] = []
    for op in ops:
        touched.append(op.policy_id)
        match op:
            case Delete(pid):
                assert not seen_write, "deletes must come first"
                assert pid in kernel
                del kernel[pid]
            case Install(pid, ids, cap):
                seen_write = True
                assert len(ids) <= cap
                kernel[pid] = (set(ids), cap)
            case Update(pid, add, remove):
                seen_write = True
                ids, cap = kernel[pid]
                assert not add & remove
                assert remove <= ids and not add & ids
                ids -= remove
                ids |= add
                assert len(ids) <= cap, "update must fit in place"
    assert {pid: ids for pid, (ids, _) in kernel.items()} == desired
    assert len(touched) == len(set(touched)), "one operation per policy"
    # nothing is touched that was already right and well sized
    for pid in touched:
        if pid in desired and pid in actual and actual[pid].cgroup_ids == desired[pid]:
            assert sizing.needs_rebuild(len(desired[pid]), actual[pid].max_entries, limit=LIMIT)
