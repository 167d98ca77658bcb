"""Kubernetes API access outside kopf's watches: full lists for the initial sync and resync.

Kopf streams events; it cannot say "this is everything", and after a watch gap it replays
what exists but not what was deleted meanwhile. A plain list can, so the agent takes one
at start and on a timer (``tpfilter.agent``). Lists are paged (``limit``/``continue``)
so a large cluster is never one giant response. Pods are listed with the same server-side
field selector the watch uses: this node's pods only; and this node's own Node object (its
labels are what nodeSelector matches), by the field selector ``metadata.name``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any

from tpfilter.agent import FullList, Lister
from tpfilter.models import GROUP, VERSION, PolicyKind

PAGE = 500


def load_api_client(kubeconfig: str | None = None) -> Any:
    """An ApiClient from ``kubeconfig`` if given, else the in-cluster service account, else
    from $KUBECONFIG (or ~/.kube/config)."""
    import kubernetes

    if kubeconfig:
        return kubernetes.config.new_client_from_config(config_file=kubeconfig)
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.ApiClient()


def pages(call: Callable[..., Any], **kwargs: Any) -> tuple[list[Mapping[str, Any]], str]:
    items: list[Mapping[str, Any]] = []
    token = None
    while True:
        response = call(limit=PAGE, _continue=token, _preload_content=False, **kwargs)
        page = json.loads(response.data)
        items.extend(page.get("items") or [])
        token = page["metadata"].get("continue")
        if not token:
            return items, page["metadata"].get("resourceVersion", "")


def make_lister(*, api_client: Any, node_name: str) -> Lister:
    import kubernetes

    custom = kubernetes.client.CustomObjectsApi(api_client)
    core = kubernetes.client.CoreV1Api(api_client)

    def list_everything() -> FullList:
        policies = {}
        for kind in PolicyKind:
            items, rv = pages(
                custom.list_cluster_custom_object, group=GROUP, version=VERSION, plural=kind.plural
            )
            for item in items:  # list items may omit kind; the store needs it
                item.setdefault("kind", kind.value)  # type: ignore[attr-defined]
            policies[kind] = (items, rv)
        pods = pages(core.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={node_name}")
        # A list by name (not a GET): a missing Node is an empty list, not an error, and the
        # list's resourceVersion orders it against the watch's events like the others.
        nodes, nodes_rv = pages(core.list_node, field_selector=f"metadata.name={node_name}")
        node = nodes[0] if nodes else None
        return FullList(policies=policies, pods=pods, node=(node, nodes_rv))

    async def lister() -> FullList:
        return await asyncio.to_thread(list_everything)

    return lister
