"""The agent's writer of its node's TracingPolicyNodeReport (API I/O; decisions elsewhere).

The object is cluster-scoped, named after the node, and written by this node's agent
only (the chart's ValidatingAdmissionPolicy refuses another node's writes). When to write
is :func:`tpfilter.coalesce.next_write`; this module only sleeps until then and writes.

At start the reporter reads what the API server holds, so a restarted agent rewrites
nothing that has not changed (it adopts the old write time too). A failed write is
retried with backoff and never stops the agent: the maps matter more than the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from tpfilter.coalesce import WriteRates, Written, next_write
from tpfilter.nodereport import Entry, summary

log = logging.getLogger(__name__)

GROUP: Final = "tpfilter.io"
VERSION: Final = "v1alpha1"
KIND: Final = "TracingPolicyNodeReport"
PLURAL: Final = "tracingpolicynodereports"
RETRY_FIRST, RETRY_MAX = 0.5, 30.0


def to_rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def report_body(node: str, entries: Sequence[Entry], at: float) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": node},
        "nodeName": node,
        "writeTime": to_rfc3339(at),
        "summary": summary(entries),
        "policies": list(entries),
    }


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
    def read(self, node: str) -> dict[str, Any] | None: ...
    def write(self, node: str, body: dict[str, Any]) -> None: ...


class KubeReportApi:
    """Reads and writes report objects with the official client (blocking calls)."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self._api: Any = kubernetes.client.CustomObjectsApi(api_client)

    def read(self, node: str) -> dict[str, Any] | None:
        try:
            body = self._api.get_cluster_custom_object(GROUP, VERSION, PLURAL, node)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                return None
            raise
        return dict(body)

    def write(self, node: str, body: dict[str, Any]) -> None:
        # A merge patch of the whole content: no read-modify-write, no resourceVersion.
        try:
            self._api.patch_cluster_custom_object(GROUP, VERSION, PLURAL, node, body)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            self._api.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)


class Reporter:
    def __init__(
        self,
        *,
        node_name: str,
        api: ReportApi,
        rates: WriteRates,
        source: Callable[[], list[Entry] | None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._node = node_name
        self._api = api
        self._rates = rates
        self._source = source  # None: nothing to report yet (the agent has not synced)
        self._clock = clock
        self._wake = asyncio.Event()
        self.written: Written | None = None
        self.writes = 0

    def changed(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        delay = RETRY_FIRST
        while True:
            try:
                self.written = written_of(await asyncio.to_thread(self._api.read, self._node))
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
            wait = next_write(current, self.written, self._rates) - self._clock()
            if wait > 0:
                log.debug("report: nothing to write for %.1fs", wait)
                await self._sleep(wait)
                continue
            now = self._clock()
            try:
                await asyncio.to_thread(
                    self._api.write, self._node, report_body(self._node, current, now)
                )
            except Exception as exc:
                log.warning("writing this node's report failed (retry in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_FIRST
            self.written = Written(entries=current, at=now)
            self.writes += 1
            log.debug("report written (%d policies)", len(current))

    async def _sleep(self, seconds: float | None) -> None:
        """Until something changed or ``seconds`` passed (None: until something changed)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()
