"""parse_pod and image_repo, on Pod objects shaped like the API server's."""

from __future__ import annotations

from typing import Any

import pytest

from tpfilter.interfaces import ContainerRef
from tpfilter.pods import image_repo, parse_pod

RUNNING = {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
WAITING = {"waiting": {"reason": "ContainerCreating"}}
TERMINATED = {"terminated": {"exitCode": 0, "reason": "Completed"}}


def status(name: str, cid: str | None, state: dict[str, Any] | None = None, image: str = "img"):
    cs: dict[str, Any] = {"name": name, "image": image, "ready": True, "restartCount": 0}
    if cid is not None:
        cs["containerID"] = cid
    if state is not None:
        cs["state"] = state
    return cs


def pod_body(**status_fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": "prod",
            "uid": "pod-uid-1",
            "resourceVersion": "42",
            "labels": {"app": "web"},
        },
        "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "img"}]},
        "status": {"phase": "Running", "qosClass": "Burstable", **status_fields},
    }


def ids(body: dict[str, Any]) -> list[str]:
    return [c.ref.container_id for c in parse_pod(body).containers]


def test_metadata_fields() -> None:
    pod = parse_pod(pod_body())
    assert (pod.namespace, pod.name, pod.uid, pod.resource_version) == (
        "prod",
        "web-1",
        "pod-uid-1",
        "42",
    )
    assert dict(pod.labels) == {"app": "web"}
    assert pod.containers == ()


def test_labels_copied_not_aliased() -> None:
    body = pod_body()
    pod = parse_pod(body)
    body["metadata"]["labels"]["app"] = "changed"
    assert pod.labels["app"] == "web"


def test_null_labels_and_status() -> None:
    body = pod_body()
    body["metadata"]["labels"] = None
    body["status"] = None
    pod = parse_pod(body)
    assert dict(pod.labels) == {}
    assert pod.containers == ()


def test_all_three_status_lists_count() -> None:
    body = pod_body(
        initContainerStatuses=[status("init", "containerd://i1", RUNNING)],
        containerStatuses=[
            status("main", "containerd://c1", RUNNING, "nginx:1.27"),
            status("side", "containerd://c2", RUNNING, "busybox"),
        ],
        ephemeralContainerStatuses=[status("debug", "containerd://e1", RUNNING)],
    )
    pod = parse_pod(body)
    assert sorted(c.ref.container_id for c in pod.containers) == [
        "containerd://c1",
        "containerd://c2",
        "containerd://e1",
        "containerd://i1",
    ]
    by_name = {c.name: c for c in pod.containers}
    assert set(by_name) == {"init", "main", "side", "debug"}
    assert by_name["main"].image == "nginx:1.27"
    assert by_name["main"].ref == ContainerRef("pod-uid-1", "Burstable", "containerd://c1")
    assert by_name["main"].labels == {"name": "main", "repo": "nginx"}


def test_null_status_lists() -> None:
    body = pod_body(
        initContainerStatuses=None,
        containerStatuses=[status("main", "cri-o://c1", RUNNING)],
        ephemeralContainerStatuses=None,
    )
    assert ids(body) == ["cri-o://c1"]


@pytest.mark.parametrize("cid", [None, ""])
def test_no_container_id_skipped(cid: str | None) -> None:
    body = pod_body(
        containerStatuses=[status("main", cid, WAITING), status("side", "docker://c2", RUNNING)]
    )
    assert ids(body) == ["docker://c2"]


def test_terminated_skipped() -> None:
    body = pod_body(
        initContainerStatuses=[status("init", "containerd://i1", TERMINATED)],
        containerStatuses=[
            status("main", "containerd://c1", RUNNING),
            status("done", "containerd://c2", TERMINATED),
        ],
    )
    assert ids(body) == ["containerd://c1"]


