"""What the agent needs of a Pod: labels, QoS class, hostPID and its live containers.

Pure: built from the Pod object as the API server sends it (a plain dict), so the same code
serves kopf event bodies, list results and unit tests.

A container counts when the kubelet reports a ``containerID`` for it and it has not
terminated (nor is it a crash loop waiting under the dead container's ID): that is when
it has a cgroup on the node. Init and ephemeral containers count
too, because a policy on a pod must also act on what runs in them. A restarted container
comes back with a new ID, so the old cgroup drops out and the new one comes in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tpfilter.interfaces import ContainerRef

_STATUS_LISTS = ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses")


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    image: str
    ref: ContainerRef

    @property
    def repo(self) -> str:
        return image_repo(self.image)

    @property
    def labels(self) -> dict[str, str]:
        """The pseudo-labels a containerSelector matches against."""
        return {"name": self.name, "repo": self.repo}


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str] = field(default_factory=dict)
    containers: tuple[Container, ...] = ()
    resource_version: str = ""
    # spec.hostPID: the containers' own processes live in the node's PID namespace, so
    # the BPF check cannot tell them from the runtime's by namespace (policy_filter.h).
    host_pid: bool = False


def parse_pod(body: Mapping[str, Any]) -> Pod:
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    uid = metadata.get("uid", "")
    qos = status.get("qosClass") or "BestEffort"
    containers = []
    for list_name in _STATUS_LISTS:
        for cs in status.get(list_name) or ():
            container_id = cs.get("containerID")
            if not container_id or not _may_have_cgroup(cs):
                continue
            ref = ContainerRef(pod_uid=uid, qos_class=qos, container_id=container_id)
            containers.append(
                Container(name=cs.get("name", ""), image=cs.get("image", ""), ref=ref)
            )
    return Pod(
        namespace=metadata.get("namespace", ""),
        name=metadata.get("name", ""),
        uid=uid,
        labels=dict(metadata.get("labels") or {}),
        containers=tuple(containers),
        resource_version=metadata.get("resourceVersion", ""),
        host_pid=spec.get("hostPID") is True,
    )


def _may_have_cgroup(status: Mapping[str, Any]) -> bool:
    """Whether the container named by ``status['containerID']`` can still have a cgroup.

    Not when it terminated. "waiting" is ambiguous: a created, not yet started container
    (its cgroup exists) and a crash loop (the ID is the *dead* container's, whose cgroup is
    gone, and ``lastState.terminated`` names that same ID) both wait with an ID.
    """
    state = status.get("state") or {}
    if "terminated" in state:
        return False
    last = ((status.get("lastState") or {}).get("terminated") or {}).get("containerID")
    return not ("waiting" in state and last == status.get("containerID"))


def image_repo(image: str) -> str:
    """The image repository: the reference without ``@digest`` and without ``:tag``.

    ``docker.io/library/nginx:1.27@sha256:...`` -> ``docker.io/library/nginx``;
    a registry port (``localhost:5000/app``) is not a tag, because a tag never contains '/'.
    """
    name = image.split("@", 1)[0]
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > last_slash else name
