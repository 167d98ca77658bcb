"""The agent's liveness signal: a small Lease per node, renewed every few seconds.

The node report is written on change only (tpfilter.coalesce); a stopped agent writes
nothing, and nothing would tell it from an agent with nothing to say. Rewriting the
report as a heartbeat would cost its whole size (hundreds of KB at 1,000 policies) per
node and interval, which is why the kubelet moved its own heartbeat from the Node object
to a Lease (KEP-589). So does the agent: a ``coordination.k8s.io`` Lease named after its
node, labelled ``tpfilter.io/node-lease``, in the agent's namespace, merge-patched with
a new ``renewTime`` (a few hundred bytes). The controller lists these Leases and shows a
node whose Lease is older than its timeout as Stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Final

from tpfilter.leader import micro_time

log = logging.getLogger(__name__)

LABEL: Final = "tpfilter.io/node-lease"


def lease_body(node: str, namespace: str, now: float, interval: float) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": namespace, "labels": {LABEL: "true"}},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": max(1, round(4 * interval)),
            "renewTime": micro_time(now),
        },
    }


class NodeLease:
    def __init__(
        self,
        *,
        api_client: Any,
        node_name: str,
        namespace: str,
        interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import kubernetes

        self._api: Any = kubernetes.client.CoordinationV1Api(api_client)
        self._node, self._namespace, self._interval = node_name, namespace, interval
        self._clock = clock
        self.renewals = 0

    async def run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.renew)
            except Exception as exc:  # never stops the agent; the node shows Stale
                log.warning("node lease %s/%s not renewed: %s", self._namespace, self._node, exc)
            await asyncio.sleep(self._interval)

    def renew(self) -> None:
        body = lease_body(self._node, self._namespace, self._clock(), self._interval)
        try:
            self._api.patch_namespaced_lease(self._node, self._namespace, body)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            self._api.create_namespaced_lease(self._namespace, body)
        self.renewals += 1