def test_waiting_with_id_and_missing_state_count() -> None:
    # a created-but-not-yet-started container (state waiting, ID known) has a cgroup
    body = pod_body(
        containerStatuses=[
            status("a", "containerd://a", WAITING),
            status("b", "containerd://b", None),
        ]
    )
    assert sorted(ids(body)) == ["containerd://a", "containerd://b"]


def test_restart_brings_new_id() -> None:
    before = pod_body(containerStatuses=[status("main", "containerd://old", RUNNING)])
    after = pod_body(
        containerStatuses=[
            {
                **status("main", "containerd://new", RUNNING),
                "restartCount": 1,
                "lastState": {"terminated": {"containerID": "containerd://old", "exitCode": 1}},
            }
        ]
    )
    old_refs = {c.ref for c in parse_pod(before).containers}
    new_refs = {c.ref for c in parse_pod(after).containers}
    assert [r.container_id for r in new_refs] == ["containerd://new"]
    assert old_refs.isdisjoint(new_refs)


@pytest.mark.parametrize("qos", [None, ""])
def test_qos_defaults_to_best_effort(qos: str | None) -> None:
    body = pod_body(containerStatuses=[status("main", "containerd://c1", RUNNING)])
    if qos is None:
        del body["status"]["qosClass"]
    else:
        body["status"]["qosClass"] = qos
    (container,) = parse_pod(body).containers
    assert container.ref.qos_class == "BestEffort"


@pytest.mark.parametrize("qos", ["Guaranteed", "Burstable", "BestEffort"])
def test_qos_passed_through(qos: str) -> None:
    body = pod_body(containerStatuses=[status("main", "containerd://c1", RUNNING)])
    body["status"]["qosClass"] = qos
    (container,) = parse_pod(body).containers
    assert container.ref.qos_class == qos


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("nginx", "nginx"),
        ("nginx:1.27", "nginx"),
        ("nginx:latest", "nginx"),
        (f"nginx@{DIGEST}", "nginx"),
        (f"nginx:1.27@{DIGEST}", "nginx"),
        ("library/nginx:1.27", "library/nginx"),
        ("docker.io/library/nginx", "docker.io/library/nginx"),
        ("docker.io/library/nginx:1.27", "docker.io/library/nginx"),
        (f"docker.io/library/nginx:1.27@{DIGEST}", "docker.io/library/nginx"),
        (f"docker.io/library/nginx@{DIGEST}", "docker.io/library/nginx"),
        ("localhost:5000/app", "localhost:5000/app"),
        ("localhost:5000/app:v2", "localhost:5000/app"),
        (f"localhost:5000/app@{DIGEST}", "localhost:5000/app"),
        (f"localhost:5000/team/app:v2@{DIGEST}", "localhost:5000/team/app"),
        ("registry.example.com:443/a/b/c:1.0-rc.1", "registry.example.com:443/a/b/c"),
        ("quay.io/cilium/tetragon:v1.2.0", "quay.io/cilium/tetragon"),
        ("ghcr.io/org/img_name:tag_with.dots-1", "ghcr.io/org/img_name"),
        ("", ""),
    ],
)
def test_image_repo(image: str, repo: str) -> None:
    assert image_repo(image) == repo


def test_container_repo_label_uses_image_repo() -> None:
    body = pod_body(
        containerStatuses=[status("main", "containerd://c1", RUNNING, f"quay.io/x/y:1@{DIGEST}")]
    )
    (container,) = parse_pod(body).containers
    assert container.repo == "quay.io/x/y"
    assert container.labels == {"name": "main", "repo": "quay.io/x/y"}


def test_crash_looping_container_is_not_live() -> None:
    """Waiting with a containerID: the ID is the dead container's, its cgroup is gone."""
    from tpfilter.pods import parse_pod

    pod = parse_pod(
        {
            "metadata": {"uid": "u"},
            "status": {
                "containerStatuses": [
                    {
                        "name": "c",
                        "image": "i",
                        "containerID": "containerd://" + "a" * 64,
                        "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"containerID": "containerd://" + "a" * 64}},
                    },
                ]
            },
        }
    )
    assert pod.containers == ()
