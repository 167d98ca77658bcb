"""The controller: node reports in, every policy's ``status`` out (its only writer).

Watch events (kopf, ``tpfilter.controller_handlers``) only update the caches below and
mark the policies they may change as dirty; a single loop recomputes the dirty policies'
status (``tpfilter.aggregate``, pure) at most once per ``interval`` and patches only those
whose status differs from what the policy object holds, so:

* a burst of report writes from many nodes is one recomputation, not one per report;
* a restarted controller, or a recomputation that changes nothing, writes nothing;
* a node that falls silent is noticed by the loop's own timer (no event comes from a
  stopped agent): when the set of stale nodes changes, every policy is recomputed.

Before its first recomputation the controller has every policy and every report: it lists
the policies itself (kopf's watches cannot say when they have delivered everything), and
the reports come from its own paginated list-then-watch (``tpfilter.reportsource``), which
says when its first list is in (``reports_synced``). A status computed from half the
reports would be wrong (and written). Cached objects carry their resourceVersion, so an
older event arriving after a newer list loses.

A node's report may be split in shards (``tpfilter.reportshards``); the report cache
(``tpfilter.reportcache``) merges a node's report from one complete set of its shards.

It also deletes the reports (every shard) of nodes that no longer exist (on the Node's
DELETED event and in a periodic sweep), and posts an Event on the policy when its Ready or Degraded
condition changes status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from tpfilter.accept import Verdict, accept
from tpfilter.aggregate import NodeReport, PolicyFacts, aggregate
from tpfilter.conditions import transitions
from tpfilter.models import PolicyError, PolicyKind, parse_policy
from tpfilter.reportcache import EVERY_POLICY, ReportCache, older, resource_version

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PolicyRef:
    kind: PolicyKind
    namespace: str | None
    name: str
    uid: str


class StatusApi(Protocol):
    """What the controller does to the API (blocking calls; ``tpfilter.statusapi``)."""

    def list_page(
        self, what: str, token: str | None
    ) -> tuple[list[Mapping[str, Any]], str | None]: ...
    def patch_status(self, ref: PolicyRef, status: Mapping[str, Any]) -> None: ...
    def post_event(self, ref: PolicyRef, warning: bool, reason: str, message: str) -> None: ...
    def node_names(self) -> set[str]: ...
    def node_leases(self) -> dict[str, float]: ...
    def delete_report(self, name: str) -> None: ...  # one report object, by name


@dataclass(slots=True)
class _Policy:
    ref: PolicyRef
    facts: PolicyFacts
    status: dict[str, Any]
    rv: int | None


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    interval: float = 2.0  # seconds between two recomputations (coalescing)
    stale_after: float = 180.0  # a node whose Lease is this old is Stale
    max_listed: int = 20  # nodes listed in a policy's status.nodes
    sweep_seconds: float = 300.0  # reports of deleted nodes: periodic sweep
    events: bool = True  # post Events on condition transitions
    lease_poll: float = 0.0  # seconds between two lists of node Leases (0: stale_after / 4)


@dataclass(slots=True)
class Counters:
    recomputed: int = 0
    writes: int = 0
    events: int = 0
    reports_deleted: int = 0
    last_error: str | None = None
    started: float = field(default_factory=time.monotonic)


def rfc3339_seconds(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def verdict_of(body: Mapping[str, Any]) -> Verdict:
    try:
        policy = parse_policy(body)
    except PolicyError as exc:
        return Verdict(False, "Invalid", str(exc))
    return accept(dict(policy.spec.model_extra or {}))


class Controller:
    def __init__(
        self,
        *,
        api: StatusApi,
        config: ControllerConfig = ControllerConfig(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._api = api
        self.config = config
        self._clock = clock
        self._policies: dict[str, _Policy] = {}
        self._report_cache = ReportCache()  # node reports, merged from their shards
        self._dirty: set[str] = set()
        self._gone_nodes: set[str] = set()
        self._stale: frozenset[str] = frozenset()
        self._leases: dict[str, float] = {}  # node -> its Lease's renewTime (epoch)
        self._leases_polled = float("-inf")
        self._wake = asyncio.Event()
        self.reports_synced = asyncio.Event()  # set once every report has been folded in
        self.counters = Counters()
        self.leading: Callable[[], bool] = lambda: True

    # --- events (from kopf and from the initial list) ----------------------------------

    def policy_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        uid = str(metadata.get("uid", ""))
        old = self._policies.get(uid)
        if event_type == "DELETED":
            self._policies.pop(uid, None)
            self._dirty.discard(uid)
            return
        if old is not None and older(resource_version(body), old.rv):
            return
        kind = PolicyKind(str(body.get("kind")))
        generation = int(metadata.get("generation") or 0)
        if old is not None and old.facts.generation == generation:
            verdict = old.facts.verdict  # the spec has not changed: no recompilation
        else:
            verdict = verdict_of(body)
        ref = PolicyRef(kind, metadata.get("namespace"), str(metadata.get("name")), uid)
        status = dict(body.get("status") or {})
        self._policies[uid] = _Policy(
            ref, PolicyFacts(uid, generation, verdict), status, resource_version(body)
        )
        self._mark({uid})

    def report_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """One report object (a whole report or one shard of it): tpfilter.reportcache."""
        changed = self._report_cache.update(event_type, body)
        self._mark(set(self._policies) if changed is EVERY_POLICY else changed)

    def node_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        if event_type == "DELETED":
            self._gone_nodes.add(str((body.get("metadata") or {}).get("name", "")))
            self._wake.set()

    def leadership_changed(self, leading: bool) -> None:
        """A new leader recomputes everything: the standby wrote nothing meanwhile."""
        if leading:
            self._mark(set(self._policies))

    def _mark(self, uids: set[str]) -> None:
        self._dirty |= uids & self._policies.keys()
        if self._dirty:
            self._wake.set()

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        await self._initial_list()
        sweep = asyncio.create_task(self._sweep_loop())
        try:
            tick = max(0.1, min(self.config.interval, self.config.stale_after / 4))
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), tick)
                self._wake.clear()
                await self.step()
                await asyncio.sleep(self.config.interval)  # coalesce what comes meanwhile
        finally:
            sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweep

    async def _initial_list(self) -> None:
        """Every policy, a page at a time; then wait for the report source's first list."""
        delay = 0.5
        for what, fold in (
            (PolicyKind.CLUSTER.value, self.policy_event),
            (PolicyKind.NAMESPACED.value, self.policy_event),
        ):
            token: str | None = None
            while True:
                try:
                    items, token = await asyncio.to_thread(self._api.list_page, what, token)
                except Exception as exc:  # a page failed: start this kind again
                    log.warning("initial list failed (retry in %.1fs): %s", delay, exc)
                    await asyncio.sleep(delay)
                    delay = min(2 * delay, 30.0)
                    token = None
                    continue
                for body in items:
                    fold(None, body)
                if not token:
                    break
        await self.reports_synced.wait()

    async def _poll_leases(self, now: float) -> None:
        every = self.config.lease_poll or self.config.stale_after / 4
        if now - self._leases_polled < every:
            return
        try:
            self._leases = await asyncio.to_thread(self._api.node_leases)
            self._leases_polled = now
        except Exception as exc:  # keep the last answer; a node is not stale for our error
            log.warning("node leases not listed: %s", exc)

    def _alive(self, report: NodeReport) -> NodeReport:
        """The report, with the latest sign of life: its own write or its node's Lease."""
        renewed = self._leases.get(report.node, 0.0)
        return replace(report, heartbeat=renewed) if renewed > report.heartbeat else report

    async def step(self) -> None:
        """One pass: stale nodes, reports of deleted nodes, dirty policies' status."""
        now = self._clock()
        await self._poll_leases(now)
        stale = frozenset(
            node
            for node, r in self._report_cache.reports.items()
            if now - self._alive(r).heartbeat > self.config.stale_after
        )
        if stale != self._stale:
            log.info("stale nodes now: %s", sorted(stale) or "none")
            self._stale = stale
            self._dirty |= set(self._policies)
        if not self.leading():
            return  # a standby keeps its caches warm and writes nothing
        gone, self._gone_nodes = self._gone_nodes, set()
        for node in sorted(gone):
            await self._delete_report(node)
        dirty, self._dirty = self._dirty, set()
        reports = [self._alive(r) for r in self._report_cache.reports.values()]
        text = rfc3339_seconds(now)
        writes = self.counters.writes
        for uid in sorted(dirty):
            policy = self._policies.get(uid)
            if policy is None:
                continue
            status = aggregate(
                policy.facts,
                reports,
                previous=policy.status,
                now=now,
                now_text=text,
                stale_after=self.config.stale_after,
                max_listed=self.config.max_listed,
            )
            self.counters.recomputed += 1
            if status == policy.status:
                continue
            await self._write(policy, status)
        if dirty:
            log.info(
                "recomputed %d policies from %d reports, wrote %d",
                len(dirty),
                len(reports),
                self.counters.writes - writes,
            )

    async def _write(self, policy: _Policy, status: dict[str, Any]) -> None:
        patch: dict[str, Any] = {k: None for k in policy.status if k not in status}
        patch.update(status)
        try:
            await asyncio.to_thread(self._api.patch_status, policy.ref, patch)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return  # deleted meanwhile; its DELETED event is on its way
            log.warning("status of %s not written (retrying): %s", policy.ref.name, exc)
            self.counters.last_error = str(exc)
            self._dirty.add(policy.ref.uid)
            return
        previous, policy.status = policy.status, status
        self.counters.writes += 1
        if self.config.events:
            await self._post_transitions(policy.ref, previous, status)

    async def _post_transitions(
        self, ref: PolicyRef, previous: Mapping[str, Any], status: Mapping[str, Any]
    ) -> None:
        for ctype, cstatus, reason, message in transitions(
            previous.get("conditions") or (), status.get("conditions") or ()
        ):
            if cstatus == ("True" if ctype == "Accepted" else "False") and ctype != "Ready":
                continue  # Accepted, not Degraded: the expected, not news
            warning = (ctype == "Degraded") == (cstatus == "True")
            try:
                await asyncio.to_thread(
                    self._api.post_event, ref, warning, reason, f"{ctype}={cstatus}: {message}"
                )
                self.counters.events += 1
            except Exception as exc:  # an Event is best effort
                log.warning("event for %s not posted: %s", ref.name, exc)

    async def _delete_report(self, node: str) -> None:
        """Every report object of a deleted node: its report or all of its shards."""
        for name in sorted(self._report_cache.names_of(node)):
            try:
                await asyncio.to_thread(self._api.delete_report, name)
                self.counters.reports_deleted += 1
                log.info("deleted report %s (node %s is gone)", name, node)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    log.warning("report %s of deleted node %s not deleted: %s", name, node, exc)
                    self._gone_nodes.add(node)

    async def _sweep_loop(self) -> None:
        """Reports whose Node is gone (deleted while the controller was down)."""
        while True:
            if self.leading():
                try:
                    # The reports it knows (its cache), not a list of them: a full list of
                    # reports is the largest read there is.
                    nodes = await asyncio.to_thread(self._api.node_names)
                    for node in sorted(self._report_cache.nodes() - nodes):
                        await self._delete_report(node)
                except Exception as exc:
                    log.warning("sweep of reports failed: %s", exc)
            await asyncio.sleep(self.config.sweep_seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "policies": len(self._policies),
            "reports": len(self._report_cache.reports),
            "report_objects": self._report_cache.objects,
            "stale": sorted(self._stale),
            "leading": self.leading(),
            "recomputed": self.counters.recomputed,
            "writes": self.counters.writes,
            "events": self.counters.events,
            "reports_deleted": self.counters.reports_deleted,
            "last_error": self.counters.last_error,
        }
