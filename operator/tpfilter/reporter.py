"""The agent's writer of its node's TracingPolicyNodeReport (API I/O; decisions elsewhere).

The report is cluster-scoped, named after the node, and written by this node's agent
only (the chart's ValidatingAdmissionPolicy refuses another node's writes). Past a size
budget it is split into shards (``tpfilter.reportshards`` decides how); when to write a
shard is :func:`tpfilter.coalesce.next_write`, per shard, so a change to one policy
rewrites only its shard. This module only sleeps until then, writes, and deletes the
objects of a previous shard count once every object of the new one is written.

At start the reporter reads what the API server holds, so a restarted agent rewrites
nothing that has not changed (it adopts the old write times too). The agent may not list
reports (RBAC), so it probes by name: shard 0 of each possible count. A failed write is
retried with backoff and never stops the agent: the maps matter more than the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Protocol

from tpfilter.coalesce import WriteRates, Written, next_write
from tpfilter.nodereport import Entry
from tpfilter.reportshards import GROUP as GROUP
from tpfilter.reportshards import KIND as KIND
from tpfilter.reportshards import MAX_SHARDS, REPORT_MAX_BYTES, shard_body, shard_name, split
from tpfilter.reportshards import PLURAL as PLURAL
from tpfilter.reportshards import VERSION as VERSION
from tpfilter.reportshards import from_rfc3339 as from_rfc3339
from tpfilter.reportshards import to_rfc3339 as to_rfc3339

log = logging.getLogger(__name__)

RETRY_FIRST: Final = 0.5
RETRY_MAX: Final = 30.0


def report_body(node: str, entries: Sequence[Entry], at: float) -> dict[str, Any]:
    """The whole report in one object (a node below the budget: shard 0 of 1)."""
    return shard_body(node, entries, at)


def written_of(body: dict[str, Any] | None) -> Written | None:
    """What a report object read back says was written, or None (no usable report)."""
    if not body or not body.get("writeTime"):
        return None
    try:
        at = from_rfc3339(str(body["writeTime"]))
    except ValueError:
        return None
    return Written(entries=list(body.get("policies") or []), at=at)


class ReportApi(Protocol):
    def read(self, name: str) -> dict[str, Any] | None: ...
    def write(self, name: str, body: dict[str, Any]) -> None: ...
    def delete(self, name: str) -> None: ...


class KubeReportApi:
    """Reads, writes and deletes report objects with the official client (blocking)."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self._api: Any = kubernetes.client.CustomObjectsApi(api_client)

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            body = self._api.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise
        return dict(body)

    def write(self, name: str, body: dict[str, Any]) -> None:
        # A merge patch of the whole content: no read-modify-write, no resourceVersion.
        try:
            self._api.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, body)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            self._api.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

    def delete(self, name: str) -> None:
        try:
            self._api.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise


def existing_shards(api: ReportApi, node: str, max_shards: int = MAX_SHARDS) -> dict[str, Written]:
    """Every report object of ``node`` the API server holds, by name (blocking).

    Shard 0 of each power-of-two count is probed (9 reads for 256), then the rest of each
    count found; an object without a usable writeTime counts as written long ago.
    """
    found: dict[str, Written] = {}
    count = 1
    while count <= max_shards:
        first = api.read(shard_name(node, 0, count))
        if first is not None:
            for index in range(count):
                body = first if index == 0 else api.read(shard_name(node, index, count))
                if body is not None:
                    found[str(body["metadata"]["name"])] = written_of(body) or Written([], 0.0)
        count *= 2
    return found


class Reporter:
    def __init__(
        self,
        *,
        node_name: str,
        api: ReportApi,
        rates: WriteRates,
        source: Callable[[], list[Entry] | None],
        clock: Callable[[], float] = time.time,
        max_bytes: int = REPORT_MAX_BYTES,
    ) -> None:
        self._node = node_name
        self._api = api
        self._rates = rates
        self._source = source  # None: nothing to report yet (the agent has not synced)
        self._clock = clock
        self._max_bytes = max_bytes
        self._wake = asyncio.Event()
        self.written: dict[str, Written] = {}  # every object of this node, by name
        self.writes = 0
        self.deletes = 0

    def changed(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                self.written = await asyncio.to_thread(existing_shards, self._api, self._node)
                break
            except Exception as exc:  # the API server may be down, or the CRD missing
                log.warning("reading this node's report failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
        delay = RETRY_FIRST
        while True:
            current = self._source()
            if current is None:
                await self._sleep(None)
                continue
            groups = split(self._node, current, max_bytes=self._max_bytes)
            plan = {shard_name(self._node, i, len(groups)): g for i, g in enumerate(groups)}
            due = {n: next_write(g, self.written.get(n), self._rates) for n, g in plan.items()}
            wait = min(due.values()) - self._clock()
            try:
                if wait <= 0:
                    await self._write(plan, due)
                # Also when nothing is due: a restarted agent may find a leftover set.
                await self._delete_others(plan.keys())
            except Exception as exc:
                log.warning("writing this node's report failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            if wait > 0:
                log.debug("report: nothing to write for %.1fs", wait)
                await self._sleep(wait)

    async def _write(self, plan: dict[str, list[Entry]], due: dict[str, float]) -> None:
        """The shards that are due, in index order (the others are unchanged or waiting)."""
        now = self._clock()
        count = len(plan)
        for index, (name, entries) in enumerate(plan.items()):
            if due[name] > now:
                continue
            body = shard_body(self._node, entries, now, index=index, count=count)
            await asyncio.to_thread(self._api.write, name, body)
            self.written[name] = Written(entries=entries, at=now)
            self.writes += 1
            log.debug("report written: %s (%d policies)", name, len(entries))

    async def _delete_others(self, names: Iterable[str]) -> None:
        """The objects of a previous shard count, once the current count is written in full
        (until then the old set is the complete one the controller reads)."""
        wanted = set(names)
        if not wanted <= self.written.keys():
            return
        for name in sorted(self.written.keys() - wanted):
            await asyncio.to_thread(self._api.delete, name)
            del self.written[name]
            self.deletes += 1
            log.info("report %s deleted (now %d shards)", name, len(wanted))

    async def _sleep(self, seconds: float | None) -> None:
        """Until something changed or ``seconds`` passed (None: until something changed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()
