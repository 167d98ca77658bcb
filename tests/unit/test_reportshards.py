"""Sharding of a node's report (tpfilter.reportshards), the reporter's writes and deletes
with a fake API (tpfilter.reporter), and the controller's merge of a node's shards."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import pytest
from test_controller import FakeApi, policy

from tpfilter.coalesce import WriteRates
from tpfilter.controller import Controller, ControllerConfig
from tpfilter.nodereport import Entry
from tpfilter.reporter import Reporter
from tpfilter.reportshards import (
    Shard,
    choose,
    is_shard_name_of,
    shard_body,
    shard_name,
    shard_of,
    shard_of_body,
    split,
)

NOW = 10_000.0


def entry(i: int, state: str = "Ready") -> Entry:
    return {
        "uid": f"0000-uid-{i:05d}",
        "kind": "TracingPolicy",
        "name": f"policy-{i}",
        "generation": 1,
        "state": state,
        "cgroups": 1,
        "pods": 1,
    }


def size(body: dict[str, Any]) -> int:
    return len(json.dumps(body, separators=(",", ":")))


def test_below_the_budget_one_object_named_after_the_node() -> None:
    entries = [entry(i) for i in range(10)]
    [only] = split("n1", entries)
    assert only == entries
    body = shard_body("n1", only, NOW)
    assert body["metadata"]["name"] == "n1" and body["nodeName"] == "n1"
    assert "shard" not in body  # what older agents wrote, unchanged


def test_split_takes_the_smallest_power_of_two_that_fits() -> None:
    entries = [entry(i) for i in range(200)]
    whole = size(shard_body("n1", entries, NOW))
    budget = whole // 3  # 3 shards would do on average; hashing is uneven: 4 or 8
    groups = split("n1", entries, max_bytes=budget)
    k = len(groups)
    assert k in (4, 8)
    # Every shard fits, measured on the real body; every entry is in exactly one shard,
    # the one its UID hashes to.
    for i, group in enumerate(groups):
        assert size(shard_body("n1", group, NOW, index=i, count=k)) <= budget
        assert all(shard_of(str(e["uid"]), k) == i for e in group)
    assert sorted(e["uid"] for g in groups for e in g) == sorted(e["uid"] for e in entries)
    # k / 2 would not fit: some shard of it exceeds the budget.
    half = [[e for e in entries if shard_of(str(e["uid"]), k // 2) == i] for i in range(k // 2)]
    assert any(
        size(shard_body("n1", g, NOW, index=i, count=k // 2)) > budget for i, g in enumerate(half)
    )


def test_assignment_is_stable_and_only_the_changed_shard_differs() -> None:
    entries = [entry(i) for i in range(200)]
    budget = size(shard_body("n1", entries, NOW)) // 3
    before = split("n1", entries, max_bytes=budget)
    # A stable hash: fixed values, not Python's salted hash().
    assert shard_of("0000-uid-00000", 4) == shard_of("0000-uid-00000", 4)
    assert [shard_of(f"u{i}", 1) for i in range(5)] == [0] * 5
    assert {shard_of(f"u{i}", 8) for i in range(200)} == set(range(8))
    changed = list(entries)
    changed[7] = entry(7, state="Error")
    after = split("n1", changed, max_bytes=budget)
    assert len(after) == len(before)
    differing = [i for i in range(len(before)) if before[i] != after[i]]
    assert differing == [shard_of(str(entries[7]["uid"]), len(before))]


def test_k_grows_and_shrinks_with_the_entries() -> None:
    few = [entry(i) for i in range(20)]
    budget = size(shard_body("n1", few, NOW)) + 50
    assert len(split("n1", few, max_bytes=budget)) == 1
    many = [entry(i) for i in range(200)]
    k = len(split("n1", many, max_bytes=budget))
    assert k >= 8 and k & (k - 1) == 0
    assert len(split("n1", few, max_bytes=budget)) == 1
    # Capped: a budget nothing fits in gives max_shards.
    assert len(split("n1", many, max_bytes=10, max_shards=16)) == 16


def test_names_and_bodies() -> None:
    assert shard_name("n1", 0, 1) == "n1"
    assert shard_name("n1", 3, 8) == "n1.shard-3-of-8"
    body = shard_body("n1", [entry(1)], NOW, index=3, count=8)
    assert body["shard"] == {"index": 3, "count": 8}
    assert body["summary"]["ready"] == 1
    assert shard_of_body(body) == Shard("n1.shard-3-of-8", "n1", 3, 8, NOW)
    # An older agent's object: no shard, no nodeName even.
    old = {"metadata": {"name": "n2"}, "writeTime": "1970-01-01T00:00:05Z"}
    assert shard_of_body(old) == Shard("n2", "n2", 0, 1, 5.0)
    assert is_shard_name_of("n1.shard-0-of-2", "n1")
    assert is_shard_name_of("n1", "n1")
    assert not is_shard_name_of("n10.shard-0-of-2", "n1")
    assert not is_shard_name_of("n1-x", "n1")


def shard(index: int, count: int, written: float) -> Shard:
    return Shard(shard_name("n", index, count), "n", index, count, written)


def test_choose_one_complete_set() -> None:
    old = [shard(0, 1, 1.0)]
    new_half = [shard(0, 2, 5.0)]
    assert choose(old + new_half) == old  # the new set is incomplete: the old one
    new = [shard(0, 2, 5.0), shard(1, 2, 5.0)]
    assert choose(old + new) == new  # both complete: the newer, never a mix
    assert choose(new_half) is None  # nothing complete: no report
    assert choose([]) is None
    # Within one set, shards are rewritten one at a time: still that set.
    steady = [shard(0, 2, 5.0), shard(1, 2, 9.0)]
    assert choose(steady) == steady
    # Shrinking back to one object written after the set of 2.
    assert choose([*steady, shard(0, 1, 10.0)]) == [shard(0, 1, 10.0)]


# --- the reporter, with a fake API --------------------------------------------------------


class FakeReportApi:
    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []

    def read(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    def write(self, name: str, body: dict[str, Any]) -> None:
        assert body["metadata"]["name"] == name
        self.objects[name] = body
        self.log.append(("write", name))

    def delete(self, name: str) -> None:
        self.objects.pop(name, None)
        self.log.append(("delete", name))


def run_reporter(api: FakeReportApi, entries: list[Entry], budget: int, at: float) -> Reporter:
    """One reporter run until it has nothing left to do, at the wall time ``at``."""
    rates = WriteRates(0.0, 0.0, 3600.0)
    reporter = Reporter(
        node_name="n1",
        api=api,
        rates=rates,
        source=lambda: entries,
        clock=lambda: at,
        max_bytes=budget,
    )

    async def go() -> None:
        task = asyncio.create_task(reporter.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(go())
    return reporter


def test_reporter_writes_new_shards_first_then_deletes_the_old() -> None:
    api = FakeReportApi()
    few = [entry(i) for i in range(10)]
    budget = size(shard_body("n1", few, NOW)) + 50
    run_reporter(api, few, budget, NOW)
    assert list(api.objects) == ["n1"]
    many = [entry(i) for i in range(100)]
    api.log.clear()
    reporter = run_reporter(api, many, budget, NOW + 10)  # a restarted agent: reads first
    k = len(split("n1", many, max_bytes=budget))
    names = {shard_name("n1", i, k) for i in range(k)}
    assert set(api.objects) == names
    assert api.log[-1] == ("delete", "n1")
    assert [op for op, _ in api.log] == ["write"] * k + ["delete"]
    assert set(reporter.written) == names
    merged = sorted(e["uid"] for b in api.objects.values() for e in b["policies"])
    assert merged == [e["uid"] for e in many]
    for body in api.objects.values():
        assert body["nodeName"] == "n1" and body["shard"]["count"] == k
        assert size(body) <= budget
    # Unchanged: a restarted agent writes nothing. One policy changed: one shard written.
    api.log.clear()
    run_reporter(api, many, budget, NOW + 20)
    assert api.log == []
    # A leftover of an older set (an agent that died between writing and deleting): found
    # at start, deleted though nothing is due.
    api.objects["n1"] = shard_body("n1", few, NOW - 100)
    run_reporter(api, many, budget, NOW + 25)
    assert api.log == [("delete", "n1")]
    api.log.clear()
    changed = list(many)
    changed[3] = entry(3, state="Error")
    run_reporter(api, changed, budget, NOW + 30)
    assert api.log == [("write", shard_name("n1", shard_of(str(many[3]["uid"]), k), k))]
    # Back to few policies: one object named after the node, the shards deleted.
    api.log.clear()
    run_reporter(api, few, budget, NOW + 40)
    assert list(api.objects) == ["n1"]
    assert api.log[0] == ("write", "n1")
    assert sorted(n for op, n in api.log if op == "delete") == sorted(names)


# --- the controller's merge -----------------------------------------------------------------


def body_of(node: str, entries: list[Entry], at: float, index: int, count: int, rv: int) -> Any:
    body = shard_body(node, entries, at, index=index, count=count)
    body["metadata"]["resourceVersion"] = str(rv)
    return body


def make() -> tuple[Controller, FakeApi]:
    api = FakeApi()
    controller = Controller(
        api=api, config=ControllerConfig(interval=0, stale_after=30), clock=lambda: NOW
    )
    return controller, api


def p_entry(name: str, state: str = "Ready") -> Entry:
    return {"uid": f"uid-{name}", "state": state, "generation": 1, "pods": 1}


def status_of(api: FakeApi, name: str) -> dict[str, Any]:
    return [s for n, s in api.patches if n == name][-1]


def test_controller_merges_one_set_of_shards_and_never_double_counts() -> None:
    controller, api = make()
    for name in ("a", "b"):
        controller.policy_event(None, policy(name))
    # k = 1 with both policies.
    controller.report_event(None, body_of("n", [p_entry("a"), p_entry("b")], NOW, 0, 1, 1))
    asyncio.run(controller.step())
    assert status_of(api, "a")["readyNodes"] == 1 and status_of(api, "b")["totalNodes"] == 1
    # The agent moves to k = 2: shard 0 first (incomplete: the old object is still used,
    # with its states), then shard 1; then the old object is deleted.
    controller.report_event("ADDED", body_of("n", [p_entry("a", "Error")], NOW + 1, 0, 2, 2))
    asyncio.run(controller.step())
    assert status_of(api, "a")["readyNodes"] == 1
    controller.report_event("ADDED", body_of("n", [p_entry("b", "Error")], NOW + 1, 1, 2, 3))
    asyncio.run(controller.step())
    for name in ("a", "b"):
        status = status_of(api, name)
        assert (status["readyNodes"], status["totalNodes"]) == (0, 1)  # one node, not two
    assert controller.summary()["reports"] == 1
    assert controller.summary()["report_objects"] == 3
    controller.report_event("DELETED", body_of("n", [], NOW, 0, 1, 4))
    asyncio.run(controller.step())
    assert controller.summary()["report_objects"] == 2
    assert status_of(api, "b")["totalNodes"] == 1
    # A shard deleted by hand: no complete set, the node is Pending on every policy.
    controller.report_event("DELETED", body_of("n", [], NOW, 1, 2, 5))
    asyncio.run(controller.step())
    assert controller.summary()["reports"] == 1
    for name in ("a", "b"):
        status = status_of(api, name)
        assert (status["readyNodes"], status["totalNodes"]) == (0, 1)
        assert [(n["state"], n["reason"]) for n in status["nodes"]] == [("Pending", "NotReported")]
    # Its last shard deleted: no node.
    controller.report_event("DELETED", body_of("n", [], NOW, 0, 2, 6))
    asyncio.run(controller.step())
    assert controller.summary()["reports"] == 0
    assert status_of(api, "a")["totalNodes"] == 0


def test_a_deleted_node_loses_every_shard() -> None:
    controller, api = make()
    controller.policy_event(None, policy("a"))
    for index in range(4):
        controller.report_event(None, body_of("n", [], NOW, index, 4, 10 + index))
    controller.report_event(None, body_of("m", [p_entry("a")], NOW, 0, 1, 20))
    controller.node_event("DELETED", {"metadata": {"name": "n"}})
    asyncio.run(controller.step())
    assert sorted(api.deleted) == [shard_name("n", i, 4) for i in range(4)]


@pytest.mark.parametrize("nodes", [{"m"}, set()])
def test_sweep_deletes_every_shard_of_a_gone_node(nodes: set[str]) -> None:
    controller, api = make()
    api.node_names = lambda: nodes  # type: ignore[method-assign]
    for index in range(2):
        controller.report_event(None, body_of("n", [], NOW, index, 2, 10 + index))
    controller.report_event(None, body_of("m", [], NOW, 0, 1, 20))

    async def sweep_once() -> None:
        task = asyncio.create_task(controller._sweep_loop())
        await asyncio.sleep(0.1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(sweep_once())
    gone = {"n.shard-0-of-2", "n.shard-1-of-2"} | ({"m"} if "m" not in nodes else set())
    assert set(api.deleted) == gone
