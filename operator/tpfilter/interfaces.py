"""The node's I/O behind small interfaces.

The engine (``tpfilter.engine``) computes what the kernel maps should hold and applies the
difference; it never touches cgroupfs or the bpf syscall itself. It talks to exactly two
things, both injected, so that the pure parts can be unit-tested with plain fakes and the
real parts tested on the real kernel:

* a :class:`CgroupFinder` that turns a container into the ID of its cgroup v2 directory
  (the value ``bpf_get_current_cgroup_id()`` returns in that container);
* a :class:`FilterMaps`, the one wrapper around the pinned BPF hash-of-maps;
* optionally a :class:`CandidateIndex`, the pinned index the programs consult first
  (:mod:`tpfilter.candidates` says what it holds and why).

This mirrors Tetragon's pkg/policyfilter (a State, an injected cgroup finder, one map
wrapper), without its fixed 32,768-entry preallocated inner maps.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ContainerRef:
    """What a node needs to find one container's cgroup.

    ``container_id`` is the runtime URI exactly as the kubelet reports it in
    ``status.containerStatuses[].containerID``, e.g. ``containerd://4f3c...``,
    ``cri-o://...`` or ``docker://...``; the scheme tells the cgroup naming.
    """

    pod_uid: str
    qos_class: str  # "Guaranteed" | "Burstable" | "BestEffort", from status.qosClass
    container_id: str


class CgroupFinder(Protocol):
    """Resolves containers to cgroup v2 IDs (the inode number of the cgroup directory)."""

    def cgroup_id(self, container: ContainerRef) -> int | None:
        """The container's cgroup ID, or None while its cgroup does not exist (yet)."""
        ...

    def forget(self, container: ContainerRef) -> None:
        """Drop any cached answer for a container that ended, so memory stays bounded."""
        ...


@dataclass(frozen=True, slots=True)
class InnerMapState:
    """What the kernel holds for one policy, read back from the maps."""

    cgroup_ids: frozenset[int]
    max_entries: int


@dataclass(frozen=True, slots=True)
class MapUsage:
    """Kernel cost of one policy's inner map, for `tpfilter status` and the benchmarks."""

    policy_id: int
    map_id: int
    max_entries: int
    entries: int
    memlock: int  # bytes, from /proc/self/fdinfo of the map (the kernel's own accounting)


HOST_MARKER = 2**64 - 1
"""The key that marks a policy with ``hostSelector: {}`` in its own inner map.

A cgroup ID is a kernfs node ID (the directory's inode number), handed out counting up
from 1; 2**64 - 1 is never reached, so the key cannot collide with a container. ``policy_filter.h``
looks it up only after the current cgroup (and its ancestors) missed the policy's map; it
then answers "match" if the task is in no pod container: in none of the cgroups under the
reserved policy ID :data:`tpfilter.ids.ALL_PODS_ID` (nor below one). Being in the same map
as the policy's cgroups, the marker is installed, resized and deleted with them, atomically.
"""


class MapFullError(RuntimeError):
    """An inner map cannot take more cgroup IDs, or the outer map more policies.

    Raised, never swallowed: the engine reports it (log, status) and retries; a cgroup
    ID is never silently dropped.
    """


class FilterMaps(Protocol):
    """The pinned outer hash-of-maps and its per-policy inner maps, on one node.

    The outer map is keyed by a u32 policy ID; each value is an inner hash map (key u64
    cgroup ID, value u8) created with BPF_F_NO_PREALLOC and sized by the caller.
    """

    def read_all(self) -> Mapping[int, InnerMapState]:
        """Every policy ID in the outer map with what its inner map holds."""
        ...

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        """Create a new inner map of ``max_entries``, fill it, then put it in the outer slot
        with one update. A BPF reader sees the old map or the new full one, never a
        half-filled one. Raises MapFullError when the outer map has no room."""
        ...

    def install_many(
        self, items: Sequence[tuple[int, Collection[int], int]]
    ) -> Mapping[int, Exception]:
        """``install`` for many ``(policy_id, cgroup_ids, max_entries)`` at once: one
        outer-map write (one RCU grace period, ~10 ms) per batch instead of one per policy.
        Returns the items that failed, ``{policy_id: MapFullError | OSError}``; every other
        item is installed."""
        ...

    def delete_many(self, policy_ids: Iterable[int]) -> Mapping[int, Exception]:
        """``delete`` for many policies in one outer-map write; returns the failures."""
        ...

    def update(self, policy_id: int, *, add: Collection[int], remove: Collection[int]) -> None:
        """Change an existing inner map in place. Raises MapFullError when it is full."""
        ...

    def delete(self, policy_id: int) -> None:
        """Remove the outer entry; the kernel frees the inner map with its last reference."""
        ...

    def usage(self) -> list[MapUsage]:
        """Kernel memory per inner map."""
        ...


class CandidateIndex(Protocol):
    """The pinned candidate index: cgroup ID (or the host key) -> policy IDs.

    Entries are tuples of at most :data:`tpfilter.candidates.INDEX_MAX` IDs. Each write
    replaces whole entries; the index is sized to its content by the implementation.
    """

    def read_all(self) -> Mapping[int, tuple[int, ...]]:
        """What the kernel holds."""
        ...

    def write(self, writes: Mapping[int, tuple[int, ...]], deletes: Collection[int]) -> None:
        """Set ``writes``, delete ``deletes`` (absent keys are fine). Raises OSError."""
        ...
