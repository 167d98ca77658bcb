"""Desired state: which containers each filtered policy selects on this node.

Pure: policies x this node's pods -> {policy UID: the containers it selects}. Turning the
containers into cgroup IDs is the engine's job (it needs the node's cgroupfs).
"""

from __future__ import annotations

from collections.abc import Iterable

from tpfilter.interfaces import ContainerRef
from tpfilter.models import Policy, PolicyKind
from tpfilter.pods import Pod


def selects_pod(policy: Policy, pod: Pod) -> bool:
    """Whether a *filtered* policy selects ``pod`` (see ``tpfilter.models`` for meanings)."""
    if policy.key.kind is PolicyKind.NAMESPACED and pod.namespace != policy.key.namespace:
        return False
    selector = policy.spec.pod_selector
    return selector is None or selector.matches(pod.labels)


def selected_containers(policy: Policy, pods: Iterable[Pod]) -> frozenset[ContainerRef]:
    container_selector = policy.spec.container_selector
    return frozenset(
        container.ref
        for pod in pods
        if selects_pod(policy, pod)
        for container in pod.containers
        if container_selector is None or container_selector.matches(container.labels)
    )


def desired_containers(
    policies: Iterable[Policy], pods: Iterable[Pod]
) -> dict[str, frozenset[ContainerRef]]:
    """{policy UID: selected containers} for every filtered policy, even one selecting none.

    Unfiltered policies are absent: they need no map (programs treat them as matching
    every process).
    """
    pod_list = list(pods)
    return {p.uid: selected_containers(p, pod_list) for p in policies if p.filtered}
