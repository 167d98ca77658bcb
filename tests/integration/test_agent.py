"""The real agent against a real API server and the real kernel maps.

The test plays the kubelet of a node of its own (tpfilter_dev.kubelet): real cgroups with
real processes in them, pod status reported through the API. Expected cgroup IDs are the
inodes of the directories the test made, never anything the agent computed.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest
import yaml
from harness import eventually, kernel_view

from conftest import Cluster, Node, kubectl
from tpfilter.models import PolicyKind

pytestmark = pytest.mark.apiserver

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed-policy.yaml"
TP, TPN = PolicyKind.CLUSTER, PolicyKind.NAMESPACED


def selector(**labels: str) -> dict[str, object]:
    return {"podSelector": {"matchLabels": labels}, "tracepoints": []}


def converge(node: Node, expected: dict[str, frozenset[int]], timeout: float = 20) -> None:
    """The node's maps hold exactly ``expected`` (names as "TracingPolicy/name")."""
    last: list[object] = []

    def check() -> bool:
        last[:] = [kernel_view(node.pin_dir, node.state_dir)]
        return last[0] == expected

    try:
        eventually(check, timeout=timeout, what="maps")
    except AssertionError:
        raise AssertionError(f"maps never became {expected}; last: {last}") from None


def ids(*pods: object) -> frozenset[int]:
    return frozenset(c.cgroup_id for p in pods for c in p.containers.values())  # type: ignore[attr-defined]


def test_seed_policy_applies_unchanged_and_selects_ubuntu_pods(
    node: Node, cluster: Cluster
) -> None:
    node.agent.start()
    ns = cluster.namespace()
    ubuntu = node.kubelet.create_pod(ns, "ubuntu", labels={"app": "ubuntu"})
    other = node.kubelet.create_pod(ns, "nginx", labels={"app": "nginx"})
    out = kubectl(cluster.plane, "apply", "-f", str(SEED))
    assert "created" in out.stdout or "configured" in out.stdout
    cluster._policies.append((TP, None, yaml.safe_load(SEED.read_text())["metadata"]["name"]))
    converge(node, {"TracingPolicy/policy-1": ids(ubuntu)})
    assert ids(other).isdisjoint(
        kernel_view(node.pin_dir, node.state_dir)["TracingPolicy/policy-1"]
    )


