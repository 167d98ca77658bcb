"""A node's report split in shards on the real API server (tpfilter.reportshards).

One agent runs with a tiny report budget (``--report-max-bytes``), so a few dozen
policies need several shards; another runs with the default (one object). The controller
must count each node once, whatever the number of its shards and while they change;
fewer policies shrink the set back to one object named after the node; a deleted node
loses every shard.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from harness import eventually
from test_status import TP, counts, wait_status, web_policy

from conftest import Cluster, MakeController, MakeNode
from tpfilter.reporter import GROUP, PLURAL, VERSION
from tpfilter.reportshards import shard_name, shard_of, split

pytestmark = pytest.mark.apiserver

BUDGET = 2_000  # bytes of one report object's JSON: ~10 entries of ~180 B
MANY, FEW = 40, 3


def objects_of(cluster: Cluster, node: str) -> dict[str, dict[str, Any]]:
    """Every report object whose nodeName is ``node``, by name."""
    items = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    return {o["metadata"]["name"]: o for o in items if o.get("nodeName") == node}


def test_a_sharded_report_counts_once_shrinks_and_is_deleted_with_its_node(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    make_controller()
    big = make_node(extra=("--report-max-bytes", str(BUDGET), "--no-programs"))
    small = make_node(extra=("--no-programs",))
    names = [f"shard-{i:02d}" for i in range(MANY)]
    for name in names:
        cluster.apply_policy(TP, name, web_policy())

    def sharded() -> bool:
        """One complete set of shards (no leftover of a previous count) with every policy."""
        found = objects_of(cluster, big.name)
        counts_ = {(o.get("shard") or {}).get("count", 1) for o in found.values()}
        uids = [e["uid"] for o in found.values() for e in o.get("policies", [])]
        return len(found) > 1 and counts_ == {len(found)} and len(uids) == MANY

    eventually(sharded, timeout=60, what="the big node's report in shards")
    shards = objects_of(cluster, big.name)
    k = len(shards)
    entries = sorted((e for o in shards.values() for e in o["policies"]), key=lambda e: e["uid"])
    # The smallest power of two that fits, as computed from what the agent wrote.
    assert k == len(split(big.name, entries, max_bytes=BUDGET)) >= 4
    assert big.name not in shards
    assert set(shards) == {shard_name(big.name, i, k) for i in range(k)}
    seen: list[str] = []
    for name, body in shards.items():
        index = body["shard"]["index"]
        assert body["shard"]["count"] == k and name == shard_name(big.name, index, k)
        # What the agent wrote fits (the API server's metadata, managedFields, comes on top).
        written = {**body, "metadata": {"name": name}}
        assert len(json.dumps(written, separators=(",", ":"))) <= BUDGET
        assert all(shard_of(e["uid"], k) == index for e in body["policies"])
        seen += [e["name"] for e in body["policies"]]
    assert sorted(seen) == names  # each policy in exactly one shard
    assert list(objects_of(cluster, small.name)) == [small.name]  # below the budget: one

    for name in names:  # every policy Ready on both nodes, each node counted once
        status = wait_status(cluster, name, lambda s: counts(s)[:2] == (2, 2))
        assert status["readyNodes"] == 2 and status["totalNodes"] == 2

    for name in names[FEW:]:
        cluster.delete_policy(TP, name)

    def shrunk() -> bool:
        found = objects_of(cluster, big.name)
        return list(found) == [big.name] and len(found[big.name]["policies"]) == FEW

    eventually(shrunk, timeout=60, what="the shards replaced by one object named after the node")
    [body] = objects_of(cluster, big.name).values()
    assert sorted(e["name"] for e in body["policies"]) == names[:FEW]
    assert "shard" not in body
    for name in names[:FEW]:
        wait_status(cluster, name, lambda s: counts(s)[:2] == (2, 2))

    # Grow again, then delete the node: every shard goes.
    for name in names[FEW:]:
        cluster.apply_policy(TP, name, web_policy())
    eventually(sharded, timeout=60, what="sharded again")
    for name in names:
        wait_status(cluster, name, lambda s: counts(s)[:2] == (2, 2))
    big.agent.stop()
    big.kubelet.core.delete_node(big.name)
    eventually(lambda: objects_of(cluster, big.name) == {}, timeout=30, what="every shard deleted")
    for name in names:
        wait_status(cluster, name, lambda s: counts(s)[:2] == (1, 1))
    assert list(objects_of(cluster, small.name)) == [small.name]
