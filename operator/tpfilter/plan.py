"""The difference between desired and actual kernel state, as a list of map operations.

Pure. Input: {policy ID: cgroup IDs wanted} and {policy ID: what the kernel holds}, read
back from the maps. Output: the operations that make the second equal the first, in an
order that never leaves a selected container out of its map:

1. deletes first, to free room in the outer map;
2. then installs (a new, right-sized map, filled before it is swapped in: a rebuild never
   shows a reader a half-filled map) and in-place updates. An update removes before it
   adds, so a map near its capacity has room; what it removes is no longer wanted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tpfilter import sizing
from tpfilter.interfaces import InnerMapState


@dataclass(frozen=True, slots=True)
class Delete:
    policy_id: int


@dataclass(frozen=True, slots=True)
class Install:
    policy_id: int
    cgroup_ids: frozenset[int]
    max_entries: int


@dataclass(frozen=True, slots=True)
class Update:
    policy_id: int
    add: frozenset[int]
    remove: frozenset[int]


Operation = Delete | Install | Update


def plan(
    desired: Mapping[int, frozenset[int]],
    actual: Mapping[int, InnerMapState],
    *,
    limit: int,
) -> list[Operation]:
    """Operations that turn ``actual`` into ``desired``.

    ``limit`` is the most cgroups one policy may hold. A desired set above it is planned
    in full anyway: the map layer then fails loudly with MapFullError for that policy
    (never a silent drop), and the engine reports it.
    """
    deletes: list[Operation] = [Delete(pid) for pid in sorted(actual.keys() - desired.keys())]
    writes: list[Operation] = []
    for pid in sorted(desired):
        want = desired[pid]
        have = actual.get(pid)
        if have is None or sizing.needs_rebuild(len(want), have.max_entries, limit=limit):
            writes.append(Install(pid, want, sizing.target_capacity(len(want), limit=limit)))
        elif want != have.cgroup_ids:
            writes.append(Update(pid, add=want - have.cgroup_ids, remove=have.cgroup_ids - want))
    return deletes + writes
