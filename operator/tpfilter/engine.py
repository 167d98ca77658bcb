"""The reconcile engine: the one writer of the node's filter maps.

Level-triggered: every call is handed the whole current view (all policies, all of this
node's pods) and makes the kernel maps match it, whatever happened before. It does not
care which event caused the call, so pod-before-policy, policy-before-pod, relabels,
restarts, deletions, a relist after a watch error and an agent restart are one code path:

    desired = policies x pods -> containers -> cgroup IDs       (desired, CgroupFinder)
    actual  = what the kernel maps hold, read back              (FilterMaps.read_all)
    plan(desired, actual) -> operations, applied one by one     (plan, FilterMaps)

Reading every inner map back on every call would cost O(all entries) syscalls per event,
so the engine mirrors what it wrote and reads the kernel back only when the mirror may be
wrong: at start (adopting the pinned maps of a previous agent), after any failed write,
and whenever :meth:`Engine.check_drift` is called (the agent does so on its resync timer).

hostSelector {}: while some policy has it, the engine also keeps the cgroups of *every*
pod container on the node (whatever selects them) under the reserved policy ID
:data:`~tpfilter.ids.ALL_PODS_ID`, and puts :data:`~tpfilter.interfaces.HOST_MARKER` in
such a policy's own map; ``bpf/policy_filter.h`` then also matches a task whose cgroup
chain meets no pod container. The set is exact: every running container of every pod of
this node whose cgroup exists, resolved like selected ones (a container still pending has
no cgroup, so no process in it yet).

hostPID pods: a task in the node's PID namespace counts as a container's own process only
if the container's pod has ``hostPID: true`` (else it is the runtime or a host tool that
entered the cgroup). While some filtered policy exists and such a pod has containers here,
the engine keeps their cgroups under the reserved ID
:data:`~tpfilter.ids.HOST_PID_PODS_ID`; absent means "none on this node".

The candidate index (:mod:`tpfilter.candidates`, the programs' first lookup) is written
around the inner maps by :class:`~tpfilter.indexsync.IndexKeeper`: grown before a pass,
trimmed after it, so it never lacks a (cgroup, policy) pair an inner map holds.

Both reserved sets are written before the policies' maps in a pass, so a policy map never
holds a container that the reserved sets do not know yet (which would, for a moment, take
a hostPID pod's processes for the runtime's, or a new pod's for host processes).

Errors never stop the loop and never lose data: a container whose cgroup does not exist
yet is *pending* (the caller retries), a full map or a failed syscall is reported per
policy and retried on the next call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tpfilter import statefile
from tpfilter.desired import Selection
from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID, RESERVED_IDS, PolicyIds
from tpfilter.indexsync import IndexKeeper
from tpfilter.interfaces import (
    HOST_MARKER,
    CandidateIndex,
    CgroupFinder,
    ContainerRef,
    FilterMaps,
    InnerMapState,
    MapFullError,
)
from tpfilter.models import Policy, PolicyKey
from tpfilter.plan import Delete, Install, Operation, Update, plan
from tpfilter.pods import Pod

log = logging.getLogger(__name__)

DEFAULT_MAX_POLICIES = 16384
DEFAULT_MAX_CGROUPS = 32768  # Tetragon's fixed inner size, here only a ceiling


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-node limits. Hitting one is an error in the policy's status, never a drop."""

    max_policies: int = DEFAULT_MAX_POLICIES  # outer map max_entries (no-prealloc)
    max_cgroups_per_policy: int = DEFAULT_MAX_CGROUPS  # the largest inner map it builds


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    key: PolicyKey
    uid: str
    policy_id: int  # 0: unfiltered, no map
    cgroups: int  # cgroup IDs wanted in the map
    pending: int  # selected containers whose cgroup is not there yet
    error: str | None = None
    skipped: str | None = None  # why the policy does not apply on this node (nodeSelector)
    pods: int = 0  # pods of this node with a selected container
    generation: int = 0  # the policy's metadata.generation this status is for


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    operations: int
    statuses: tuple[PolicyStatus, ...]
    pending: frozenset[ContainerRef]
    errors: tuple[str, ...] = ()

    @property
    def converged(self) -> bool:
        return not self.pending and not self.errors