def test_pod_before_policy_and_policy_before_pod(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns = cluster.namespace()
    early = node.kubelet.create_pod(ns, "early", labels={"app": "web"})
    cluster.apply_policy(TP, "web", selector(app="web"))
    converge(node, {"TracingPolicy/web": ids(early)})
    late = node.kubelet.create_pod(ns, "late", labels={"app": "web"})
    converge(node, {"TracingPolicy/web": ids(early, late)})


def test_labels_move_into_and_out_of_the_selector(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns = cluster.namespace()
    pod = node.kubelet.create_pod(ns, "p", labels={"app": "db"})
    cluster.apply_policy(TP, "web-only", selector(app="web"))
    converge(node, {"TracingPolicy/web-only": frozenset()})
    node.kubelet.set_labels(pod, {"app": "web"})
    converge(node, {"TracingPolicy/web-only": ids(pod)})
    node.kubelet.set_labels(pod, {"app": None})
    converge(node, {"TracingPolicy/web-only": frozenset()})


def test_pod_deletion_removes_its_cgroups(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns = cluster.namespace()
    a = node.kubelet.create_pod(ns, "a", labels={"app": "x"})
    b = node.kubelet.create_pod(ns, "b", labels={"app": "x"})
    cluster.apply_policy(TP, "x", selector(app="x"))
    converge(node, {"TracingPolicy/x": ids(a, b)})
    b_ids = ids(b)
    node.kubelet.delete_pod(b)
    converge(node, {"TracingPolicy/x": ids(a)})
    assert b_ids.isdisjoint(kernel_view(node.pin_dir, node.state_dir)["TracingPolicy/x"])


def test_policy_update_and_deletion(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    pins_before = sorted(node.pin_dir.iterdir())
    ns = cluster.namespace()
    web = node.kubelet.create_pod(ns, "web", labels={"app": "web"})
    db = node.kubelet.create_pod(ns, "db", labels={"app": "db"})
    cluster.apply_policy(TP, "p", selector(app="web"))
    converge(node, {"TracingPolicy/p": ids(web)})
    cluster.apply_policy(TP, "p", selector(app="db"))
    converge(node, {"TracingPolicy/p": ids(db)})
    cluster.apply_policy(
        TP,
        "p",
        {
            "podSelector": {
                "matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "db"]}]
            }
        },
    )
    converge(node, {"TracingPolicy/p": ids(web, db)})
    cluster.delete_policy(TP, "p")
    converge(node, {})
    assert sorted(node.pin_dir.iterdir()) == pins_before  # no pin left behind by the policy


def test_namespaced_policy_selects_only_in_its_namespace(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns1, ns2 = cluster.namespace(), cluster.namespace()
    mine = node.kubelet.create_pod(ns1, "p", labels={"app": "web"})
    node.kubelet.create_pod(ns2, "p", labels={"app": "web"})
    cluster.apply_policy(TPN, "web", selector(app="web"), namespace=ns1)
    cluster.apply_policy(TPN, "all", {"kprobes": []}, namespace=ns1)  # no selector: whole ns
    converge(
        node,
        {
            f"TracingPolicyNamespaced/{ns1}/web": ids(mine),
            f"TracingPolicyNamespaced/{ns1}/all": ids(mine),
        },
    )


def test_container_selector_narrows_to_named_containers(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns = cluster.namespace()
    pod = node.kubelet.create_pod(
        ns,
        "p",
        labels={"app": "web"},
        containers=[
            ("app", "registry.example:5000/team/app:1.0"),
            ("sidecar", "docker.io/envoyproxy/envoy:v1"),
        ],
    )
    cluster.apply_policy(
        TP,
        "by-name",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "containerSelector": {"matchLabels": {"name": "app"}},
        },
    )
    cluster.apply_policy(
        TP,
        "by-repo",
        {
            "containerSelector": {
                "matchExpressions": [
                    {"key": "repo", "operator": "In", "values": ["docker.io/envoyproxy/envoy"]}
                ]
            }
        },
    )
    converge(
        node,
        {
            "TracingPolicy/by-name": frozenset({pod.containers["app"].cgroup_id}),
            "TracingPolicy/by-repo": frozenset({pod.containers["sidecar"].cgroup_id}),
        },
    )


def test_container_restart_swaps_the_cgroup_id(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns = cluster.namespace()
    pod = node.kubelet.create_pod(ns, "p", labels={"app": "web"})
    cluster.apply_policy(TP, "web", selector(app="web"))
    converge(node, {"TracingPolicy/web": ids(pod)})
    old = ids(pod)
    node.kubelet.restart_container(pod, "main")
    assert ids(pod) != old
    converge(node, {"TracingPolicy/web": ids(pod)})


def test_other_runtimes_and_drivers(other_layout_node: Node, cluster: Cluster) -> None:
    node = other_layout_node
    node.agent.start()
    ns = cluster.namespace()
    pods = [
        node.kubelet.create_pod(ns, f"p-{qos.lower()}", labels={"app": "web"}, qos=qos)
        for qos in ("Guaranteed", "Burstable", "BestEffort")
    ]
    cluster.apply_policy(TP, "web", selector(app="web"))
    converge(node, {"TracingPolicy/web": ids(*pods)})


def test_agent_restart_while_pods_change_never_drops_a_running_selected_container(
    node: Node, cluster: Cluster
) -> None:
    node.agent.start()
    ns = cluster.namespace()
    steady = node.kubelet.create_pod(ns, "steady", labels={"app": "web"})
    leaving = node.kubelet.create_pod(ns, "leaving", labels={"app": "web"})
    cluster.apply_policy(TP, "web", selector(app="web"))
    converge(node, {"TracingPolicy/web": ids(steady, leaving)})

    gaps: list[frozenset[int]] = []
    errors: list[BaseException] = []
    views = [0]  # maps read by the watcher while the agent was down and coming back
    stop = threading.Event()

    def watch_maps() -> None:  # the steady pod must be in its map at every moment
        try:
            while not stop.is_set():
                view = kernel_view(node.pin_dir, node.state_dir)
                held = view.get("TracingPolicy/web", frozenset())
                if not ids(steady) <= held:
                    gaps.append(held)
                views[0] += 1
        except BaseException as exc:  # a dead watcher would watch nothing: fail, not pass
            errors.append(exc)

    watcher = threading.Thread(target=watch_maps)
    watcher.start()
    try:
        node.agent.stop(signal.SIGKILL)  # no goodbye: a crash
        before = views[0]
        node.kubelet.delete_pod(leaving)
        arriving = node.kubelet.create_pod(ns, "arriving", labels={"app": "web"})
        node.agent.start()
        converge(node, {"TracingPolicy/web": ids(steady, arriving)})
        during = views[0] - before
    finally:
        stop.set()
        watcher.join()
    assert errors == []
    assert during > 0, "the watcher read no map while the agent restarted"
    assert gaps == []


def test_api_server_restart(node: Node, cluster: Cluster) -> None:
    node.agent.start()
    ns = cluster.namespace()
    a = node.kubelet.create_pod(ns, "a", labels={"app": "web"})
    cluster.apply_policy(TP, "web", selector(app="web"))
    converge(node, {"TracingPolicy/web": ids(a)})
    cluster.plane.stop_apiserver()
    cluster.plane.start_apiserver()
    b = node.kubelet.create_pod(ns, "b", labels={"app": "web"})
    converge(node, {"TracingPolicy/web": ids(a, b)}, timeout=60)


def test_watch_expiry_410_then_relist_catches_a_missed_deletion(
    node: Node, cluster: Cluster
) -> None:
    node.agent.resync_seconds = 3
    node.agent.start()
    ns = cluster.namespace()
    a = node.kubelet.create_pod(ns, "a", labels={"app": "web"})
    b = node.kubelet.create_pod(ns, "b", labels={"app": "web"})
    cluster.apply_policy(TP, "web", selector(app="web"))
    converge(node, {"TracingPolicy/web": ids(a, b)})
    # Freeze the agent, change the world, and restart the API server: its fresh watch cache
    # starts after the agent's last resourceVersion, so resuming the watch gets 410 Gone.
    assert node.agent.process is not None
    node.agent.process.send_signal(signal.SIGSTOP)
    try:
        node.kubelet.delete_pod(b)
        c = node.kubelet.create_pod(ns, "c", labels={"app": "web"})
        cluster.plane.stop_apiserver()
        cluster.plane.start_apiserver()
    finally:
        node.agent.process.send_signal(signal.SIGCONT)
    converge(node, {"TracingPolicy/web": ids(a, c)}, timeout=60)


def test_agent_never_writes_to_pods_or_policies(node: Node, cluster: Cluster) -> None:
    ns = cluster.namespace()
    pod = node.kubelet.create_pod(ns, "p", labels={"app": "web"})
    created = cluster.apply_policy(TP, "web", selector(app="web"))
    before_pod = node.kubelet.core.read_namespaced_pod(pod.name, ns).metadata.resource_version
    node.agent.start()
    converge(node, {"TracingPolicy/web": ids(pod)})
    after = cluster.get_policy(TP, "web")
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert not after["metadata"].get("finalizers")
    assert not after["metadata"].get("annotations")
    assert "status" not in after
    current = node.kubelet.core.read_namespaced_pod(pod.name, ns).metadata
    assert current.resource_version == before_pod
    assert not current.finalizers


def test_many_pods_and_policies_converge(node: Node, cluster: Cluster) -> None:
    """200 pods x 50 policies: every policy selects its share of pods, exactly."""
    node.agent.start()
    ns = cluster.namespace()
    pods = [
        node.kubelet.create_pod(ns, f"p{i}", labels={"team": f"t{i % 10}", "tier": f"{i % 5}"})
        for i in range(200)
    ]
    expected = {}
    for j in range(50):
        team = f"t{j % 10}"
        cluster.apply_policy(TP, f"pol-{j}", {"podSelector": {"matchLabels": {"team": team}}})
        expected[f"TracingPolicy/pol-{j}"] = ids(
            *(p for i, p in enumerate(pods) if i % 10 == j % 10)
        )
    converge(node, expected, timeout=120)


def test_node_relabel_moves_the_node_into_and_out_of_the_node_selector(
    node: Node, cluster: Cluster
) -> None:
    import json

    from tpfilter import statefile

    node.agent.start()
    ns = cluster.namespace()
    web = node.kubelet.create_pod(ns, "web", labels={"app": "web"})
    spec = {**selector(app="web"), "nodeSelector": {"matchLabels": {"pool": "bpf"}}}
    cluster.apply_policy(TP, "bpf-pool", spec)
    cluster.apply_policy(TP, "everywhere", selector(app="web"))
    converge(node, {"TracingPolicy/everywhere": ids(web)})

    def skipped() -> list[str]:
        try:
            status = json.loads((node.state_dir / statefile.STATUS_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return []
        return [p["name"] for p in status["policies"] if p.get("skipped")]

    eventually(lambda: skipped() == ["bpf-pool"], timeout=20, what="skipped in status")
    # the whole log: how many lines the agent wrote since depends on how events were batched
    assert "TracingPolicy/bpf-pool: skipped on this node" in node.agent.log_path.read_text()

    cluster.core.patch_node(node.name, {"metadata": {"labels": {"pool": "bpf"}}})
    converge(node, {"TracingPolicy/everywhere": ids(web), "TracingPolicy/bpf-pool": ids(web)})
    eventually(lambda: skipped() == [], timeout=20, what="no longer skipped")

    cluster.core.patch_node(node.name, {"metadata": {"labels": {"pool": None}}})
    converge(node, {"TracingPolicy/everywhere": ids(web)})
    eventually(lambda: skipped() == ["bpf-pool"], timeout=20, what="skipped again")


def test_host_selector_keeps_the_all_pods_set_and_marks_the_policy(
    node: Node, cluster: Cluster
) -> None:
    from tpfilter.ids import ALL_PODS_ID
    from tpfilter.interfaces import HOST_MARKER

    all_pods = f"?{ALL_PODS_ID}"  # kernel_view's name for a map no policy record names
    node.agent.start()
    ns = cluster.namespace()
    web = node.kubelet.create_pod(ns, "web", labels={"app": "web"})
    db = node.kubelet.create_pod(ns, "db", labels={"app": "db"})
    cluster.apply_policy(TP, "web-and-host", {**selector(app="web"), "hostSelector": {}})
    converge(
        node,
        {
            "TracingPolicy/web-and-host": ids(web) | {HOST_MARKER},
            all_pods: ids(web, db),
        },
    )
    late = node.kubelet.create_pod(ns, "late", labels={"app": "other"})
    converge(
        node,
        {
            "TracingPolicy/web-and-host": ids(web) | {HOST_MARKER},
            all_pods: ids(web, db, late),
        },
    )
    cluster.apply_policy(TP, "web-and-host", selector(app="web"))  # hostSelector dropped
    converge(node, {"TracingPolicy/web-and-host": ids(web)})
