"""Simulated nodes for bench_status.py: the agent's real report writer, a simulated engine.

1,000 agents do not fit on one machine, but what they write does: each simulated node
runs the agent's own :class:`tpfilter.reporter.Reporter` (with its coalescing,
``tpfilter.coalesce``, at the agent's default rates) and its own
:class:`tpfilter.nodelease.NodeLease` (renewed every 10 s), in one asyncio loop, through
the official client, exactly as ``tpfilter agent`` does. The entries are built by the
agent's :func:`tpfilter.nodereport.build_entries`. What is simulated is only what the
engine would compute on a real node: each node's :class:`tpfilter.engine.PolicyStatus`
per policy (Ready, 4 cgroups, 2 pods, one tracepoint hook), changed by the benchmark:

* a spec change: every node applies the new generation at once (the worst burst);
* pod churn: a pod created or deleted on a node, selected by one policy: that policy's
  ``pods`` and ``cgroups`` move by one (a count change: what the agent sees once the
  kubelet has written the pod's container IDs; a container seen before its cgroup would
  also make the entry Pending for a moment, which is not simulated);
* a break and its repair: one policy's entry on one node goes to Error (``MapError``)
  and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tpfilter.coalesce import WriteRates
from tpfilter.engine import PolicyStatus
from tpfilter.models import PolicyKey, PolicyKind
from tpfilter.nodelease import NodeLease
from tpfilter.nodereport import Entry, build_entries
from tpfilter.programs.manager import ProgramStatus
from tpfilter.reporter import KubeReportApi, Reporter


class Tally:
    """What the simulated agents sent, counted on their side (a cross-check of the API
    server's figures) and the naive baseline: a controller that wrote a policy's status
    once per report write changing that policy's entry."""

    def __init__(self) -> None:
        self.writes = 0
        self.entry_changes = 0
        self.written_at: dict[str, float] = {}  # report name -> when its last write returned


class TallyingReportApi:
    """The agent's KubeReportApi, counting what each write changes."""

    def __init__(self, inner: KubeReportApi, tally: Tally) -> None:
        self._inner, self._tally = inner, tally
        self._last: dict[str, dict[str, Entry]] = {}

    def read(self, name: str) -> dict[str, Any] | None:
        return self._inner.read(name)

    def write(self, name: str, body: dict[str, Any]) -> None:
        self._inner.write(name, body)
        self._tally.written_at[name] = time.monotonic()
        now = {str(e["uid"]): e for e in body.get("policies") or ()}
        before = self._last.get(name, {})
        self._tally.writes += 1
        self._tally.entry_changes += sum(before.get(u) != now.get(u) for u in now | before)
        self._last[name] = now

    def delete(self, name: str) -> None:
        self._inner.delete(name)


HOOK = "sched/sched_process_exec"


class SimNode:
    def __init__(
        self,
        name: str,
        policies: Sequence[tuple[str, str]],  # (uid, name)
        *,
        api_client: Any,
        rates: WriteRates,
        heartbeat: float,
        tally: Tally,
        lease_namespace: str = "default",
    ) -> None:
        self.name = name
        self.statuses: dict[str, PolicyStatus] = {}
        self.programs: dict[str, ProgramStatus] = {}
        for i, (uid, policy) in enumerate(policies):
            key = PolicyKey(kind=PolicyKind.CLUSTER, namespace=None, name=policy)
            self.statuses[uid] = PolicyStatus(
                key=key, uid=uid, policy_id=i + 1, cgroups=4, pending=0, pods=2, generation=1
            )
            self.programs[uid] = ProgramStatus(uid, str(key), i + 1, "loaded", (), (HOOK,))
        self._entries: list[Entry] | None = None
        self.reporter = Reporter(
            node_name=name,
            api=TallyingReportApi(KubeReportApi(api_client), tally),
            rates=rates,
            source=self.entries,
        )
        self.lease = NodeLease(
            api_client=api_client, node_name=name, namespace=lease_namespace, interval=heartbeat
        )
        self.changes = 0  # changes of this node's state (what a naive agent would write)

    def entries(self) -> list[Entry]:
        if self._entries is None:  # the agent rebuilds them after a reconcile, not per wake
            self._entries = build_entries(
                self.statuses.values(), self.programs, (), programs_enabled=True
            )
        return self._entries

    def _changed(self) -> None:
        self._entries = None
        self.changes += 1
        self.reporter.changed()

    def set_generation(self, uid: str, generation: int) -> None:
        self.statuses[uid] = replace(self.statuses[uid], generation=generation)
        self._changed()

    def pod(self, uid: str, delta: int) -> None:
        status = self.statuses[uid]
        pods = max(0, status.pods + delta)
        self.statuses[uid] = replace(status, pods=pods, cgroups=2 * pods)
        self._changed()

    def set_error(self, uid: str, error: str | None) -> None:
        self.statuses[uid] = replace(self.statuses[uid], error=error)
        self._changed()

    async def run(self, start_lease_after: float) -> None:
        """The node's agent side: its reporter, and its Lease (started after a delay, so
        1,000 nodes' renewals spread over the interval as real agents' starts do)."""
        reporter = asyncio.create_task(self.reporter.run())
        try:
            await asyncio.sleep(start_lease_after)
            await self.lease.run()
        finally:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
