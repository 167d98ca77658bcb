"""PinnedFilterMaps.install_many / delete_many on the real kernel, as root.

Outer-map writes wait for an RCU grace period each (~10 ms); the batch forms write many
slots with one BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH and one wait. Checked here:
same result as one install() per policy, per-item failures (full outer map, oversized
sets, a failing element in the middle of a batch, a kernel without batch support), input
errors before any change, fds bounded, and one outer-map write for a 600-policy batch.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernelkit import inner_map_ids, kernel_marks, skip_reason, wait_maps_gone

from tpfilter import bpfmaps, bpfsys
from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.interfaces import InnerMapState, MapFullError

FIRST = 1 << 40  # fake cgroup IDs (no such cgroup: levels resolve to "gone")

pytestmark = kernel_marks(skip_reason("create and pin BPF maps (CAP_BPF/CAP_SYS_ADMIN)"))


@pytest.fixture
def maps(pin_dir: Path) -> Iterator[PinnedFilterMaps]:
    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=1024) as m:
        yield m


def ids(*offsets: int) -> frozenset[int]:
    return frozenset(FIRST + o for o in offsets)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_install_many_equals_one_install_per_policy(pin_dir: Path, maps: PinnedFilterMaps) -> None:
    items = [(p, ids(p, p + 1, p + 2), 8) for p in range(1, 51)]
    assert maps.install_many(items) == {}
    want = {p: InnerMapState(frozenset(c), m) for p, c, m in items}
    assert maps.read_all() == want
    # the same done one by one in another pin dir gives the same kernel state
    other = pin_dir.with_name(pin_dir.name + "-one")
    with PinnedFilterMaps(pin_dir=other, max_policies=1024) as single:
        try:
            for p, c, m in items:
                single.install(p, c, max_entries=m)
            assert single.read_all() == want
        finally:
            single.remove_pins()
    # and a restarted agent sees it
    with PinnedFilterMaps(pin_dir=pin_dir) as again:
        assert again.read_all() == want


def test_install_many_swaps_existing_slots(maps: PinnedFilterMaps) -> None:
    maps.install(1, ids(1), max_entries=8)
    maps.install(2, ids(2), max_entries=8)
    old = inner_map_ids(maps)
    assert maps.install_many([(1, ids(*range(20)), 64), (3, ids(3), 8)]) == {}
    assert maps.read_all() == {
        1: InnerMapState(ids(*range(20)), 64),
        2: InnerMapState(ids(2), 8),
        3: InnerMapState(ids(3), 8),
    }
    new = inner_map_ids(maps)
    assert new[1] != old[1] and new[2] == old[2]
    assert wait_maps_gone(old[1]), "the replaced inner map is freed"


def test_full_outer_map_fails_only_the_new_policies(pin_dir: Path) -> None:
    with PinnedFilterMaps(pin_dir=pin_dir, max_policies=4) as maps:
        maps.install(1, ids(1), max_entries=8)
        maps.install(2, ids(2), max_entries=8)
        items = [(p, ids(p), 8) for p in range(3, 8)] + [(1, ids(1, 100), 8)]
        failures = maps.install_many(items)
        # 3 and 4 fill the map; 5, 6, 7 do not fit; replacing slot 1 still works
        assert set(failures) == {5, 6, 7}
        assert all(isinstance(e, MapFullError) for e in failures.values())
        assert "outer map" in str(failures[5])
        got = maps.read_all()
        assert set(got) == {1, 2, 3, 4}
        assert got[1].cgroup_ids == ids(1, 100)


def test_an_oversized_set_fails_alone(maps: PinnedFilterMaps) -> None:
    failures = maps.install_many([(1, ids(1), 8), (2, ids(*range(9)), 8), (3, ids(3), 8)])
    assert set(failures) == {2}
    assert isinstance(failures[2], MapFullError)
    assert set(maps.read_all()) == {1, 3}


def test_bad_input_changes_nothing(maps: PinnedFilterMaps) -> None:
    maps.install(1, ids(1), max_entries=8)
    before = maps.read_all()
    with pytest.raises(ValueError, match="twice"):
        maps.install_many([(2, ids(2), 8), (2, ids(3), 8)])
    with pytest.raises(ValueError):
        maps.install_many([(2, ids(2), 8), (0, ids(3), 8)])
    with pytest.raises(ValueError):
        maps.install_many([(2, {0}, 8)])
    with pytest.raises(ValueError):
        maps.install_many([(2, ids(2), 0)])
    assert maps.read_all() == before


def test_a_failing_element_mid_batch(
    maps: PinnedFilterMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bpfsys.map_update_batch
    calls: list[int] = []

    def flaky(fd: int, keys: bytes, values: bytes, **kw: int) -> None:
        calls.append(len(keys) // 4)
        if len(calls) == 1:
            # the kernel applied two elements, then the third failed
            real(fd, keys[:8], values[:8], **kw)
            raise bpfsys.BatchError(errno.EIO, "injected", done=2)
        real(fd, keys, values, **kw)

    monkeypatch.setattr(bpfmaps.bpfsys, "map_update_batch", flaky)
    items = [(p, ids(p), 8) for p in range(1, 7)]
    failures = maps.install_many(items)
    assert list(failures) == [3]
    assert isinstance(failures[3], OSError) and failures[3].errno == errno.EIO
    assert calls == [6, 3]  # continued after the failing element, in one more batch
    assert set(maps.read_all()) == {1, 2, 4, 5, 6}


def test_kernel_without_batch_support(
    maps: PinnedFilterMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unsupported(fd: int, keys: bytes, *args: object, **kw: object) -> None:
        raise bpfsys.BatchError(524, "ENOTSUPP", done=0)

    monkeypatch.setattr(bpfmaps.bpfsys, "map_update_batch", unsupported)
    monkeypatch.setattr(bpfmaps.bpfsys, "map_delete_batch", unsupported)
    assert maps.install_many([(p, ids(p), 8) for p in range(1, 5)]) == {}
    assert set(maps.read_all()) == {1, 2, 3, 4}
    assert maps.delete_many([1, 2, 9]) == {}
    assert set(maps.read_all()) == {3, 4}


def test_delete_many(maps: PinnedFilterMaps) -> None:
    assert maps.install_many([(p, ids(p), 8) for p in range(1, 11)]) == {}
    inner = inner_map_ids(maps)
    # absent IDs are skipped (a missing key would otherwise stop the kernel's batch)
    assert maps.delete_many([2, 99, 4, 4, 6, 100]) == {}
    assert set(maps.read_all()) == {1, 3, 5, 7, 8, 9, 10}
    assert wait_maps_gone(*(inner[p] for p in (2, 4, 6)))
    assert maps.delete_many([]) == {}
    with pytest.raises(ValueError):
        maps.delete_many([0])


def test_batches_write_the_outer_map_once_and_fds_stay_bounded(
    maps: PinnedFilterMaps, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One by one, 600 outer writes would wait for 600 RCU grace periods. What makes a
    # batch fast is how many outer-map writes it makes, counted here: the time they take
    # is the machine's.
    outer_writes: list[str] = []

    def counted(name: str) -> None:
        real = getattr(bpfsys, name)

        def call(fd: int, *args: object, **kw: object) -> object:
            if bpfsys.map_info(fd).id == maps.outer_map_id:
                outer_writes.append(name)
            return real(fd, *args, **kw)

        monkeypatch.setattr(bpfmaps.bpfsys, name, call)

    for name in ("map_update", "map_update_batch", "map_delete", "map_delete_batch"):
        counted(name)
    fds = open_fds()
    items = [(p, ids(p, p + 1), 8) for p in range(1, 601)]
    assert maps.install_many(items) == {}
    assert outer_writes == ["map_update_batch"]
    assert len(maps.read_all()) == 600
    assert open_fds() - fds <= 256 + 8, "the inner-map fd cache is bounded"
    outer_writes.clear()
    assert maps.delete_many(p for p, _, _ in items) == {}
    assert outer_writes == ["map_delete_batch"]
    assert maps.read_all() == {}
    assert open_fds() <= fds + 8
