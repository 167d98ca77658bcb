"""The controller's list-then-watch of node reports (tpfilter.reportsource), with a fake API:
pages, resuming a watch where it ended, and relisting after 410 Gone. The same source
against the real API server: tests/integration/test_report_source.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from tpfilter.reportsource import Gone, ReportSource


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": str(rv)}}


class FakeWatchApi:
    """Objects by name; each watch() plays the next scripted list of events (or Gone)."""

    def __init__(self, objects: dict[str, int], rv: int) -> None:
        self.objects, self.rv = objects, rv
        self.scripts: list[list[tuple[str, dict[str, Any]]] | type[Gone]] = []
        self.watched_from: list[str] = []
        self.pages_read: list[str | None] = []
        self.expire_token_once = False
        self.fail_token_once = False

    def list_page(
        self, limit: int, token: str | None
    ) -> tuple[list[Mapping[str, Any]], str | None, str]:
        self.pages_read.append(token)
        if token is not None and self.fail_token_once:
            self.fail_token_once = False
            raise TimeoutError("504: request did not complete within the allotted timeout")
        if token is not None and self.expire_token_once:
            self.expire_token_once = False
            raise Gone("continue token expired")
        names = sorted(self.objects)
        start = int(token or 0)
        items = [obj(n, self.objects[n]) for n in names[start : start + limit]]
        following = str(start + limit) if start + limit < len(names) else None
        return items, following, str(self.rv)

    def watch(self, resource_version: str, timeout: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        self.watched_from.append(resource_version)
        script = self.scripts.pop(0) if self.scripts else []
        if script is Gone:
            raise Gone("too old resource version")
        assert isinstance(script, list)
        yield from script


def run(
    api: FakeWatchApi, page_size: int, deliveries: int
) -> tuple[ReportSource, list[tuple[str | None, str]]]:
    """Run the source until it has delivered ``deliveries`` events."""
    got: list[tuple[str | None, str]] = []
    stop = threading.Event()

    def deliver(event_type: str | None, body: Mapping[str, Any]) -> None:
        got.append((event_type, str(body["metadata"]["name"])))
        if len(got) == deliveries:
            stop.set()

    source = ReportSource(api, deliver, page_size=page_size)
    source.run(stop)
    return source, got


def test_lists_in_pages_then_watches_from_the_lists_version_and_resumes() -> None:
    api = FakeWatchApi({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, rv=10)
    api.scripts = [
        [("MODIFIED", obj("a", 11)), ("BOOKMARK", obj("", 15))],  # ends: resume from 15
        [("DELETED", obj("b", 16)), ("ADDED", obj("f", 17))],
    ]
    source, got = run(api, page_size=2, deliveries=8)
    assert api.pages_read == [None, "2", "4"]  # three pages of two
    assert got[:5] == [(None, n) for n in "abcde"]
    assert got[5:] == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "f")]
    assert api.watched_from == ["10", "15"]
    assert source.synced.is_set() and source.counters.relists == 0


def test_gone_relists_and_delivers_what_vanished_meanwhile_as_deleted() -> None:
    api = FakeWatchApi({"a": 1, "b": 2, "c": 3}, rv=10)
    api.scripts = [[("MODIFIED", obj("c", 12))], Gone, []]
    original = api.watch

    def watch(resource_version: str, timeout: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        if len(api.watched_from) == 1:  # while the watch is away: b goes, c changes, d comes
            del api.objects["b"]
            api.objects.update(c=20, d=21)
            api.rv = 22
        return original(resource_version, timeout)

    api.watch = watch  # type: ignore[method-assign]
    api.scripts.append([("MODIFIED", obj("d", 23))])
    source, got = run(api, page_size=2, deliveries=9)
    assert source.counters.relists == 1 and source.counters.lists == 2
    relisted = got[4:]
    assert relisted[:3] == [(None, "a"), (None, "c"), (None, "d")]
    assert ("DELETED", "b") in relisted
    assert api.watched_from == ["10", "12", "22", "22"]


def test_an_expired_continue_token_starts_the_list_again() -> None:
    api = FakeWatchApi({"a": 1, "b": 2, "c": 3}, rv=10)
    api.expire_token_once = True
    api.scripts = [[("MODIFIED", obj("a", 11))]]
    source, got = run(api, page_size=2, deliveries=6)
    assert api.pages_read == [None, "2", None, "2"]
    assert source.counters.relists == 1
    assert [n for t, n in got if t is None] == ["a", "b", "a", "b", "c"]


def test_a_failed_page_is_asked_again_not_the_whole_list() -> None:
    api = FakeWatchApi({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}, rv=10)
    api.fail_token_once = True
    api.scripts = [[("MODIFIED", obj("a", 11))]]
    source, got = run(api, page_size=2, deliveries=6)
    assert api.pages_read == [None, "2", "2", "4"]  # the second page again, same token
    assert source.counters.relists == 0 and source.counters.lists == 1
    assert got == [(None, n) for n in "abcde"] + [("MODIFIED", "a")]


def test_page_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="page_size"):
        ReportSource(FakeWatchApi({}, 1), lambda t, b: None, page_size=0)
