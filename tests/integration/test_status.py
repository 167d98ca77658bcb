"""Policy status on the real API server: agents report, the controller sums up, kubectl shows.

Several agents on this machine are several nodes (each its own NODE_NAME, pin dir, state
dir, cgroup tree and Node object); ``tpfilter controller`` runs as its own process. Every
expectation is about API objects the test reads back (the policy's status, the reports,
`kubectl get` output), never about timing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from harness import eventually

from conftest import Cluster, MakeController, MakeNode, Node, kubectl
from tpfilter.models import PolicyKind
from tpfilter.reporter import GROUP, PLURAL, VERSION

pytestmark = pytest.mark.apiserver

TP, TPN = PolicyKind.CLUSTER, PolicyKind.NAMESPACED
# A kernel function no kernel has: Accepted (the controller's made-up node has every
# function), Unsupported on every node that runs tpfilter's programs, with or without kprobes.
KPROBE = {"kprobes": [{"call": "tpf_no_such_kernel_function", "syscall": False}]}


def web_policy(**extra: Any) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {"app": "web"}}, "tracepoints": [], **extra}


def status_of(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.get_policy(TP, name).get("status") or {})


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or ()}


def wait_status(
    cluster: Cluster, name: str, check: Callable[[dict[str, Any]], bool], timeout: float = 40
) -> dict[str, Any]:
    last: list[dict[str, Any]] = [{}]

    def poll() -> bool:
        last[0] = status_of(cluster, name)
        return check(last[0])

    try:
        eventually(poll, timeout=timeout, interval=0.2, what=f"status of {name}")
    except AssertionError:
        raise AssertionError(f"status of {name} never matched; last: {last[0]}") from None
    return last[0]


def counts(status: dict[str, Any]) -> tuple[Any, Any, Any]:
    return status.get("readyNodes"), status.get("totalNodes"), status.get("pods")


def report(cluster: Cluster, node: Node) -> dict[str, Any] | None:
    try:
        return dict(cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, node.name))
    except Exception as exc:
        if getattr(exc, "status", None) == 404:
            return None
        raise


def test_ready_everywhere_and_shown_by_kubectl_get(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    make_controller()
    a, b = make_node(), make_node()
    ns = cluster.namespace()
    a.kubelet.create_pod(ns, "web-a", labels={"app": "web"})
    b.kubelet.create_pod(ns, "web-b1", labels={"app": "web"})
    b.kubelet.create_pod(ns, "web-b2", labels={"app": "web"})
    b.kubelet.create_pod(ns, "db", labels={"app": "db"})
    cluster.apply_policy(TP, "web-ready", web_policy())
    status = wait_status(cluster, "web-ready", lambda s: counts(s) == (2, 2, 3))
    assert conditions(status) == {
        "Accepted": ("True", "Accepted"),
        "Ready": ("True", "AllNodesReady"),
        "Degraded": ("False", "AsExpected"),
    }
    generation = cluster.get_policy(TP, "web-ready")["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    assert all(c["observedGeneration"] == generation for c in status["conditions"])
    assert status["nodes"] == []

    out = kubectl(cluster.plane, "get", "tracingpolicies", "web-ready").stdout.splitlines()
    header, row = out[0].split(), out[1].split()
    assert header[:6] == ["NAME", "POD-SELECTOR", "READY", "NODES", "PODS", "REASON"]
    assert row[0] == "web-ready" and row[-5:-1] == ["2", "2", "3", "AllNodesReady"]

    # The namespaced kind: its own namespace's pods only, status through its own path.
    cluster.apply_policy(TPN, "web-ns", {"tracepoints": []}, namespace=ns)

    def namespaced() -> dict[str, Any]:
        return dict(cluster.get_policy(TPN, "web-ns", ns).get("status") or {})

    eventually(lambda: counts(namespaced()) == (2, 2, 4), timeout=40, what="namespaced status")
    out = kubectl(cluster.plane, "get", "tracingpoliciesnamespaced", "-n", ns).stdout
    assert "AllNodesReady" in out

    # Each node's own report says what it holds there.
    entries = {
        n.name: {e["name"]: e for e in (report(cluster, n) or {}).get("policies", [])}
        for n in (a, b)
    }
    assert entries[a.name]["web-ready"]["pods"] == 1
    assert entries[b.name]["web-ready"]["pods"] == 2
    assert entries[b.name]["web-ready"]["state"] == "Ready"


def test_unsupported_on_some_nodes(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    """A kprobe policy tpfilter's programs implement (Accepted) but no node can run
    (Unsupported where the programs run); a node whose agent only keeps the filter maps
    (programs loaded by someone else) has it Ready."""
    make_controller()
    programs = make_node()
    maps_only = make_node(extra=("--no-programs",))
    cluster.apply_policy(TP, "kprobe", {"podSelector": {}, **KPROBE})
    status = wait_status(
        cluster, "kprobe", lambda s: (s.get("readyNodes"), s.get("totalNodes")) == (1, 2)
    )
    assert conditions(status)["Accepted"] == ("True", "Accepted")
    assert conditions(status)["Ready"] == ("False", "UnsupportedOnNodes")
    assert conditions(status)["Degraded"] == ("True", "UnsupportedOnNodes")
    assert status["reason"] == "UnsupportedOnNodes"
    [listed] = status["nodes"]
    assert (listed["node"], listed["state"]) == (programs.name, "Unsupported")
    assert "kprobe" in listed["message"]
    assert maps_only.name not in str(status["nodes"])
    out = kubectl(cluster.plane, "get", "tracingpolicies", "kprobe").stdout
    assert "UnsupportedOnNodes" in out

    # The transition is an Event on the policy (cluster-scoped: in "default").
    def warned() -> bool:
        events = cluster.core.list_namespaced_event(
            "default", field_selector="involvedObject.name=kprobe"
        ).items
        return any(e.type == "Warning" and e.reason == "UnsupportedOnNodes" for e in events)

    eventually(warned, timeout=20, interval=0.5, what="a Warning Event on the policy")


def test_node_selector_skips_a_node(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    make_controller()
    gpu = make_node(labels={"pool": "gpu"})
    other = make_node()
    cluster.apply_policy(TP, "gpu-only", web_policy(nodeSelector={"matchLabels": {"pool": "gpu"}}))
    status = wait_status(
        cluster,
        "gpu-only",
        lambda s: (s.get("readyNodes"), s.get("totalNodes"), s.get("skippedNodes")) == (1, 1, 1),
    )
    assert conditions(status)["Ready"] == ("True", "AllNodesReady")
    [entry] = [e for e in report(cluster, other)["policies"] if e["name"] == "gpu-only"]  # type: ignore[index]
    assert (entry["state"], entry["reason"]) == ("Skipped", "NodeSelectorMismatch")
    assert gpu.name != other.name


def test_update_rolls_through_and_a_stopped_agent_goes_stale(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    make_controller(stale_after=8.0)
    a, b = make_node(), make_node()
    cluster.apply_policy(TP, "roll", web_policy())
    wait_status(cluster, "roll", lambda s: conditions(s).get("Ready") == ("True", "AllNodesReady"))

    b.agent.stop()
    changed = cluster.apply_policy(TP, "roll", web_policy(containerSelector={}))
    generation = changed["metadata"]["generation"]
    # a applies the new generation; b still holds the old one: Pending, then Stale.
    status = wait_status(
        cluster,
        "roll",
        lambda s: s.get("observedGeneration") == generation and s.get("readyNodes") == 1,
    )
    [listed] = status["nodes"]
    assert listed["node"] == b.name
    assert listed["state"] in ("Pending", "Stale")
    if listed["state"] == "Pending":
        assert listed["reason"] == "OldGeneration"
    status = wait_status(
        cluster, "roll", lambda s: conditions(s).get("Degraded", ("",))[0] == "True"
    )
    assert conditions(status)["Degraded"] == ("True", "NodesStale")
    assert [(n["node"], n["state"]) for n in status["nodes"]] == [(b.name, "Stale")]

    b.agent.start()
    status = wait_status(cluster, "roll", lambda s: counts(s)[:2] == (2, 2))
    assert conditions(status)["Ready"] == ("True", "AllNodesReady")
    assert all(c["observedGeneration"] == generation for c in status["conditions"])
    assert a.name != b.name


def test_deleted_node_and_deleted_policy_leave_nothing_behind(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    make_controller()
    a, b = make_node(), make_node()
    cluster.apply_policy(TP, "leaves", web_policy())
    wait_status(cluster, "leaves", lambda s: counts(s)[:2] == (2, 2))

    b.agent.stop()
    b.kubelet.core.delete_node(b.name)
    eventually(lambda: report(cluster, b) is None, timeout=30, what="report of the deleted node")
    status = wait_status(cluster, "leaves", lambda s: counts(s)[:2] == (1, 1))
    assert conditions(status)["Ready"] == ("True", "AllNodesReady")

    cluster.delete_policy(TP, "leaves")

    def forgotten() -> bool:
        return all(e["name"] != "leaves" for e in (report(cluster, a) or {}).get("policies", []))

    eventually(forgotten, timeout=30, what="the deleted policy gone from the report")


def test_restarts_rewrite_nothing_unchanged(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    controller = make_controller()
    node = make_node()  # its Lease is renewed every 2 s; its report must not be rewritten
    cluster.apply_policy(TP, "steady", web_policy())
    wait_status(cluster, "steady", lambda s: counts(s)[:2] == (1, 1))
    policy_rv = cluster.get_policy(TP, "steady")["metadata"]["resourceVersion"]
    report_rv = report(cluster, node)["metadata"]["resourceVersion"]  # type: ignore[index]

    controller.stop()
    restarted = make_controller()
    marker = re.compile(r"recomputed \d+ policies from \d+ reports, wrote 0")
    eventually(lambda: marker.search(restarted.log(200)), timeout=30, what="recomputation")

    node.agent.stop()
    node.agent.log_path.write_text("")
    node.agent.start()
    eventually(
        lambda: "report: nothing to write" in node.agent.log(400),
        timeout=30,
        what="the restarted agent's first report decision",
    )
    assert cluster.get_policy(TP, "steady")["metadata"]["resourceVersion"] == policy_rv
    assert report(cluster, node)["metadata"]["resourceVersion"] == report_rv  # type: ignore[index]


def test_a_standby_controller_takes_over(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    """Two replicas with leader election: one writes; when it dies, the other does."""
    import kubernetes

    first = make_controller(leader_elect=True, lease_seconds=3.0)
    second = make_controller(leader_elect=True, lease_seconds=3.0)
    make_node()
    cluster.apply_policy(TP, "before", web_policy())
    wait_status(cluster, "before", lambda s: counts(s)[:2] == (1, 1))

    leases = kubernetes.client.CoordinationV1Api(cluster.custom.api_client)
    holder = leases.read_namespaced_lease("tpfilter-controller", "default").spec.holder_identity
    by_pid = {p.process.pid: p for p in (first, second) if p.process is not None}
    leader = next(p for pid, p in by_pid.items() if holder.endswith(f"-{pid}"))
    standby = second if leader is first else first
    leader.stop()

    cluster.apply_policy(TP, "after", web_policy())
    wait_status(cluster, "after", lambda s: counts(s)[:2] == (1, 1), timeout=60)
    now = leases.read_namespaced_lease("tpfilter-controller", "default").spec.holder_identity
    assert standby.process is not None and now.endswith(f"-{standby.process.pid}")


def test_pod_churn_is_coalesced_into_one_report_write(
    cluster: Cluster, make_node: MakeNode
) -> None:
    """Counts (pods, cgroups) changing is written at most once per --report-counts-interval:
    six pods started one after another cost one or two writes of the report, not six."""
    node = make_node(report_counts_interval=6.0)
    ns = cluster.namespace()
    cluster.apply_policy(TP, "churn", web_policy())

    def entry() -> dict[str, Any]:
        policies = (report(cluster, node) or {}).get("policies", [])
        return next((e for e in policies if e["name"] == "churn"), {})

    eventually(lambda: entry().get("state") == "Ready", timeout=30, what="policy in the report")
    written = node.agent.log(10_000).count("report written")
    for i in range(6):
        node.kubelet.create_pod(ns, f"web-{i}", labels={"app": "web"})
    eventually(lambda: entry().get("pods") == 6, timeout=30, interval=0.2, what="6 pods reported")
    writes = node.agent.log(10_000).count("report written") - written
    assert 1 <= writes <= 2, f"{writes} report writes for 6 pods"
