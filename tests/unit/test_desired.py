"""desired_containers: which containers each filtered policy selects."""

from __future__ import annotations

from typing import Any

from tpfilter.desired import desired_containers, selected_containers, selects_pod
from tpfilter.interfaces import ContainerRef
from tpfilter.models import Policy, parse_policy
from tpfilter.pods import Pod, parse_pod


def policy(
    name: str,
    spec: dict[str, Any],
    *,
    namespace: str | None = None,
    uid: str | None = None,
) -> Policy:
    kind = "TracingPolicyNamespaced" if namespace else "TracingPolicy"
    metadata: dict[str, Any] = {"name": name, "uid": uid or f"uid-{name}"}
    if namespace:
        metadata["namespace"] = namespace
    return parse_policy({"kind": kind, "metadata": metadata, "spec": spec})


def pod(
    name: str,
    labels: dict[str, str],
    containers: list[tuple[str, str]],
    *,
    namespace: str = "default",
) -> Pod:
    """containers: (name, image); the container ID is derived from pod and container name."""
    statuses = [
        {
            "name": cname,
            "image": image,
            "containerID": f"containerd://{namespace}-{name}-{cname}",
            "state": {"running": {}},
        }
        for cname, image in containers
    ]
    return parse_pod(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"pod-{namespace}-{name}",
                "labels": labels,
            },
            "status": {"qosClass": "BestEffort", "containerStatuses": statuses},
        }
    )


def cids(refs: frozenset[ContainerRef]) -> set[str]:
    return {r.container_id.removeprefix("containerd://") for r in refs}


PODS = [
    pod("web", {"app": "web"}, [("main", "nginx:1.27"), ("side", "envoy:v1")]),
    pod("db", {"app": "db"}, [("main", "postgres:16")]),
    pod("web", {"app": "web"}, [("main", "nginx")], namespace="other"),
    pod("bare", {}, [("main", "busybox")]),
]


def test_namespaced_policy_only_in_its_namespace() -> None:
    p = policy("p", {}, namespace="other")
    assert cids(selected_containers(p, PODS)) == {"other-web-main"}
    p2 = policy("p2", {"podSelector": {"matchLabels": {"app": "web"}}}, namespace="default")
    assert cids(selected_containers(p2, PODS)) == {"default-web-main", "default-web-side"}
    p3 = policy("p3", {}, namespace="nowhere")
    assert selected_containers(p3, PODS) == frozenset()


def test_namespaced_label_match_in_other_namespace_not_selected() -> None:
    p = policy("p", {"podSelector": {"matchLabels": {"app": "db"}}}, namespace="other")
    assert selected_containers(p, PODS) == frozenset()
    assert not any(selects_pod(p, x) for x in PODS)


def test_cluster_policy_spans_namespaces() -> None:
    p = policy("p", {"podSelector": {"matchLabels": {"app": "web"}}})
    assert cids(selected_containers(p, PODS)) == {
        "default-web-main",
        "default-web-side",
        "other-web-main",
    }


def test_empty_pod_selector_selects_all_pods() -> None:
    p = policy("p", {"podSelector": {}})
    assert len(selected_containers(p, PODS)) == 5


def test_container_selector_by_name() -> None:
    p = policy("p", {"containerSelector": {"matchLabels": {"name": "main"}}})
    assert cids(selected_containers(p, PODS)) == {
        "default-web-main",
        "default-db-main",
        "other-web-main",
        "default-bare-main",
    }


def test_container_selector_by_repo_ignores_tag() -> None:
    p = policy(
        "p",
        {
            "containerSelector": {
                "matchExpressions": [
                    {"key": "repo", "operator": "In", "values": ["nginx", "postgres"]}
                ]
            }
        },
    )
    assert cids(selected_containers(p, PODS)) == {
        "default-web-main",
        "other-web-main",
        "default-db-main",
    }


def test_pod_and_container_selector_both_apply() -> None:
    p = policy(
        "p",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "containerSelector": {
                "matchExpressions": [{"key": "name", "operator": "NotIn", "values": ["main"]}]
            },
        },
        namespace="default",
    )
    assert cids(selected_containers(p, PODS)) == {"default-web-side"}


def test_container_selector_by_full_repository() -> None:
    pods = [
        pod(
            "x",
            {},
            [
                ("main", "docker.io/library/nginx:1.27"),
                ("b", "quay.io/a/b:1"),
                ("c", "localhost:5000/docker.io/library/nginx:1.27"),
                ("d", "docker.io/library/nginx-extra:1"),
            ],
        )
    ]
    p = policy(
        "p",
        {"containerSelector": {"matchLabels": {"repo": "docker.io/library/nginx"}}},
    )
    assert cids(selected_containers(p, pods)) == {"default-x-main"}


def test_unfiltered_policies_absent_and_no_match_present_empty() -> None:
    unfiltered = policy("u", {"kprobes": []})
    also_unfiltered = policy("u2", {"podSelector": None})
    no_match = policy("n", {"podSelector": {"matchLabels": {"app": "nothing"}}})
    contradictory = policy(
        "c",
        {
            "podSelector": {
                "matchExpressions": [
                    {"key": "a", "operator": "Exists"},
                    {"key": "a", "operator": "DoesNotExist"},
                ]
            }
        },
    )
    web = policy("w", {"podSelector": {"matchLabels": {"app": "web"}}})
    result = desired_containers([unfiltered, also_unfiltered, no_match, contradictory, web], PODS)
    assert set(result) == {"uid-n", "uid-c", "uid-w"}
    assert result["uid-n"] == frozenset()
    assert result["uid-c"] == frozenset()
    assert len(result["uid-w"]) == 3


def test_no_pods_at_all() -> None:
    p = policy("p", {}, namespace="ns")
    assert desired_containers([p], []) == {"uid-p": frozenset()}


def test_pods_iterable_consumed_once_is_fine() -> None:
    a = policy("a", {"podSelector": {}})
    b = policy("b", {"podSelector": {"matchLabels": {"app": "db"}}})
    result = desired_containers([a, b], iter(PODS))
    assert len(result["uid-a"]) == 5
    assert cids(result["uid-b"]) == {"default-db-main"}


def test_refs_carry_pod_uid_and_qos() -> None:
    p = policy("p", {"podSelector": {"matchLabels": {"app": "db"}}})
    (ref,) = selected_containers(p, PODS)
    assert ref == ContainerRef("pod-default-db", "BestEffort", "containerd://default-db-main")


def test_pod_without_running_containers_contributes_nothing() -> None:
    empty = pod("empty", {"app": "web"}, [])
    p = policy("p", {"podSelector": {"matchLabels": {"app": "web"}}})
    assert selects_pod(p, empty)
    assert selected_containers(p, [empty]) == frozenset()


def test_container_selector_repo_with_registry_port() -> None:
    pods = [
        pod("x", {}, [("a", "localhost:5000/app:v1"), ("b", "localhost:5000/app@sha256:00")]),
        pod("y", {}, [("a", "localhost:5001/app:v1"), ("b", "app:v1")]),
    ]
    p = policy(
        "p",
        {
            "containerSelector": {
                "matchExpressions": [
                    {"key": "repo", "operator": "In", "values": ["localhost:5000/app"]}
                ]
            }
        },
    )
    assert cids(selected_containers(p, pods)) == {"default-x-a", "default-x-b"}
