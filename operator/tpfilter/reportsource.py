"""The controller's own list-then-watch of TracingPolicyNodeReports (not kopf's).

kopf lists a resource in one request before it watches it, without ``limit``: at 1,000
nodes x 1,000 policies that is one response of ~220 MB of JSON, which the API server
builds and the controller parses whole before it keeps a byte of it (docs/status.md has
the figures). This source reads the reports the way client-go's reflector does, a page
at a time:

* **list** with ``limit`` and ``continue``: each page is handed to the controller (which
  keeps only what aggregation needs, ``tpfilter.reportcache``) before the next is read,
  so at most one page of JSON is held at once; the list's resourceVersion is that of a
  consistent snapshot (every page of one list is read at the same revision);
* then **watch** from that resourceVersion, with bookmarks (the API server sends the
  current resourceVersion now and then, so a quiet watch can resume from a recent one);
  when a watch ends (its timeout, a dropped connection) the next one resumes from the
  last resourceVersion seen, missing nothing;
* when the API server says that resourceVersion is too old (**410 Gone**: the events
  after it were compacted away), **relist**: objects the new list no longer has were
  deleted meanwhile and are handed over as DELETED.

Blocking calls on a thread of its own; ``deliver`` is called on that thread, in order
(``on_loop`` makes it run on the controller's event loop and wait for it, so a page is
folded before the next is read). The API calls are behind a protocol: the logic is
unit-tested with a fake, the Kubernetes side on the real API server.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

log = logging.getLogger(__name__)

PAGE_SIZE: Final = 50  # reports per list page: ~11 MB of JSON at 1,000 policies a node
WATCH_TIMEOUT: Final = 300  # seconds the API server keeps one watch open

Deliver = Callable[[str | None, Mapping[str, Any]], None]


class Gone(Exception):
    """The resourceVersion asked for is too old (HTTP 410): the source must relist."""


class ReportWatchApi(Protocol):
    def list_page(
        self, limit: int, token: str | None
    ) -> tuple[list[Mapping[str, Any]], str | None, str]:
        """(items, continue token or None, the list's resourceVersion); Gone if the
        continue token expired."""
        ...

    def watch(self, resource_version: str, timeout: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """(type, object) events after ``resource_version``, BOOKMARK included, until the
        timeout; Gone if that resourceVersion is too old."""
        ...


@dataclass
class SourceCounters:
    lists: int = 0
    pages: int = 0
    watches: int = 0
    events: int = 0
    relists: int = 0  # lists after a 410 Gone


def _name(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("name", ""))


def _rv(body: Mapping[str, Any], default: str) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or default)


class ReportSource:
    def __init__(
        self,
        api: ReportWatchApi,
        deliver: Deliver,
        *,
        page_size: int = PAGE_SIZE,
        watch_timeout: int = WATCH_TIMEOUT,
        on_synced: Callable[[], object] = lambda: None,
        retry_max: float = 30.0,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self._api, self._deliver, self._on_synced = api, deliver, on_synced
        self._page_size, self._watch_timeout, self._retry_max = page_size, watch_timeout, retry_max
        self._known: set[str] = set()  # names of the objects delivered and not deleted
        self.counters = SourceCounters()
        self.synced = threading.Event()  # the first full list has been delivered

    def run(self, stop: threading.Event) -> None:
        """List, watch, re-watch, relist on 410, until ``stop`` is set (blocking)."""
        rv: str | None = None
        delay = 0.5
        while not stop.is_set():
            try:
                if rv is None:
                    rv = self.list_all(stop)
                rv = self.watch_once(rv, stop)
                delay = 0.5
            except Gone:
                log.info("report watch expired (410 Gone): listing again")
                self.counters.relists += 1
                rv = None
            except Exception as exc:  # the API server is away: retry, keep the last rv
                log.warning("report list/watch failed (retry in %.1fs): %s", delay, exc)
                stop.wait(delay)
                delay = min(2 * delay, self._retry_max)

    def list_all(self, stop: threading.Event | None = None) -> str:
        """Every report, a page at a time; then DELETED for the names no longer there.
        The resourceVersion to watch from.

        A page that fails (a timeout, a dropped connection) is asked again with the same
        continue token, not the whole list: on a loaded API server a large list may never
        get through in one go. Only an expired token (Gone) starts the list over.
        """
        listed: set[str] = set()
        token: str | None = None
        pages = 0
        while True:
            items, token, rv = self._page(token, stop)
            pages += 1
            self.counters.pages += 1
            for body in items:
                listed.add(_name(body))
                self._deliver(None, body)
            del items
            if not token:
                break
        for name in sorted(self._known - listed):
            self._deliver("DELETED", {"metadata": {"name": name}})
        self._known = listed
        self.counters.lists += 1
        log.info("listed %d reports in %d pages (resourceVersion %s)", len(listed), pages, rv)
        if not self.synced.is_set():
            self.synced.set()
            self._on_synced()
        return rv

    def _page(
        self, token: str | None, stop: threading.Event | None
    ) -> tuple[list[Mapping[str, Any]], str | None, str]:
        delay = 0.5
        while True:
            try:
                return self._api.list_page(self._page_size, token)
            except Gone:
                raise
            except Exception as exc:
                if token is None or stop is None or stop.is_set():
                    raise  # the first page: the caller retries the list
                log.warning("report list page failed (again in %.1fs): %s", delay, exc)
                stop.wait(delay)
                delay = min(2 * delay, self._retry_max)

    def watch_once(self, rv: str, stop: threading.Event) -> str:
        """One watch from ``rv``; the last resourceVersion seen when it ends."""
        self.counters.watches += 1
        for event_type, body in self._api.watch(rv, self._watch_timeout):
            rv = _rv(body, rv)
            if event_type == "BOOKMARK":
                continue
            name = _name(body)
            if event_type == "DELETED":
                self._known.discard(name)
            else:
                self._known.add(name)
            self.counters.events += 1
            self._deliver(event_type, body)
            if stop.is_set():
                break
        return rv


def on_loop(loop: asyncio.AbstractEventLoop, deliver: Deliver) -> Deliver:
    """``deliver`` run on ``loop`` (the controller's caches live there), waited for."""

    def call(event_type: str | None, body: Mapping[str, Any]) -> None:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def run() -> None:
            try:
                deliver(event_type, body)
                done.set_result(None)
            except BaseException as exc:
                done.set_exception(exc)

        loop.call_soon_threadsafe(run)
        done.result()

    return call
