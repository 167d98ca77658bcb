"""PinnedFilterMaps against the real kernel, as root.

Every test gets its own pin directory on the bpffs (``/sys/fs/bpf/tpf-test-<random>``),
removed afterwards with whatever is pinned in it, so tests never see each other's maps or
the node's real ``/sys/fs/bpf/tpfilter``. Cgroup IDs here are plain numbers: what the maps
hold is checked by reading them back, and by the kernel's own views (map IDs, flags,
fdinfo memlock); the BPF side is tested in test_policy_filter_check.py.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kernelkit import (
    BPF_ROOT,
    inner_map_ids,
    kernel_marks,
    map_exists,
    reference_memlock,
    skip_reason,
    wait_maps_gone,
)

from tpfilter import bpfsys
from tpfilter.bpfmaps import (
    LEVELS_PIN_NAME,
    OUTER_PIN_NAME,
    PinnedFilterMaps,
    PinnedMapMismatchError,
    probe,
)
from tpfilter.interfaces import InnerMapState, MapFullError

pytestmark = kernel_marks(skip_reason("create and pin BPF maps (CAP_BPF/CAP_SYS_ADMIN)"))


@pytest.fixture
def maps(pin_dir: Path) -> Iterator[PinnedFilterMaps]:
    m = PinnedFilterMaps(pin_dir=pin_dir, max_policies=64)
    try:
        yield m
    finally:
        m.close()


def test_creates_a_pinned_no_prealloc_hash_of_maps(maps: PinnedFilterMaps, pin_dir: Path) -> None:
    assert not maps.adopted
    # The outer map and the levels array of the child-cgroup walk (tpfilter.descendants).
    assert sorted(p.name for p in pin_dir.iterdir()) == sorted([OUTER_PIN_NAME, LEVELS_PIN_NAME])
    fd = bpfsys.obj_get(pin_dir / OUTER_PIN_NAME)
    try:
        info = bpfsys.map_info(fd)
    finally:
        os.close(fd)
    assert info.id == maps.outer_map_id
    assert info.type == bpfsys.BPF_MAP_TYPE_HASH_OF_MAPS
    assert (info.key_size, info.value_size, info.max_entries) == (4, 4, 64)
    assert info.map_flags & bpfsys.BPF_F_NO_PREALLOC


def test_outer_map_without_prealloc_is_cheap(pin_dir: Path) -> None:
    # A preallocated 1,024-slot hash-of-maps costs ~83 KB; without prealloc its buckets
    # (16 B each) and the header dominate: ~17 KB (machine.md).
    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=1024) as m:
        assert m.outer_memlock() < 20_000


def test_install_update_delete_round_trip(maps: PinnedFilterMaps) -> None:
    assert maps.read_all() == {}
    maps.install(1, [101, 102, 103], max_entries=8)
    maps.install(2, [], max_entries=16)
    assert maps.read_all() == {
        1: InnerMapState(frozenset({101, 102, 103}), 8),
        2: InnerMapState(frozenset(), 16),
    }

    maps.update(1, add=[104], remove=[101])
    maps.update(2, add=[7, 8], remove=[999])  # removing an absent ID is not an error
    assert maps.read_all() == {
        1: InnerMapState(frozenset({102, 103, 104}), 8),
        2: InnerMapState(frozenset({7, 8}), 16),
    }

    # Inner maps are no-prealloc hashes of u64 -> u8, as the BPF side expects.
    for map_id in inner_map_ids(maps).values():
        fd = bpfsys.map_fd_by_id(map_id)
        try:
            info = bpfsys.map_info(fd)
        finally:
            os.close(fd)
        assert info.type == bpfsys.BPF_MAP_TYPE_HASH
        assert (info.key_size, info.value_size) == (8, 1)
        assert info.map_flags & bpfsys.BPF_F_NO_PREALLOC

    maps.delete(1)
    maps.delete(1)  # idempotent
    assert maps.read_all() == {2: InnerMapState(frozenset({7, 8}), 16)}
    usage = maps.usage()
    assert [(u.policy_id, u.entries, u.max_entries) for u in usage] == [(2, 2, 16)]


def test_update_of_a_policy_without_map_is_an_oserror(maps: PinnedFilterMaps) -> None:
    with pytest.raises(FileNotFoundError, match="update policy 9"):
        maps.update(9, add=[1], remove=[])


def test_reserved_and_out_of_range_ids_are_refused(maps: PinnedFilterMaps) -> None:
    with pytest.raises(ValueError, match="policy ID"):
        maps.install(0, [1], max_entries=8)  # 0 = "no podSelector": never has a map
    with pytest.raises(ValueError, match="policy ID"):
        maps.install(1 << 32, [1], max_entries=8)
    with pytest.raises(ValueError, match="cgroup ID"):
        maps.install(1, [0], max_entries=8)
    assert maps.read_all() == {}


def test_install_swaps_in_a_new_map_and_resize_keeps_content(maps: PinnedFilterMaps) -> None:
    ids = {1000 + i for i in range(6)}
    maps.install(5, ids, max_entries=8)
    old_id = inner_map_ids(maps)[5]

    maps.install(5, maps.read_all()[5].cgroup_ids, max_entries=64)  # grow
    assert maps.read_all() == {5: InnerMapState(frozenset(ids), 64)}
    new_id = inner_map_ids(maps)[5]
    assert new_id != old_id
    assert wait_maps_gone(old_id), "the swapped-out inner map was not freed"

    maps.install(5, ids, max_entries=8)  # and shrink back
    assert maps.read_all() == {5: InnerMapState(frozenset(ids), 8)}


def test_inner_map_full_raises_and_keeps_what_it_had(maps: PinnedFilterMaps) -> None:
    ids = set(range(1, 9))
    maps.install(3, ids, max_entries=8)
    with pytest.raises(MapFullError) as info:
        maps.update(3, add=[9], remove=[])
    message = str(info.value)
    assert "policy 3" in message and "max_entries 8" in message and "E2BIG" in message
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.E2BIG
    assert maps.read_all()[3].cgroup_ids == ids

    # Removals are applied before adds, so swapping one ID on a full map works.
    maps.update(3, add=[9], remove=[1])
    assert maps.read_all()[3].cgroup_ids == (ids - {1}) | {9}


def test_install_more_ids_than_entries_raises_and_leaves_the_slot(
    maps: PinnedFilterMaps,
) -> None:
    maps.install(4, [1, 2], max_entries=8)
    before = inner_map_ids(maps)[4]
    with pytest.raises(MapFullError, match="policy 4"):
        maps.install(4, range(1, 10), max_entries=8)
    assert inner_map_ids(maps)[4] == before
    assert maps.read_all()[4] == InnerMapState(frozenset({1, 2}), 8)


def test_outer_map_full_raises(pin_dir: Path) -> None:
    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=2) as m:
        m.install(1, [11], max_entries=8)
        m.install(2, [22], max_entries=8)
        with pytest.raises(MapFullError) as info:
            m.install(3, [33], max_entries=8)
        assert "policy 3" in str(info.value) and "outer map" in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        assert info.value.__cause__.errno == errno.E2BIG
        # Replacing an existing slot needs no free one: resizing still works when full.
        m.install(1, [11, 12], max_entries=16)
        assert m.read_all() == {
            1: InnerMapState(frozenset({11, 12}), 16),
            2: InnerMapState(frozenset({22}), 8),
        }


def test_adopts_the_pinned_maps_after_a_restart(pin_dirs: Callable[[], Path]) -> None:
    pin_dir = pin_dirs()
    first = PinnedFilterMaps(pin_dir=pin_dir, max_policies=32)
    first.install(1, [1, 2, 3], max_entries=8)
    first.install(7, [70], max_entries=16)
    state, ids, outer_id = first.read_all(), inner_map_ids(first), first.outer_map_id
    first.close()  # no fd left: only the pin keeps the maps alive, like a dead agent

    # Asked for another size: the pinned map wins, nothing is re-created.
    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=1024) as second:
        assert second.adopted
        assert second.outer_map_id == outer_id
        assert second.max_policies == 32
        assert second.read_all() == state
        assert inner_map_ids(second) == ids
        second.update(7, add=[71], remove=[])

    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=32) as third:
        assert third.read_all()[7].cgroup_ids == {70, 71}


def test_fd_cache_follows_a_slot_swapped_by_another_instance(pin_dir: Path) -> None:
    with (
        PinnedFilterMaps(pin_dir=pin_dir) as a,
        PinnedFilterMaps(pin_dir=pin_dir) as b,
    ):
        a.install(1, [1], max_entries=8)
        assert b.read_all()[1].cgroup_ids == {1}  # b caches an fd to a's first map
        a.install(1, [2], max_entries=16)
        b.update(1, add=[3], remove=[])  # must write the new map, not its stale fd
        assert a.read_all() == {1: InnerMapState(frozenset({2, 3}), 16)}


def test_delete_leaves_no_pin_and_the_kernel_frees_the_inner_map(
    maps: PinnedFilterMaps, pin_dir: Path
) -> None:
    maps.install(1, [5, 6], max_entries=8)
    maps.install(2, [7], max_entries=8)
    inner_id = inner_map_ids(maps)[1]
    pins = sorted([OUTER_PIN_NAME, LEVELS_PIN_NAME])  # no pin per policy
    assert sorted(p.name for p in pin_dir.iterdir()) == pins
    assert map_exists(inner_id)

    maps.delete(1)
    assert sorted(p.name for p in pin_dir.iterdir()) == pins
    assert wait_maps_gone(inner_id), f"inner map id {inner_id} still in the kernel"
    assert map_exists(inner_map_ids(maps)[2])


def test_memlock_follows_entries_not_capacity(maps: PinnedFilterMaps) -> None:
    maps.install(1, [], max_entries=16)
    maps.install(2, range(1, 9), max_entries=16)
    by_policy = {u.policy_id: u.memlock for u in maps.usage()}
    # Calibrated against no-prealloc maps made here on the running kernel (its accounting
    # changes between versions: sizing.kernel_bytes is one kernel's formula).
    assert by_policy[1] == reference_memlock(16, 0)
    assert by_policy[2] == reference_memlock(16, 8)
    assert by_policy[2] > by_policy[1]  # entries are paid as they come, not up front


def test_foreign_map_at_the_pin_path_is_refused(pin_dir: Path) -> None:
    pin_dir.mkdir()
    fd = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="not_ours",
        key_size=4,
        value_size=4,
        max_entries=4,
        flags=0,
    )
    try:
        bpfsys.obj_pin(fd, pin_dir / OUTER_PIN_NAME)
    finally:
        os.close(fd)
    with pytest.raises(PinnedMapMismatchError, match="expected a no-prealloc hash-of-maps"):
        PinnedFilterMaps(pin_dir=pin_dir)


def test_remove_pins_unpins_and_frees(pin_dir: Path) -> None:
    m = PinnedFilterMaps(pin_dir=pin_dir)
    m.install(1, [1], max_entries=8)
    outer_id, inner_id = m.outer_map_id, inner_map_ids(m)[1]
    m.remove_pins()
    m.close()
    assert not pin_dir.exists()
    assert wait_maps_gone(outer_id) and wait_maps_gone(inner_id)


def test_probe_names_what_is_missing(tmp_path: Path) -> None:
    here = probe(BPF_ROOT)
    assert here.ok and here.hash_of_maps and here.no_prealloc and here.bpffs
    elsewhere = probe(tmp_path)  # a tmpfs or disk directory, not a bpffs
    assert not elsewhere.bpffs and not elsewhere.ok
    assert elsewhere.reason is not None and str(tmp_path) in elsewhere.reason
