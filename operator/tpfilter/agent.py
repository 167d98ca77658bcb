"""The node agent's loop: watch events in, one writer out.

Events (from kopf's watches, see ``tpfilter.handlers``) only update the :class:`Store`
and set a wake-up flag; they never touch the kernel. A single reconciler task waits for
the flag, takes a snapshot of the store and runs the engine in a worker thread (bpf and
cgroupfs calls block), so:

* bursts of events coalesce into one reconcile;
* there is exactly one writer of the maps;
* the event loop (and so kopf's watches and the liveness endpoint) never blocks on I/O.

Before the first full list of policies and pods has been taken the reconciler does not
run at all: a restarted agent keeps the pinned maps of its predecessor untouched until it
knows the whole truth, so no selected, running container is ever missing from its map.
A periodic resync relists everything (what a watch gap may have hidden) and has the
engine read the kernel maps back (drift).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tpfilter import statefile
from tpfilter.engine import Engine, PolicyStatus, ReconcileResult
from tpfilter.models import Policy, PolicyKind
from tpfilter.nodereport import Entry, build_entries
from tpfilter.pods import Pod
from tpfilter.programs import Metrics, ProgramManager, ProgramStatus
from tpfilter.programs.podindex import PodIndex
from tpfilter.store import Store

log = logging.getLogger(__name__)

RETRY_FIRST = 0.2  # seconds until a pending container (no cgroup yet) is looked up again
RETRY_MAX = 5.0

Lister = Callable[[], Awaitable["FullList"]]


@dataclass(frozen=True, slots=True)
class FullList:
    """One consistent-enough picture of the cluster for this node, with list versions."""

    policies: Mapping[PolicyKind, tuple[list[Mapping[str, Any]], str]]
    pods: tuple[list[Mapping[str, Any]], str]
    # This node's Node object (None: not found) and the version it was read at: its
    # labels are what a policy's nodeSelector is matched against.
    node: tuple[Mapping[str, Any] | None, str] = (None, "")


@dataclass(slots=True)
class Health:
    synced: bool = False
    reconciles: int = 0
    last_reconcile: float = 0.0
    last_result: ReconcileResult | None = None
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)

    def summary(self) -> dict[str, Any]:
        result = self.last_result
        return {
            "synced": self.synced,
            "reconciles": self.reconciles,
            "seconds_since_reconcile": round(time.monotonic() - self.last_reconcile, 3)
            if self.reconciles
            else None,
            "pending": len(result.pending) if result else 0,
            "errors": list(result.errors) if result else [],
            "last_error": self.last_error,
        }


class Agent:
    def __init__(
        self,
        *,
        node_name: str,
        engine: Engine,
        lister: Lister,
        state_dir: Path | None = None,
        resync_seconds: float = 300.0,
        programs: ProgramManager | None = None,
        pod_index: PodIndex | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.node_name = node_name
        self.engine = engine
        self.health = Health()
        self._lister = lister
        self._status_path = state_dir / statefile.STATUS_FILE if state_dir else None
        self._resync_seconds = resync_seconds
        self._wake = asyncio.Event()
        self.store = Store(node_name=node_name, on_change=self._wake.set)
        self._converged = asyncio.Event()
        self.programs, self.pod_index, self.metrics = programs, pod_index, metrics
        self.program_statuses: dict[str, ProgramStatus] = {}
        # This node's state of every policy, for its TracingPolicyNodeReport (None: not
        # synced yet); on_report is told after each reconcile (tpfilter.reporter).
        self.report_entries: list[Entry] | None = None
        self.on_report: Callable[[], None] = lambda: None

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Sync, then reconcile on every change and resync on a timer, until cancelled."""
        await self.resync()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._reconcile_loop())
            tasks.create_task(self._resync_loop())

    async def resync(self) -> None:
        """Take a full list; retry until it works (the API server may be down)."""
        delay = RETRY_FIRST
        while True:
            try:
                listed = await self._lister()
            except Exception as exc:  # any API failure: log, back off, try again
                self.health.last_error = f"list failed: {exc}"
                log.warning("full list failed (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            for kind, (bodies, rv) in listed.policies.items():
                self.store.replace_policies(kind, bodies, rv)
            self.store.replace_pods(*listed.pods)
            self.store.replace_node(*listed.node)
            self.health.synced = True
            self.engine.check_drift()
            self._wake.set()
            return

    async def wait_converged(self, timeout: float) -> ReconcileResult:
        """For tests and the local demo: the next reconcile that leaves nothing pending."""
        self._converged.clear()
        self._wake.set()
        await asyncio.wait_for(self._converged.wait(), timeout)
        assert self.health.last_result is not None
        return self.health.last_result

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync_seconds)
            await self.resync()

    async def _reconcile_loop(self) -> None:
        delay = RETRY_FIRST
        while True:
            if self.health.last_result is not None and not self.health.last_result.converged:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                await self._wake.wait()
                delay = RETRY_FIRST
            self._wake.clear()
            await self._reconcile_once()

    async def _reconcile_once(self) -> None:
        policies, pods = self.store.policies(), self.store.pods()
        node_labels = self.store.node_labels()
        started = time.perf_counter()
        try:
            result = await asyncio.to_thread(self.engine.reconcile, policies, pods, node_labels)
        except Exception as exc:  # a bug or an unexpected kernel answer: report, go on
            log.exception("reconcile failed")
            self.health.last_error = f"reconcile failed: {exc}"
            self.engine.check_drift()
            if self.metrics is not None:
                self.metrics.reconcile_failures.inc()
            return
        log.debug(
            "reconciled %d policies x %d pods: %d operations, %d pending, in %.1f ms",
            len(policies),
            len(pods),
            result.operations,
            len(result.pending),
            (time.perf_counter() - started) * 1000,
        )
        self.health.reconciles += 1
        self.health.last_reconcile = time.monotonic()
        self.health.last_result = result
        if self.metrics is not None:
            self.metrics.observe_reconcile(result)
        if self.programs is not None:
            # After the maps: a program never acts on a policy whose filter is not in place.
            # A policy skipped on this node (nodeSelector) gets no program either.
            here = [p for p in policies if p.node_mismatch(node_labels) is None]
            self.program_statuses = await asyncio.to_thread(self._sync_programs, here, pods)
        for error in result.errors:
            log.error("%s", error)
        self.report_entries = build_entries(
            result.statuses,
            self.program_statuses,
            self.store.invalid_policies(),
            programs_enabled=self.programs is not None,
        )
        self.on_report()
        if result.converged:
            self._converged.set()
        await asyncio.to_thread(self._write_status, result)

    def _sync_programs(self, policies: list[Policy], pods: list[Pod]) -> dict[str, ProgramStatus]:
        assert self.programs is not None
        if self.pod_index is not None:
            self.pod_index.update(pods)
        return self.programs.sync([(p, self.engine.policy_id(p.uid) or 0) for p in policies])

    def _write_status(self, result: ReconcileResult) -> None:
        """The last result, for `tpfilter status` (which runs without API access)."""
        if self._status_path is None:
            return
        data = {
            "node": self.node_name,
            "time": time.time(),
            "synced": self.health.synced,
            "policies": [_status_json(s) for s in result.statuses],
            "invalid": [asdict(p) for p in self.store.invalid_policies()],
            "pending_containers": sorted(ref.container_id for ref in result.pending),
            "programs": [s.as_dict() for s in self.program_statuses.values()],
        }
        statefile.write_json(self._status_path, data)


def _status_json(status: PolicyStatus) -> dict[str, Any]:
    return {
        "kind": status.key.kind.value,
        "namespace": status.key.namespace,
        "name": status.key.name,
        "uid": status.uid,
        "policy_id": status.policy_id,
        "cgroups": status.cgroups,
        "pending": status.pending,
        "error": status.error,
        "skipped": status.skipped,
    }
