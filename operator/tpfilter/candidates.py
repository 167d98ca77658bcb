"""What the candidate index should hold, and in which order to write it. Pure.

Why an index: the policy programs (bpf/programs/tpf_programs.c) used to run
``policy_filter_check(policy ID)`` for every policy on a hook at every event, so an exec
paid for every loaded policy, selected or not, and a hook held at most 128 of them. The
index turns the inner maps inside out: for each container cgroup that some policy's inner
map holds, the IDs of those policies; under the key :data:`HOST_KEY`, the policies with
``hostSelector: {}``. A program looks up the task's container once and evaluates only
those policies (plus the hook's unfiltered ones), each still through
``policy_filter_check``, which decides: the index only chooses *candidates*.

So the index must never miss a policy whose inner map holds the cgroup (a missing
candidate is a missed match), while an extra one costs only a lookup. The engine, the
single writer of both, keeps that order (:func:`stage`): a policy enters a cgroup's entry
before the cgroup enters the policy's inner map, and leaves it after the cgroup left.

The bound that remains is per task, what the verifier allows per event: at most
:data:`INDEX_MAX` policies per container (and as many hostSelector policies). Past it the
policies with the highest IDs (the newest) are left out of that entry and reported as an
error in their status, naming the pods; never silently dropped.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from tpfilter.ids import RESERVED_IDS
from tpfilter.interfaces import HOST_MARKER

INDEX_MAX = 48
"""Policies one index entry holds: one container's, or the hostSelector ones."""

HOST_KEY = HOST_MARKER
"""The index key of the hostSelector policies (the marker their inner maps hold)."""

Index = Mapping[int, tuple[int, ...]]
"""cgroup ID (or :data:`HOST_KEY`) -> policy IDs, ascending, at most INDEX_MAX."""


@dataclass(frozen=True, slots=True)
class Bounded:
    """The index for a desired state, and what did not fit."""

    index: dict[int, tuple[int, ...]]
    left_out: dict[int, tuple[int, ...]]  # key -> the policy IDs past INDEX_MAX


def index_for(desired: Mapping[int, Collection[int]]) -> Bounded:
    """The index for ``desired`` (policy ID -> the keys of its inner map).

    Reserved IDs (the node-wide sets) are no policies and never candidates. An inner map's
    :data:`HOST_MARKER` key puts the policy under :data:`HOST_KEY`, like a cgroup.
    """
    full: dict[int, list[int]] = {}
    for policy_id in sorted(desired):
        if policy_id in RESERVED_IDS or policy_id == 0:
            continue
        for key in desired[policy_id]:
            full.setdefault(key, []).append(policy_id)
    index = {key: tuple(ids[:INDEX_MAX]) for key, ids in full.items()}
    left_out = {key: tuple(ids[INDEX_MAX:]) for key, ids in full.items() if len(ids) > INDEX_MAX}
    return Bounded(index, left_out)


@dataclass(frozen=True, slots=True)
class Steps:
    """Index writes around the inner-map writes of one reconcile pass."""

    before: dict[int, tuple[int, ...]]  # written before any inner map changes
    after: dict[int, tuple[int, ...]]  # written once every inner-map write succeeded
    delete_after: frozenset[int]  # keys deleted then

    @property
    def empty(self) -> bool:
        return not (self.before or self.after or self.delete_after)


def merged(new: tuple[int, ...], old: tuple[int, ...]) -> tuple[int, ...]:
    """``new`` plus what ``old`` had and ``new`` drops, within INDEX_MAX (``new`` first).

    The union is the entry while the inner maps change. Should it not fit, the policies
    that are leaving go first: they may miss this cgroup for the moment of the pass, the
    ones staying or coming never do.
    """
    leaving = tuple(p for p in old if p not in set(new))
    return tuple(sorted((new + leaving)[:INDEX_MAX]))


def stage(old: Index, new: Index) -> Steps:
    """How to go from index ``old`` (what the kernel holds) to ``new``.

    ``before`` makes every entry the union of old and new (adds only); ``after`` makes it
    exactly ``new`` and ``delete_after`` drops the keys ``new`` lacks. Written in that
    order around the inner maps' changes, every (cgroup, policy) pair that is in an inner
    map at some moment is in the index at that moment.
    """
    before: dict[int, tuple[int, ...]] = {}
    after: dict[int, tuple[int, ...]] = {}
    for key, ids in new.items():
        was = tuple(old.get(key, ()))
        union = merged(tuple(ids), was)
        if union != was:
            before[key] = union
        if tuple(ids) != union:
            after[key] = tuple(ids)
    return Steps(before, after, frozenset(old.keys() - new.keys()))


def apply(
    index: Index, writes: Mapping[int, tuple[int, ...]], deletes: Collection[int]
) -> dict[int, tuple[int, ...]]:
    """``index`` after ``writes`` and ``deletes`` (for mirrors and models)."""
    out = {k: v for k, v in index.items() if k not in deletes}
    out.update(writes)
    return out
