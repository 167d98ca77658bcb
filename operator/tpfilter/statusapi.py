"""The controller's API calls (blocking, official client): lists, status patches, Events.

Policy status goes through the ``/status`` subresource with a JSON merge patch: the
controller sends the whole status it computed (``None`` for keys to drop), so no
read-modify-write and no resourceVersion are needed; it is the only writer of status.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from tpfilter.controller import PolicyRef
from tpfilter.kube import pages
from tpfilter.models import GROUP, VERSION, PolicyKind
from tpfilter.nodelease import LABEL
from tpfilter.reporter import GROUP as REPORT_GROUP
from tpfilter.reporter import PLURAL as REPORT_PLURAL
from tpfilter.reporter import VERSION as REPORT_VERSION
from tpfilter.reporter import from_rfc3339
from tpfilter.reportsource import Gone

COMPONENT = "tpfilter-controller"


class KubeStatusApi:
    def __init__(self, api_client: Any, lease_namespace: str = "default") -> None:
        import kubernetes

        self._custom: Any = kubernetes.client.CustomObjectsApi(api_client)
        self._core: Any = kubernetes.client.CoreV1Api(api_client)
        self._coordination: Any = kubernetes.client.CoordinationV1Api(api_client)
        self._lease_namespace = lease_namespace

    def node_leases(self) -> dict[str, float]:
        """Node name -> renewTime of its agent's Lease (tpfilter.nodelease)."""
        items, _ = pages(
            self._coordination.list_namespaced_lease,
            namespace=self._lease_namespace,
            label_selector=f"{LABEL}=true",
        )
        renewed = {}
        for lease in items:
            text = (lease.get("spec") or {}).get("renewTime")
            if text:
                renewed[str(lease["metadata"]["name"])] = from_rfc3339(str(text))
        return renewed

    def list_page(self, what: str, token: str | None) -> tuple[list[Mapping[str, Any]], str | None]:
        """One page of one policy kind (its kind name)."""
        response = self._custom.list_cluster_custom_object(
            GROUP,
            VERSION,
            PolicyKind(what).plural,
            limit=500,
            _continue=token,
            _preload_content=False,
        )
        page = json.loads(response.data)
        items: list[dict[str, Any]] = page.get("items") or []
        for item in items:  # list items may omit kind; the controller needs it
            item.setdefault("kind", what)
        return list(items), page["metadata"].get("continue") or None

    def patch_status(self, ref: PolicyRef, status: Mapping[str, Any]) -> None:
        body = {"status": dict(status)}
        if ref.kind is PolicyKind.NAMESPACED:
            self._custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ref.namespace, ref.kind.plural, ref.name, body
            )
        else:
            self._custom.patch_cluster_custom_object_status(
                GROUP, VERSION, ref.kind.plural, ref.name, body
            )

    def post_event(self, ref: PolicyRef, warning: bool, reason: str, message: str) -> None:
        namespace = ref.namespace or "default"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "metadata": {"name": f"{ref.name}.{secrets.token_hex(8)}", "namespace": namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": ref.kind.value,
                "name": ref.name,
                "namespace": ref.namespace,
                "uid": ref.uid,
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        self._core.create_namespaced_event(namespace, body)

    def node_names(self) -> set[str]:
        items, _ = pages(self._core.list_node)
        return {str(n["metadata"]["name"]) for n in items}

    def delete_report(self, name: str) -> None:
        self._custom.delete_cluster_custom_object(REPORT_GROUP, REPORT_VERSION, REPORT_PLURAL, name)


class KubeReportWatch:
    """The report source's list pages and watches (``tpfilter.reportsource``), blocking."""

    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self._kubernetes = kubernetes
        self._custom: Any = kubernetes.client.CustomObjectsApi(api_client)

    def list_page(
        self, limit: int, token: str | None
    ) -> tuple[list[Mapping[str, Any]], str | None, str]:
        try:
            response = self._custom.list_cluster_custom_object(
                REPORT_GROUP,
                REPORT_VERSION,
                REPORT_PLURAL,
                limit=limit,
                _continue=token,
                _preload_content=False,
            )
        except Exception as exc:
            if getattr(exc, "status", None) == 410:  # the continue token expired
                raise Gone(str(exc)) from exc
            raise
        page = json.loads(response.data)
        meta = page["metadata"]
        return list(page.get("items") or []), meta.get("continue") or None, meta["resourceVersion"]

    def watch(self, resource_version: str, timeout: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        stream = self._kubernetes.watch.Watch().stream(
            self._custom.list_cluster_custom_object,
            REPORT_GROUP,
            REPORT_VERSION,
            REPORT_PLURAL,
            resource_version=resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=timeout + 30,
        )
        try:
            for event in stream:
                yield str(event["type"]), event["object"]
        except Exception as exc:
            if getattr(exc, "status", None) == 410:
                raise Gone(str(exc)) from exc
            raise
