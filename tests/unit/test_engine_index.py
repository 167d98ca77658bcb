"""The engine and the candidate index, with fakes: what it holds, when, and on failure."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

from tpfilter.candidates import HOST_KEY
from tpfilter.engine import Engine
from tpfilter.interfaces import MapFullError
from unit.fakes import FakeCandidateIndex, FakeCgroupFinder, FakeFilterMaps
from unit.test_engine import mkpod, mkpolicy, sel


class OrderCheckingMaps(FakeFilterMaps):
    """Fails the test if an inner map gains a key the index does not list the policy under."""

    def __init__(self, index: FakeCandidateIndex) -> None:
        super().__init__()
        self.index = index

    def _listed(self, policy_id: int, keys: Collection[int]) -> None:
        if policy_id >= 2**32 - 2:
            return  # the reserved sets are no candidates
        for key in keys:
            assert policy_id in self.index.entries.get(key, ()), (policy_id, key)

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        self._listed(policy_id, cgroup_ids)
        super().install(policy_id, cgroup_ids, max_entries=max_entries)

    def install_many(
        self, items: Sequence[tuple[int, Collection[int], int]]
    ) -> dict[int, Exception]:
        for policy_id, ids, _ in items:
            self._listed(policy_id, ids)
        return super().install_many(items)

    def update(self, policy_id: int, *, add: Collection[int], remove: Collection[int]) -> None:
        self._listed(policy_id, add)
        super().update(policy_id, add=add, remove=remove)


def setup(tmp_path: Path) -> tuple[Engine, FakeCandidateIndex, OrderCheckingMaps, dict[str, int]]:
    index = FakeCandidateIndex()
    maps = OrderCheckingMaps(index)
    cgroups = {"c://a": 11, "c://b": 12}
    engine = Engine(
        finder=FakeCgroupFinder(cgroups), maps=maps, state_path=tmp_path / "s.json", index=index
    )
    return engine, index, maps, cgroups


def test_index_is_the_inner_maps_inverted_and_follows_changes(tmp_path: Path) -> None:
    engine, index, _maps, _ = setup(tmp_path)
    pa = mkpod("a", {"app": "a"}, {"main": "c://a"})
    pb = mkpod("b", {"app": "b"}, {"main": "c://b"})
    p1 = mkpolicy("p1", sel(app="a"))
    p2 = mkpolicy("p2", {"hostSelector": {}, **sel(app="b")})
    assert engine.reconcile([p1, p2], [pa, pb]).converged
    id1, id2 = engine.policy_id(p1.uid), engine.policy_id(p2.uid)
    assert index.entries == {11: (id1,), 12: (id2,), HOST_KEY: (id2,)}
    # relabel: p1 moves from a to b
    pb2 = mkpod("b", {"app": "a"}, {"main": "c://b"})
    pa2 = mkpod("a", {"app": "x"}, {"main": "c://a"})
    assert engine.reconcile([p1, p2], [pa2, pb2]).converged
    assert index.entries == {12: (id1,), HOST_KEY: (id2,)}
    assert engine.reconcile([], [pa2, pb2]).converged
    assert index.entries == {}


def test_a_failed_index_write_writes_no_inner_map_and_is_retried(tmp_path: Path) -> None:
    engine, index, maps, _ = setup(tmp_path)
    pa = mkpod("a", {"app": "a"}, {"main": "c://a"})
    p1 = mkpolicy("p1", sel(app="a"))
    index.fail_next(OSError(12, "Cannot allocate memory"))
    result = engine.reconcile([p1], [pa])
    assert not result.converged and maps.contents() == {}
    assert "candidate index" in (result.statuses[0].error or "")
    assert engine.reconcile([p1], [pa]).converged
    assert maps.contents() and index.entries == {11: (engine.policy_id(p1.uid),)}


def test_after_an_inner_map_failure_the_index_stays_a_superset(tmp_path: Path) -> None:
    engine, index, maps, _ = setup(tmp_path)
    pa = mkpod("a", {"app": "a"}, {"main": "c://a"})
    pb = mkpod("b", {"app": "b"}, {"main": "c://b"})
    p1 = mkpolicy("p1", sel(app="a"))
    assert engine.reconcile([p1], [pa, pb]).converged
    id1 = engine.policy_id(p1.uid)
    # p1 moves to b, but the inner-map write fails: both cgroups stay candidates
    pa2, pb2 = (
        mkpod("a", {"app": "x"}, {"main": "c://a"}),
        mkpod("b", {"app": "a"}, {"main": "c://b"}),
    )
    maps.fail_next("update", MapFullError("full"))
    assert not engine.reconcile([p1], [pa2, pb2]).converged
    assert index.entries == {11: (id1,), 12: (id1,)}
    assert engine.reconcile([p1], [pa2, pb2]).converged
    assert index.entries == {12: (id1,)}