@dataclass(slots=True)
class _Pass:
    """Scratch state of one reconcile pass."""

    desired: dict[int, frozenset[int]] = field(default_factory=dict)
    pending: dict[int, set[ContainerRef]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    index_error: str | None = None


class Engine:
    def __init__(
        self,
        *,
        finder: CgroupFinder,
        maps: FilterMaps,
        state_path: Path | None = None,
        limits: Limits = Limits(),
        index: CandidateIndex | None = None,
    ) -> None:
        self._finder = finder
        self._maps = maps
        self._keeper = IndexKeeper(index) if index is not None else None
        self._state_path = state_path
        self._limits = limits
        self._ids = statefile.load(state_path) if state_path else PolicyIds()
        self._mirror: dict[int, InnerMapState] | None = None  # None: read the kernel back
        # Container -> cgroup ID, for every selected container found so far. A container ID
        # is never reused (a restart brings a new one) and cgroup v2 IDs are never reused
        # either, so an answer stays right for the container's life; check_drift() drops
        # them all anyway, so the periodic resync re-resolves from scratch.
        self._cgroup_of: dict[ContainerRef, int] = {}
        self._selection = Selection()
        self._skipped: dict[str, str] = {}  # policy UID -> why it is skipped on this node

    def policy_id(self, uid: str) -> int | None:
        """The node-local ID of a filtered policy, for the programs that check it."""
        record = self._ids.get(uid)
        return record.policy_id if record else None

    @property
    def records(self) -> PolicyIds:
        return self._ids

    def check_drift(self) -> None:
        """Make the next reconcile read the kernel maps back and look every cgroup up again."""
        self._mirror = None
        if self._keeper is not None:
            self._keeper.forget()
        for ref in self._cgroup_of:
            self._finder.forget(ref)
        self._cgroup_of.clear()

    def reconcile(
        self,
        policies: Sequence[Policy],
        pods: Sequence[Pod],
        node_labels: Mapping[str, str] | None = None,
    ) -> ReconcileResult:
        """Make the maps match ``policies`` x ``pods`` on a node labelled ``node_labels``.

        A policy whose nodeSelector does not match ``node_labels`` (None: no labels) is
        treated as absent (no ID, no map) and reported as skipped in its status.
        """
        skipped = self._note_skipped(policies, node_labels or {})
        applicable = [p for p in policies if p.uid not in skipped]
        wanted = self._selection.desired(applicable, pods)
        filtered = [p for p in applicable if p.uid in wanted]
        all_pods = (
            frozenset(c.ref for pod in pods for c in pod.containers)
            if any(p.selects_host for p in filtered)
            else None
        )
        host_pid = (
            frozenset(c.ref for pod in pods if pod.host_pid for c in pod.containers)
            if filtered
            else frozenset()
        )
        before = list(self._ids)
        for policy in filtered:
            self._ids.ensure(policy)
        gone = [r for r in self._ids if r.uid not in wanted]
        if list(self._ids) != before:
            self._save()  # before any map exists for a new ID: a crash leaves no orphan

        scratch = self._resolve(filtered, wanted, all_pods, host_pid)
        mirror = dict(self._actual())
        operations = plan(scratch.desired, mirror, limit=self._limits.max_cgroups_per_policy)
        # The reserved sets' writes first (see the module docstring); deletes need no order.
        first = [op for op in operations if _reserved_write(op)]
        rest = [op for op in operations if not _reserved_write(op)]
        applied = 0
        if self._index_before(scratch, mirror, pods):
            applied = self._apply_all(first, scratch, mirror)
            applied += self._apply_all(rest, scratch, mirror)
        # After a failed write the kernel may hold part of it: read it back next time.
        self._mirror = mirror if applied == len(operations) else None
        if self._keeper is not None and (
            error := self._keeper.after(inner_maps_ok=applied == len(operations))
        ):
            scratch.index_error = f"candidate index: {error}"

        failed_deletes = {pid for pid in scratch.errors if pid not in scratch.desired}
        for record in gone:
            if record.policy_id not in failed_deletes:
                self._ids.release(record.uid)
        if gone:
            self._save()
        self._forget_unwanted([*wanted.values(), all_pods or frozenset(), host_pid])
        return self._result(policies, applied, scratch, skipped, wanted)

    def _index_before(
        self, scratch: _Pass, mirror: Mapping[int, InnerMapState], pods: Sequence[Pod]
    ) -> bool:
        """Grow the candidate index for this pass (False: it failed, write no inner map)."""
        if self._keeper is None:
            return True

        def pod_of() -> dict[int, str]:
            return {
                cgroup: f"{pod.namespace}/{pod.name}"
                for pod in pods
                for c in pod.containers
                if (cgroup := self._cgroup_of.get(c.ref)) is not None
            }

        return self._keeper.grow(scratch.desired, scratch.errors, present=mirror, pod_of=pod_of)

    def _note_skipped(
        self, policies: Sequence[Policy], node_labels: Mapping[str, str]
    ) -> dict[str, str]:
        """{UID: reason} of the policies that do not apply here; logs every change."""
        skipped = {p.uid: why for p in policies if (why := p.node_mismatch(node_labels))}
        for policy in policies:
            was, now = self._skipped.get(policy.uid), skipped.get(policy.uid)
            if now and not was:
                log.info("%s: skipped on this node: %s", policy.key, now)
            elif was and not now:
                log.info("%s: applies on this node again (nodeSelector matches)", policy.key)
        self._skipped = skipped
        return skipped

    def _resolve(
        self,
        policies: Iterable[Policy],
        wanted: Mapping[str, frozenset[ContainerRef]],
        all_pods: frozenset[ContainerRef] | None,
        host_pid: frozenset[ContainerRef],
    ) -> _Pass:
        scratch = _Pass()
        for policy in policies:
            policy_id = self._ids.ensure(policy).policy_id
            # The hostSelector marker takes one entry of the map.
            limit = self._limits.max_cgroups_per_policy - (1 if policy.selects_host else 0)
            found = self._cgroups(policy_id, wanted[policy.uid], scratch)
            if len(found) > limit:
                # Deterministic and loud: the lowest IDs stay, the error names the policy.
                scratch.errors[policy_id] = (
                    f"selects {len(found)} containers, over the limit of {limit} per policy;"
                    f" {len(found) - limit} are not filtered in"
                )
                found = set(sorted(found)[:limit])
            if policy.selects_host:
                found.add(HOST_MARKER)
            scratch.desired[policy_id] = frozenset(found)
        if all_pods is not None:
            # Never truncated: a pod container left out would count as a host process.
            scratch.desired[ALL_PODS_ID] = frozenset(self._cgroups(ALL_PODS_ID, all_pods, scratch))
        # Never truncated either; not kept empty (absent means the same, and costs nothing).
        if found := self._cgroups(HOST_PID_PODS_ID, host_pid, scratch):
            scratch.desired[HOST_PID_PODS_ID] = frozenset(found)
        return scratch

    def _cgroups(self, policy_id: int, refs: Iterable[ContainerRef], scratch: _Pass) -> set[int]:
        """The cgroup IDs of ``refs``; the ones not found yet are pending under ``policy_id``."""
        found: set[int] = set()
        for ref in refs:
            cgroup_id = self._cgroup_of.get(ref) or self._finder.cgroup_id(ref)
            if cgroup_id is None:
                scratch.pending.setdefault(policy_id, set()).add(ref)
            else:
                found.add(cgroup_id)
                self._cgroup_of[ref] = cgroup_id
        return found

    def _actual(self) -> Mapping[int, InnerMapState]:
        if self._mirror is None:
            self._mirror = dict(self._maps.read_all())
        return self._mirror

    def _apply_all(
        self, operations: Sequence[Operation], scratch: _Pass, mirror: dict[int, InnerMapState]
    ) -> int:
        """Deletes in one batch, then installs in one batch (one RCU grace period each, not
        one per policy: a map-of-maps write waits for one), then in-place updates one by one.
        Failures are reported per policy, never raised. Returns how many succeeded."""
        deletes = [op.policy_id for op in operations if isinstance(op, Delete)]
        installs = [op for op in operations if isinstance(op, Install)]
        updates = [op for op in operations if isinstance(op, Update)]
        applied = 0
        if deletes:
            failed = self._batch(
                "Delete", deletes, scratch, lambda: self._maps.delete_many(deletes)
            )
            for pid in deletes:
                if pid not in failed:
                    mirror.pop(pid, None)
                    applied += 1
        if installs:
            items = [(i.policy_id, i.cgroup_ids, i.max_entries) for i in installs]
            failed = self._batch(
                "Install",
                [i.policy_id for i in installs],
                scratch,
                lambda: self._maps.install_many(items),
            )
            for i in installs:
                if i.policy_id not in failed:
                    mirror[i.policy_id] = InnerMapState(i.cgroup_ids, i.max_entries)
                    applied += 1
        return applied + sum(self._apply(u, scratch, mirror) for u in updates)

    def _batch(
        self,
        what: str,
        policy_ids: Sequence[int],
        scratch: _Pass,
        call: Callable[[], Mapping[int, Exception]],
    ) -> set[int]:
        """Run one batch call; record and return the policy IDs it failed for."""
        failures: Mapping[int, Exception]
        try:
            failures = call()
        except (MapFullError, OSError) as exc:  # the whole batch failed
            failures = dict.fromkeys(policy_ids, exc)
        for pid, error in failures.items():
            log.error("policy %d: %s failed: %s", pid, what, error)
            scratch.errors[pid] = str(error)
        return set(failures)

    def _apply(self, op: Operation, scratch: _Pass, mirror: dict[int, InnerMapState]) -> bool:
        """Apply one operation and record it in ``mirror``; a failure is reported, not raised."""
        try:
            match op:
                case Delete(pid):
                    self._maps.delete(pid)
                    mirror.pop(pid, None)
                case Install(pid, cgroup_ids, max_entries):
                    self._maps.install(pid, cgroup_ids, max_entries=max_entries)
                    mirror[pid] = InnerMapState(cgroup_ids, max_entries)
                case Update(pid, add, remove):
                    self._maps.update(pid, add=add, remove=remove)
                    old = mirror[pid]
                    mirror[pid] = InnerMapState((old.cgroup_ids - remove) | add, old.max_entries)
        except (MapFullError, OSError) as exc:
            log.error("policy %d: %s failed: %s", op.policy_id, type(op).__name__, exc)
            scratch.errors[op.policy_id] = str(exc)
            return False
        return True

    def _forget_unwanted(self, wanted: Iterable[frozenset[ContainerRef]]) -> None:
        still = set().union(*wanted)
        for ref in self._cgroup_of.keys() - still:
            self._finder.forget(ref)
            del self._cgroup_of[ref]

    def _result(
        self,
        policies: Sequence[Policy],
        applied: int,
        scratch: _Pass,
        skipped: Mapping[str, str],
        wanted: Mapping[str, frozenset[ContainerRef]],
    ) -> ReconcileResult:
        statuses = []
        for policy in policies:
            record = self._ids.get(policy.uid)
            pid = record.policy_id if record else 0
            statuses.append(
                PolicyStatus(
                    key=policy.key,
                    uid=policy.uid,
                    policy_id=pid,
                    cgroups=len(scratch.desired.get(pid, frozenset()) - {HOST_MARKER}),
                    pending=len(scratch.pending.get(pid, ())),
                    error=scratch.errors.get(pid),
                    skipped=skipped.get(policy.uid),
                    pods=len({ref.pod_uid for ref in wanted.get(policy.uid, ())}),
                    generation=policy.generation,
                )
            )
        pending = frozenset().union(*scratch.pending.values())
        names = {r.policy_id: str(r.key) for r in self._ids}
        names[ALL_PODS_ID] = "all-pods set (hostSelector)"
        names[HOST_PID_PODS_ID] = "hostPID pods' set"
        errors = tuple(
            f"{names.get(pid, f'policy {pid}')}: {msg}"
            for pid, msg in sorted(scratch.errors.items())
        ) + ((scratch.index_error,) if scratch.index_error else ())
        return ReconcileResult(applied, tuple(statuses), pending, errors)

    def _save(self) -> None:
        if self._state_path:
            statefile.save(self._state_path, self._ids)


def _reserved_write(op: Operation) -> bool:
    return op.policy_id in RESERVED_IDS and not isinstance(op, Delete)
