"""Kopf handlers: a few lines each, and all they do is feed the agent's store.

The agent must never write to Pods or to the shared policy objects, so there are only
event handlers (no create/update/delete handlers: those keep state in annotations and add
finalizers) and nothing is posted as k8s events about the watched objects. Pods are watched
with a server-side field selector, so each agent receives only its own node's pods, and
Nodes with ``metadata.name=<this node>``, so it receives only its own Node (for its labels).
"""

from __future__ import annotations

from typing import Any

import kopf

from tpfilter.agent import Agent
from tpfilter.models import GROUP, VERSION, PolicyKind


def build_registry(agent: Agent) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.watching.field_selectors["v1", "pods"] = f"spec.nodeName={agent.node_name}"
        settings.watching.field_selectors["v1", "nodes"] = f"metadata.name={agent.node_name}"
        settings.posting.enabled = False  # no k8s Events about the objects we only read
        settings.watching.server_timeout = 300  # re-open watches regularly
        settings.watching.client_timeout = 330

    @kopf.on.event(GROUP, VERSION, PolicyKind.CLUSTER.plural, registry=registry)
    @kopf.on.event(GROUP, VERSION, PolicyKind.NAMESPACED.plural, registry=registry)
    def policy_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        agent.store.policy_event(type, body)

    @kopf.on.event("v1", "pods", registry=registry)
    def pod_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        agent.store.pod_event(type, body)

    @kopf.on.event("v1", "nodes", registry=registry)
    def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        agent.store.node_event(type, body)

    @kopf.on.probe(id="agent", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        return agent.health.summary()

    return registry
