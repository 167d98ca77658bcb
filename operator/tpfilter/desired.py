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
    if not policy.selects_pods:  # only a hostSelector: host processes, no pod
        return False
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


class Selection:
    """:func:`desired_containers` for a long-lived caller, without redoing unchanged work.

    The store hands out the *same* Pod and Policy objects until they change, so a pod whose
    object is the one seen last time, under the same policies, is not matched again: after
    one pod event a reconcile matches that one pod against the policies, not every pod.
    The result is always the full desired state (the engine stays level-triggered).
    """

    def __init__(self) -> None:
        self._policies: tuple[Policy, ...] = ()
        self._by_pod: dict[str, tuple[Pod, dict[str, frozenset[ContainerRef]]]] = {}

    def desired(
        self, policies: Iterable[Policy], pods: Iterable[Pod]
    ) -> dict[str, frozenset[ContainerRef]]:
        filtered = tuple(p for p in policies if p.filtered)
        if len(filtered) != len(self._policies) or any(
            new is not old for new, old in zip(filtered, self._policies, strict=True)
        ):
            self._policies, self._by_pod = filtered, {}
        wanted: dict[str, set[ContainerRef]] = {p.uid: set() for p in filtered}
        seen: dict[str, tuple[Pod, dict[str, frozenset[ContainerRef]]]] = {}
        for pod in pods:
            cached = self._by_pod.get(pod.uid)
            if cached is None or cached[0] is not pod:
                per_policy = {p.uid: selected_containers(p, (pod,)) for p in filtered}
                cached = (pod, {uid: refs for uid, refs in per_policy.items() if refs})
            seen[pod.uid] = cached
            for uid, refs in cached[1].items():
                wanted[uid].update(refs)
        self._by_pod = seen
        return {uid: frozenset(refs) for uid, refs in wanted.items()}
