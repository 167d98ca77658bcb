"""In-memory fakes of the engine's two I/O interfaces (tpfilter.interfaces).

``FakeCgroupFinder`` resolves containers from a plain dict ``container_id -> cgroup ID``
(absent: the cgroup does not exist yet). ``FakeFilterMaps`` behaves like the pinned
hash-of-maps as far as the engine can observe it:

* an inner map holds at most ``max_entries`` cgroup IDs; one more raises MapFullError,
  as the kernel's E2BIG does for a no-prealloc hash map (an update that fails half way
  leaves the part already applied, as a sequence of syscalls would);
* the outer map holds at most ``max_policies`` inner maps;
* every install/update/delete/read_all call is counted, and a fault can be queued for the
  next call of a given method (raised before anything is changed).

The test inspects and tampers with ``maps.inner`` directly ("behind the engine's back").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from tpfilter.interfaces import ContainerRef, InnerMapState, MapFullError, MapUsage


class FakeCgroupFinder:
    def __init__(self, cgroups: dict[str, int] | None = None) -> None:
        # Shared by reference on purpose: a test (or a "restarted agent") sees one node.
        self.cgroups: dict[str, int] = {} if cgroups is None else cgroups
        self.lookups: Counter[str] = Counter()
        self.forgotten: list[ContainerRef] = []

    def cgroup_id(self, container: ContainerRef) -> int | None:
        self.lookups[container.container_id] += 1
        return self.cgroups.get(container.container_id)

    def forget(self, container: ContainerRef) -> None:
        self.forgotten.append(container)


@dataclass
class FakeInnerMap:
    max_entries: int
    entries: set[int] = field(default_factory=set)
    map_id: int = 0


class FakeFilterMaps:
    def __init__(self, *, max_policies: int = 16384) -> None:
        self.max_policies = max_policies
        self.inner: dict[int, FakeInnerMap] = {}
        self.calls: Counter[str] = Counter()
        self._faults: dict[str, list[BaseException]] = {}
        self.faults_raised = 0
        self._next_map_id = 1

    # --- test helpers -------------------------------------------------------------------

    def fail_next(self, method: str, exc: BaseException) -> None:
        """Make the next call of ``method`` raise ``exc`` (before changing anything)."""
        self._faults.setdefault(method, []).append(exc)

    def clear_faults(self) -> None:
        self._faults.clear()

    def contents(self) -> dict[int, frozenset[int]]:
        return {pid: frozenset(m.entries) for pid, m in self.inner.items()}

    def capacity(self, policy_id: int) -> int:
        return self.inner[policy_id].max_entries

    @property
    def writes(self) -> int:
        return self.calls["install"] + self.calls["update"] + self.calls["delete"]

    def reset_counts(self) -> None:
        self.calls.clear()

    # --- FilterMaps ---------------------------------------------------------------------

    def _enter(self, method: str) -> None:
        self.calls[method] += 1
        queued = self._faults.get(method)
        if queued:
            self.faults_raised += 1
            raise queued.pop(0)

    def read_all(self) -> Mapping[int, InnerMapState]:
        self._enter("read_all")
        return {
            pid: InnerMapState(frozenset(m.entries), m.max_entries) for pid, m in self.inner.items()
        }

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        self._enter("install")
        if max_entries < 1:
            raise OSError(22, "EINVAL: max_entries must be positive")
        if policy_id not in self.inner and len(self.inner) >= self.max_policies:
            raise MapFullError(f"outer map full ({self.max_policies} policies)")
        ids = set(cgroup_ids)
        if len(ids) > max_entries:
            # The new inner map is filled before the swap: filling fails, the old stays.
            raise MapFullError(f"E2BIG: {len(ids)} entries into a map of {max_entries}")
        self.inner[policy_id] = FakeInnerMap(max_entries, ids, self._next_map_id)
        self._next_map_id += 1

    def update(self, policy_id: int, *, add: Collection[int], remove: Collection[int]) -> None:
        self._enter("update")
        m = self.inner.get(policy_id)
        if m is None:
            raise OSError(2, f"ENOENT: no inner map for policy {policy_id}")
        for cgroup_id in remove:
            m.entries.discard(cgroup_id)
        for cgroup_id in add:
            if cgroup_id not in m.entries and len(m.entries) >= m.max_entries:
                raise MapFullError(f"E2BIG: policy {policy_id} map holds {m.max_entries}")
            m.entries.add(cgroup_id)

    def delete(self, policy_id: int) -> None:
        self._enter("delete")
        self.inner.pop(policy_id, None)

    def install_many(
        self, items: Sequence[tuple[int, Collection[int], int]]
    ) -> dict[int, Exception]:
        self.calls["install_many"] += 1
        failures: dict[int, Exception] = {}
        for policy_id, cgroup_ids, max_entries in items:
            try:
                self.install(policy_id, cgroup_ids, max_entries=max_entries)
            except (MapFullError, OSError) as exc:
                failures[policy_id] = exc
        return failures

    def delete_many(self, policy_ids: Iterable[int]) -> dict[int, Exception]:
        self.calls["delete_many"] += 1
        failures: dict[int, Exception] = {}
        for policy_id in policy_ids:
            try:
                self.delete(policy_id)
            except OSError as exc:
                failures[policy_id] = exc
        return failures

    def usage(self) -> list[MapUsage]:
        self._enter("usage")
        out = []
        for pid, m in sorted(self.inner.items()):
            buckets = 1 << max(0, (m.max_entries - 1).bit_length())
            memlock = 896 + 16 * buckets + 72 * len(m.entries)
            out.append(MapUsage(pid, m.map_id, m.max_entries, len(m.entries), memlock))
        return out


class FakeCandidateIndex:
    """The candidate index as a dict; ``fail_next`` raises OSError on the next write."""

    def __init__(self) -> None:
        self.entries: dict[int, tuple[int, ...]] = {}
        self.writes = 0
        self._fail: OSError | None = None

    def fail_next(self, exc: OSError) -> None:
        self._fail = exc

    def read_all(self) -> Mapping[int, tuple[int, ...]]:
        return dict(self.entries)

    def write(self, writes: Mapping[int, tuple[int, ...]], deletes: Collection[int]) -> None:
        if self._fail is not None:
            exc, self._fail = self._fail, None
            raise exc
        self.writes += 1
        for key in deletes:
            self.entries.pop(key, None)
        self.entries.update(writes)
