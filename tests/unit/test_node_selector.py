"""nodeSelector: the policy applies on this node only if the node's labels match.

On a node it does not match, a policy is treated as absent (no ID, no map) and reported as
skipped with the reason; relabelling the node makes its map appear or disappear.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from tpfilter.agent import _status_json
from tpfilter.cli import format_status
from tpfilter.models import PolicyError, parse_policy
from tpfilter.store import Store
from unit.test_engine import Node, add_container, mkpod, mkpolicy, sel


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "state.json")


def on_nodes(spec: dict[str, Any], **labels: str) -> dict[str, Any]:
    return {**spec, "nodeSelector": {"matchLabels": labels}}


# --- model ------------------------------------------------------------------------------


def test_node_selector_parses_like_a_label_selector() -> None:
    pol = mkpolicy(
        "p",
        {
            "nodeSelector": {
                "matchLabels": {"pool": "bpf"},
                "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}],
            }
        },
    )
    assert pol.spec.node_selector is not None
    assert pol.node_mismatch({"pool": "bpf", "zone": "a"}) is None
    assert pol.node_mismatch({"pool": "bpf", "zone": "b"}) is not None
    assert mkpolicy("q", {"nodeSelector": {}}).node_mismatch({}) is None
    assert mkpolicy("r", {}).node_mismatch({}) is None


def test_invalid_node_selector_names_the_field() -> None:
    body = {
        "kind": "TracingPolicy",
        "metadata": {"name": "p", "uid": "u"},
        "spec": {"nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
    }
    with pytest.raises(PolicyError, match=r"spec\.nodeSelector\.matchExpressions\.0"):
        parse_policy(body)


def test_node_selector_alone_does_not_make_a_policy_filtered() -> None:
    assert not mkpolicy("p", on_nodes({}, pool="bpf")).filtered
    assert mkpolicy("q", on_nodes(sel(app="a"), pool="bpf")).filtered


# --- store ------------------------------------------------------------------------------


def node_body(name: str, labels: dict[str, str], rv: int, uid: str = "N") -> dict[str, Any]:
    return {
        "kind": "Node",
        "metadata": {"name": name, "uid": uid, "resourceVersion": str(rv), "labels": labels},
    }


def test_store_keeps_this_nodes_labels_only() -> None:
    changes: list[int] = []
    store = Store(node_name="n1", on_change=lambda: changes.append(1))
    assert store.node_labels() == {}
    store.node_event("ADDED", node_body("other", {"pool": "x"}, 5, uid="O"))
    assert store.node_labels() == {} and not changes
    store.node_event("ADDED", node_body("n1", {"pool": "bpf"}, 6))
    assert store.node_labels() == {"pool": "bpf"} and len(changes) == 1
    # A status-only update (same labels) does not wake the reconciler.
    store.node_event("MODIFIED", node_body("n1", {"pool": "bpf"}, 7))
    assert len(changes) == 1
    store.node_event("MODIFIED", node_body("n1", {"pool": "web"}, 8))
    assert store.node_labels() == {"pool": "web"} and len(changes) == 2
    store.node_event("DELETED", node_body("n1", {"pool": "web"}, 9))
    assert store.node_labels() == {}


def test_store_node_list_never_undoes_a_newer_event() -> None:
    store = Store(node_name="n1")
    store.node_event("MODIFIED", node_body("n1", {"pool": "new"}, 10))
    store.replace_node(node_body("n1", {"pool": "old"}, 9), "9")
    assert store.node_labels() == {"pool": "new"}
    store.replace_node(node_body("n1", {"pool": "newer"}, 11), "11")
    assert store.node_labels() == {"pool": "newer"}
    store.replace_node(None, "12")
    assert store.node_labels() == {}


# --- engine -----------------------------------------------------------------------------


def test_policy_not_matching_this_node_gets_no_map_and_is_reported(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    pol = mkpolicy("p", on_nodes(sel(app="a"), pool="bpf"), uid="U")
    with caplog.at_level(logging.INFO, logger="tpfilter.engine"):
        r = node.engine.reconcile([pol], pods, {"pool": "web"})
    assert r.converged and node.maps.inner == {}
    assert node.engine.policy_id("U") is None
    (status,) = r.statuses
    assert status.policy_id == 0 and status.cgroups == 0 and status.error is None
    assert status.skipped is not None and "nodeSelector" in status.skipped
    assert "TracingPolicy/p: skipped on this node" in caplog.text
    # Not logged again while nothing changes.
    caplog.clear()
    node.engine.reconcile([pol], pods, {"pool": "web"})
    assert "skipped" not in caplog.text


def test_relabelling_the_node_makes_the_map_appear_and_disappear(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    pol = mkpolicy("p", on_nodes(sel(app="a"), pool="bpf"), uid="U")
    node.engine.reconcile([pol], pods, {})
    assert node.maps.inner == {}
    r = node.engine.reconcile([pol], pods, {"pool": "bpf"})
    assert r.statuses[0].skipped is None
    assert node.held(pol) == {101}
    first_id = node.engine.policy_id("U")
    r = node.engine.reconcile([pol], pods, {"pool": "other"})
    assert node.maps.inner == {} and node.engine.policy_id("U") is None
    assert r.statuses[0].skipped
    node.engine.reconcile([pol], pods, {"pool": "bpf"})
    new_id = node.engine.policy_id("U")
    assert node.held(pol) == {101}
    assert first_id is not None and new_id is not None and new_id > first_id  # never reused


def test_unlabelled_node_matches_only_empty_or_absent_node_selectors(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    every = mkpolicy("every", {**sel(app="a"), "nodeSelector": {}}, uid="E")
    absent = mkpolicy("absent", sel(app="a"), uid="A")
    labelled = mkpolicy("labelled", on_nodes(sel(app="a"), pool="bpf"), uid="L")
    not_in = mkpolicy(
        "not-in",
        {
            **sel(app="a"),
            "nodeSelector": {
                "matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["x"]}]
            },
        },
        uid="N",
    )
    r = node.reconcile([every, absent, labelled, not_in], pods)  # no labels given
    assert {s.uid for s in r.statuses if s.skipped} == {"L"}
    assert node.held(every) == node.held(absent) == node.held(not_in) == {101}
    assert node.held(labelled) is None


def test_skipped_unfiltered_policy_is_not_reported_as_unfiltered(node: Node) -> None:
    pol = mkpolicy("u", on_nodes({"kprobes": []}, pool="bpf"), uid="U")
    r = node.engine.reconcile([pol], [], {"pool": "web"})
    (status,) = r.statuses
    row = _status_json(status)
    assert row["skipped"] and row["policy_id"] == 0
    text = format_status(
        {
            "policies": [],
            "total_memlock": 0,
            "unfiltered": [],
            "skipped": [row],
            "invalid": [],
        }
    )
    assert "skipped on this node (no map): TracingPolicy/u: nodeSelector" in text
