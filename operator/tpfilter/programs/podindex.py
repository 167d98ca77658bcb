"""cgroup ID -> (namespace, pod, container): the ``resolve`` callback for events.

Built from the agent's own state (its pods and the engine's CgroupFinder), refreshed
after each reconcile. Lookups come from the event thread: the mapping is replaced in one
assignment, never mutated, so readers need no lock.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from tpfilter.interfaces import CgroupFinder
from tpfilter.pods import Pod

log = logging.getLogger(__name__)


class PodIndex:
    def __init__(self, finder: CgroupFinder) -> None:
        self._finder = finder
        self._by_cgroup: Mapping[int, tuple[str, str, str]] = {}
        # pod UID -> (the Pod object indexed, its entries). The store hands out the same
        # object until the pod changes, so an unchanged pod costs no cgroup lookup.
        self._by_pod: dict[str, tuple[Pod, dict[int, tuple[str, str, str]]]] = {}

    def update(self, pods: Iterable[Pod]) -> None:
        """Re-index the node's pods; only new or changed pods are looked up again."""
        seen: dict[str, tuple[Pod, dict[int, tuple[str, str, str]]]] = {}
        for pod in pods:
            cached = self._by_pod.get(pod.uid)
            # A container whose cgroup was not there yet is looked up again next time.
            if cached is None or cached[0] is not pod or len(cached[1]) < len(pod.containers):
                cached = (pod, self._entries(pod))
            seen[pod.uid] = cached
        for uid in self._by_pod.keys() - seen.keys():  # pods gone: bound the finder's cache
            for container in self._by_pod[uid][0].containers:
                self._finder.forget(container.ref)
        self._by_pod = seen
        self._by_cgroup = {cid: who for _, entries in seen.values() for cid, who in entries.items()}

    def _entries(self, pod: Pod) -> dict[int, tuple[str, str, str]]:
        entries = {}
        for container in pod.containers:
            try:
                cgroup_id = self._finder.cgroup_id(container.ref)
            except Exception:  # a malformed container ID: no attribution, no failure
                log.debug("no cgroup for %s/%s %s", pod.namespace, pod.name, container.name)
                continue
            if cgroup_id is not None:
                entries[cgroup_id] = (pod.namespace, pod.name, container.name)
        return entries

    def __call__(self, cgroup_id: int) -> tuple[str, str, str] | None:
        return self._by_cgroup.get(cgroup_id)

    def __len__(self) -> int:
        return len(self._by_cgroup)
