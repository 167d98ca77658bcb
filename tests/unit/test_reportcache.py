"""The controller's report cache (tpfilter.reportcache): compact, and still exact."""

from __future__ import annotations

from typing import Any

import pytest

import tpfilter.reportcache as reportcache
from tpfilter.reportcache import EVERY_POLICY, ReportCache
from tpfilter.reporter import to_rfc3339


def body(name: str, rv: int, entries: list[dict[str, Any]], **shard: int) -> dict[str, Any]:
    node = name.split(".shard-")[0]
    out: dict[str, Any] = {
        "metadata": {"name": name, "resourceVersion": str(rv)},
        "nodeName": node,
        "writeTime": to_rfc3339(1000.0),
        "policies": entries,
    }
    if shard:
        out["shard"] = shard
    return out


def entry(uid: str, state: str = "Ready", pods: int = 2) -> dict[str, Any]:
    return {"uid": uid, "state": state, "generation": 1, "pods": pods, "name": "x"}


def test_equal_entries_of_different_nodes_are_one_object() -> None:
    cache = ReportCache()
    cache.update(None, body("a", 1, [entry("u"), entry("v")]))
    cache.update(None, body("b", 2, [entry("u"), entry("v", pods=3)]))
    a, b = cache.reports["a"].entries, cache.reports["b"].entries
    assert a["u"] is b["u"]
    assert a["v"] != b["v"] and b["v"].pods == 3


def test_a_node_of_one_object_changes_alone() -> None:
    cache = ReportCache()
    cache.update(None, body("a", 1, [entry("u")]))
    cache.update(None, body("b", 2, [entry("u")]))
    changed = cache.update("MODIFIED", body("a", 3, [entry("u", "Error")]))
    assert changed == {"u"}
    assert cache.reports["a"].entries["u"].state == "Error"
    assert cache.reports["b"].entries["u"].state == "Ready"


def test_shards_are_merged_and_one_shard_change_is_seen() -> None:
    cache = ReportCache()
    cache.update(None, body("a.shard-0-of-2", 1, [entry("u")], index=0, count=2))
    assert cache.reports["a"].entries == {}  # an incomplete set: Pending everywhere
    assert cache.update(None, body("a.shard-1-of-2", 2, [entry("v")], index=1, count=2)) == {
        "u",
        "v",
    }
    changed = cache.update(
        "MODIFIED", body("a.shard-1-of-2", 3, [entry("v", "Error")], index=1, count=2)
    )
    assert changed == {"v"}
    assert {u: s.state for u, s in cache.reports["a"].entries.items()} == {
        "u": "Ready",
        "v": "Error",
    }
    assert cache.update("DELETED", body("a.shard-0-of-2", 4, [])) is not EVERY_POLICY


def test_the_sharing_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reportcache, "SHARED_MAX", 4)
    cache = ReportCache()
    for i in range(10):
        cache.update(None, body(f"n{i}", i + 1, [entry("u", pods=i)]))
    assert len(cache._shared) <= 4
    assert [cache.reports[f"n{i}"].entries["u"].pods for i in range(10)] == list(range(10))
