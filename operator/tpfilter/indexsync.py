"""The engine's side of the candidate index: the writes around each reconcile pass.

The engine changes the inner maps in one pass (:mod:`tpfilter.engine`); this keeps the
index (:mod:`tpfilter.candidates`) a superset of them throughout:

1. :meth:`IndexKeeper.before` - every entry becomes the union of what it was and what it
   will be (adds only), before any inner map changes;
2. the engine writes the inner maps;
3. :meth:`IndexKeeper.after` - if every inner-map write succeeded, the entries become
   exactly the new index and the keys it lacks go. After a failure the unions stay (extra
   candidates cost a lookup each, never a wrong answer) until a pass succeeds.

It mirrors what it wrote and reads the kernel back after a failed write and on
:meth:`forget` (the engine's drift check).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from tpfilter.candidates import Bounded, Steps, apply, index_for, stage
from tpfilter.interfaces import CandidateIndex

log = logging.getLogger(__name__)


class IndexKeeper:
    def __init__(self, index: CandidateIndex) -> None:
        self._index = index
        self._mirror: dict[int, tuple[int, ...]] | None = None
        self._steps: Steps | None = None

    def forget(self) -> None:
        """Read the kernel's index back before the next write."""
        self._mirror = None

    def _actual(self) -> dict[int, tuple[int, ...]]:
        if self._mirror is None:
            self._mirror = dict(self._index.read_all())
        return self._mirror

    def before(self, desired: Mapping[int, frozenset[int]]) -> Bounded:
        """Step 1 for ``desired`` (policy ID -> inner map keys). Raises OSError: then no
        inner map may gain anything in this pass."""
        bounded = index_for(desired)
        old = self._actual()
        steps = stage(old, bounded.index)
        try:
            self._index.write(steps.before, ())
        except OSError:
            self._mirror = None
            raise
        self._mirror = apply(old, steps.before, ())
        self._steps = steps
        return bounded

    def grow(
        self,
        desired: Mapping[int, frozenset[int]],
        errors: dict[int, str],
        *,
        present: Iterable[int],
        pod_of: Callable[[], Mapping[int, str]],
    ) -> bool:
        """:meth:`before`, with its outcome put in ``errors`` (policy ID -> message): if
        the write failed, every policy of ``desired`` and ``present`` (the policies with a
        map now) gets the error and False says: write no inner map in this pass. Policies
        past the per-task bound get an error naming the pods (``pod_of``: cgroup -> pod)."""
        try:
            bounded = self.before(desired)
        except OSError as exc:
            log.error("candidate index: write failed, the maps wait: %s", exc)
            for pid in {*desired, *present}:
                errors[pid] = f"candidate index: {exc}"
            return False
        if bounded.left_out:
            for pid, msg in left_out_errors(bounded, pod_of()).items():
                errors[pid] = f"{errors[pid]}; {msg}" if pid in errors else msg
        return True

    def after(self, *, inner_maps_ok: bool) -> str | None:
        """Step 3; returns an error message if the index write failed (it is retried)."""
        steps, self._steps = self._steps, None
        if steps is None or not inner_maps_ok or self._mirror is None:
            return None
        try:
            self._index.write(steps.after, steps.delete_after)
        except OSError as exc:
            log.error("candidate index: trimming failed (extra candidates stay): %s", exc)
            self._mirror = None
            return str(exc)
        self._mirror = apply(self._mirror, steps.after, steps.delete_after)
        return None


def left_out_errors(bounded: Bounded, pod_of: Mapping[int, str]) -> dict[int, str]:
    """{policy ID: error} for the policies past the per-task bound, naming the pods."""
    from tpfilter.candidates import HOST_KEY, INDEX_MAX

    errors: dict[int, list[str]] = {}
    for key, policy_ids in sorted(bounded.left_out.items()):
        if key == HOST_KEY:
            where = f"host processes (over {INDEX_MAX} hostSelector policies on this node)"
        else:
            where = (
                f"pod {pod_of.get(key, f'with cgroup {key}')} (over {INDEX_MAX} policies"
                " select this container)"
            )
        for policy_id in policy_ids:
            errors.setdefault(policy_id, []).append(where)
    return {
        pid: "not evaluated for " + "; ".join(wheres) + ": the programs evaluate at most "
        f"{INDEX_MAX} policies per process (the newest are left out)"
        for pid, wheres in errors.items()
    }
