"""hostSelector: only null or {}; {} also matches processes in no pod's container.

The engine keeps the cgroups of every pod container on the node under the reserved policy
ID ALL_PODS_ID while some policy has hostSelector {}, and marks such a policy's own map
with HOST_MARKER; bpf/policy_filter.h does the rest (tests/kernel/test_host_selector_on_kernel.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tpfilter.desired import desired_containers
from tpfilter.ids import ALL_PODS_ID, MAX_ID, PolicyIds
from tpfilter.interfaces import HOST_MARKER
from tpfilter.models import PolicyError, parse_policy
from unit.test_engine import Node, add_container, mkpod, mkpolicy, sel

HOST = {"hostSelector": {}}


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "state.json")


# --- model ------------------------------------------------------------------------------


def test_host_selector_only_null_or_empty() -> None:
    assert mkpolicy("a", {"hostSelector": None}).spec.host_selector is None
    assert mkpolicy("b", HOST).selects_host
    for bad in (
        {"matchLabels": {"a": "b"}},
        {"matchExpressions": [{"key": "a", "operator": "Exists"}]},
    ):
        with pytest.raises(PolicyError, match=r"spec\.hostSelector: only \{\}"):
            mkpolicy("c", {"hostSelector": bad})


def test_namespaced_policy_refuses_host_selector() -> None:
    body = {
        "kind": "TracingPolicyNamespaced",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": HOST,
    }
    with pytest.raises(
        PolicyError, match=r"TracingPolicyNamespaced does not support spec\.hostSelector"
    ):
        parse_policy(body)


def test_host_selector_makes_a_policy_filtered_and_alone_selects_no_pod() -> None:
    host_only = mkpolicy("h", HOST, uid="H")
    both = mkpolicy("b", {**sel(app="a"), **HOST}, uid="B")
    assert host_only.filtered and not host_only.selects_pods
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"}), mkpod("z", {}, {"m": "c://2"})]
    result = desired_containers([host_only, both], pods)
    assert result["H"] == frozenset()
    assert {r.container_id for r in result["B"]} == {"c://1"}


# --- ids --------------------------------------------------------------------------------


def test_all_pods_id_is_never_allocated() -> None:
    ids = PolicyIds(next_id=MAX_ID)
    got = [ids.ensure(mkpolicy(f"p{i}", sel(a="b"), uid=f"u{i}")).policy_id for i in range(3)]
    assert got == [MAX_ID, 1, 2]
    assert ALL_PODS_ID not in got and ALL_PODS_ID == 0xFFFF_FFFF


# --- engine -----------------------------------------------------------------------------


def test_all_pods_set_is_exact_and_marker_in_host_policies(node: Node) -> None:
    for cid, cg in (("c://1", 101), ("c://2", 102), ("c://3", 103)):
        add_container(node, cid, cg)
    a = mkpod("a", {"app": "a"}, {"m": "c://1", "side": "c://2"})
    b = mkpod("b", {"app": "b"}, {"m": "c://3"})
    host_a = mkpolicy("host-a", {**sel(app="a"), **HOST}, uid="HA")
    plain = mkpolicy("plain", sel(app="b"), uid="P")
    r = node.reconcile([host_a, plain], [a, b])
    assert r.converged
    assert node.held(host_a) == {101, 102, HOST_MARKER}
    assert node.held(plain) == {103}
    assert node.maps.contents()[ALL_PODS_ID] == {101, 102, 103}
    status = {s.uid: s for s in r.statuses}
    assert status["HA"].cgroups == 2  # the marker is not a cgroup

    # A new pod anywhere on the node joins the all-pods set, selected or not.
    add_container(node, "c://4", 104)
    c = mkpod("c", {}, {"m": "c://4"})
    node.reconcile([host_a, plain], [a, b, c])
    assert node.maps.contents()[ALL_PODS_ID] == {101, 102, 103, 104}
    # A pod that goes leaves it.
    node.reconcile([host_a, plain], [a, c])
    assert node.maps.contents()[ALL_PODS_ID] == {101, 102, 104}

    # No policy needs it any more: the reserved map is deleted.
    node.reconcile([plain], [a, c])
    assert ALL_PODS_ID not in node.maps.contents()
    assert set(node.maps.contents()) == {node.engine.policy_id("P")}


def test_pending_pod_container_keeps_the_pass_unconverged(node: Node) -> None:
    add_container(node, "c://1", 101)
    host = mkpolicy("host", HOST, uid="H")
    pod = mkpod("a", {}, {"m": "c://1", "late": "c://2"})
    r = node.reconcile([host], [pod])
    assert node.held(host) == {HOST_MARKER}
    assert node.maps.contents()[ALL_PODS_ID] == {101}
    assert not r.converged and {ref.container_id for ref in r.pending} == {"c://2"}
    add_container(node, "c://2", 102)
    r = node.reconcile([host], [pod])
    assert r.converged and node.maps.contents()[ALL_PODS_ID] == {101, 102}


def test_adding_and_removing_host_selector_updates_the_marker(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    plain = mkpolicy("p", sel(app="a"), uid="U")
    node.reconcile([plain], pods)
    assert node.held(plain) == {101} and ALL_PODS_ID not in node.maps.contents()
    with_host = mkpolicy("p", {**sel(app="a"), **HOST}, uid="U")
    node.reconcile([with_host], pods)
    assert node.held(with_host) == {101, HOST_MARKER}
    assert node.maps.contents()[ALL_PODS_ID] == {101}
    node.reconcile([plain], pods)
    assert node.held(plain) == {101} and ALL_PODS_ID not in node.maps.contents()


def test_host_policy_skipped_by_node_selector_keeps_no_all_pods_set(node: Node) -> None:
    add_container(node, "c://1", 101)
    pol = mkpolicy("h", {**HOST, "nodeSelector": {"matchLabels": {"pool": "x"}}}, uid="H")
    r = node.engine.reconcile([pol], [mkpod("a", {}, {"m": "c://1"})], {"pool": "y"})
    assert node.maps.contents() == {} and r.statuses[0].skipped


def test_restart_adopts_the_all_pods_set(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {}, {"m": "c://1"})]
    host = mkpolicy("h", HOST, uid="H")
    node.reconcile([host], pods)
    before = node.maps.contents()
    node.restart()
    node.maps.reset_counts()
    r = node.reconcile([host], pods)
    assert r.operations == 0 and node.maps.writes == 0
    assert node.maps.contents() == before
