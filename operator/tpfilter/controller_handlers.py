"""Kopf handlers of ``tpfilter controller``: a few lines each, feeding the controller's caches.

Like the agent's, only event handlers: the controller never adds finalizers or annotations
to the policies; its one write to them is their status (``tpfilter.controller``). The
reports are not watched through kopf (its first list is not paginated: hundreds of MB at
scale) but by the controller's own source, ``tpfilter.reportsource``.
"""

from __future__ import annotations

from typing import Any

import kopf

from tpfilter.controller import Controller
from tpfilter.models import GROUP, VERSION, PolicyKind


def build_registry(controller: Controller) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> Any:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False  # the controller posts its own Events
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330

    @kopf.on.event(GROUP, VERSION, PolicyKind.CLUSTER.plural, registry=registry)
    @kopf.on.event(GROUP, VERSION, PolicyKind.NAMESPACED.plural, registry=registry)
    def policy_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller.policy_event(type, body)

    @kopf.on.event("v1", "nodes", registry=registry)
    def node_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        controller.node_event(type, body)

    @kopf.on.probe(id="controller", registry=registry)
    def probe(**_: Any) -> dict[str, Any]:
        return controller.summary()

    return registry
