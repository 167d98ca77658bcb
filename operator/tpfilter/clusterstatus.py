"""``tpfilter status --cluster``: every policy's state across the cluster, as written.

``tpfilter status`` on a node answers "what does this node hold"; a user asking "where
does my policy not work, and why" needs the cluster's answer, which the controller keeps in
each policy's ``status`` (tpfilter.aggregate). This reads that status back and never
recomputes it, so it cannot disagree with ``kubectl get tracingpolicies`` or with what the
controller decided: one view over both policy kinds, with the not-Ready nodes and their
reasons that ``kubectl get`` leaves to ``-o yaml``. A policy with no status (no controller
running, or not reached yet) or a status of an older generation says so, instead of
showing zeros or stale figures as current.

The view (:func:`summarize`, :func:`format_table`, :meth:`PolicyView.to_json`) is pure
and unit-tested; only :func:`fetch` talks to the API server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tpfilter.models import GROUP, VERSION, PolicyKind

NO_STATUS = "(no status)"


@dataclass(frozen=True, slots=True)
class Condition:
    status: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class NotReadyNode:
    node: str
    state: str
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class PolicyView:
    """One policy's ``status`` as the controller wrote it (``None``: not written)."""

    kind: str
    namespace: str | None
    name: str
    generation: int
    observed_generation: int | None
    accepted: Condition | None
    ready: Condition | None
    ready_nodes: int | None
    total_nodes: int | None
    pods: int | None
    reason: str | None
    not_ready_count: int
    nodes: tuple[NotReadyNode, ...]

    @property
    def has_status(self) -> bool:
        return self.observed_generation is not None

    @property
    def behind(self) -> bool:
        """The status is of an older spec: the controller has not caught up yet."""
        return self.has_status and self.observed_generation != self.generation

    def to_json(self) -> dict[str, Any]:
        """The same fields, named as in the policy's status."""
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "generation": self.generation,
            "observedGeneration": self.observed_generation,
            "accepted": _condition_json(self.accepted),
            "ready": _condition_json(self.ready),
            "readyNodes": self.ready_nodes,
            "totalNodes": self.total_nodes,
            "pods": self.pods,
            "reason": self.reason,
            "notReadyNodes": self.not_ready_count,
            "nodes": [
                {"node": n.node, "state": n.state, "reason": n.reason, "message": n.message}
                for n in self.nodes
            ],
        }


def _condition_json(condition: Condition | None) -> dict[str, str] | None:
    if condition is None:
        return None
    return {"status": condition.status, "reason": condition.reason, "message": condition.message}


def summarize(policy: Mapping[str, Any]) -> PolicyView:
    """A policy object (with ``kind``) -> what its status says, nothing computed."""
    metadata = policy.get("metadata") or {}
    status = policy.get("status") or {}
    conditions = {str(c.get("type")): c for c in status.get("conditions") or ()}
    nodes = tuple(
        NotReadyNode(
            str(n.get("node", "")),
            str(n.get("state", "")),
            str(n.get("reason", "")),
            str(n.get("message", "")),
        )
        for n in status.get("nodes") or ()
    )
    return PolicyView(
        kind=str(policy.get("kind", "")),
        namespace=metadata.get("namespace"),
        name=str(metadata.get("name", "")),
        generation=int(metadata.get("generation") or 0),
        observed_generation=_int(status.get("observedGeneration")),
        accepted=_condition(conditions.get("Accepted")),
        ready=_condition(conditions.get("Ready")),
        ready_nodes=_int(status.get("readyNodes")),
        total_nodes=_int(status.get("totalNodes")),
        pods=_int(status.get("pods")),
        reason=status.get("reason"),
        not_ready_count=_int(status.get("notReadyNodes")) or len(nodes),
        nodes=nodes,
    )


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _condition(condition: Mapping[str, Any] | None) -> Condition | None:
    if condition is None:
        return None
    return Condition(
        str(condition.get("status", "Unknown")),
        str(condition.get("reason", "")),
        str(condition.get("message", "")),
    )


def sort_key(view: PolicyView) -> tuple[str, str, str]:
    return view.kind, view.namespace or "", view.name


HEADER = ("KIND", "NAMESPACE/NAME", "ACCEPTED", "READY", "READY/NODES", "PODS", "REASON")


def format_table(views: Sequence[PolicyView]) -> str:
    """A row per policy; under it, why it is not Ready where it is not."""
    if not views:
        return "no TracingPolicy or TracingPolicyNamespaced in the cluster"
    rows = [HEADER, *(_row(v) for v in views)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = [_aligned(HEADER, widths)]
    for view, row in zip(views, rows[1:], strict=True):
        lines.append(_aligned(row, widths))
        lines.extend(f"  {detail}" for detail in _details(view))
    missing = sum(not v.has_status for v in views)
    if missing:
        lines.append(
            f"{missing} of {len(views)} policies have no status yet: "
            "is `tpfilter controller` running?"
        )
    return "\n".join(lines)


def _aligned(row: Sequence[str], widths: Sequence[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()


def _row(view: PolicyView) -> tuple[str, ...]:
    name = f"{view.namespace}/{view.name}" if view.namespace else view.name
    if not view.has_status:
        return (view.kind, name, "-", "-", "-", "-", NO_STATUS)
    return (
        view.kind,
        name,
        view.accepted.status if view.accepted else "-",
        view.ready.status if view.ready else "-",
        f"{_text(view.ready_nodes)}/{_text(view.total_nodes)}",
        _text(view.pods),
        view.reason or "-",
    )


def _text(value: int | None) -> str:
    return "-" if value is None else str(value)


def _details(view: PolicyView) -> Iterable[str]:
    if view.behind:
        yield (
            f"status of generation {view.observed_generation}, the spec is at "
            f"{view.generation}: the controller has not caught up"
        )
    if view.accepted and view.accepted.status != "True":
        yield _explained("not accepted", view.accepted.reason, view.accepted.message)
    for node in view.nodes:
        yield _explained(f"{node.node}: {node.state}", node.reason, node.message)
    unlisted = view.not_ready_count - len(view.nodes)
    if unlisted > 0:
        yield f"and {unlisted} more nodes not Ready (the status lists at most --max-listed-nodes)"


def _explained(what: str, reason: str, message: str) -> str:
    return what + (f" ({reason})" if reason else "") + (f": {message}" if message else "")


def format_json(views: Sequence[PolicyView]) -> str:
    return json.dumps({"policies": [v.to_json() for v in views]}, indent=2)


def fetch(api_client: Any) -> list[Mapping[str, Any]]:
    """Every TracingPolicy and TracingPolicyNamespaced (all namespaces), paged."""
    import kubernetes

    from tpfilter.kube import pages

    custom = kubernetes.client.CustomObjectsApi(api_client)
    policies: list[Mapping[str, Any]] = []
    for kind in PolicyKind:
        items, _ = pages(
            custom.list_cluster_custom_object, group=GROUP, version=VERSION, plural=kind.plural
        )
        policies.extend({**item, "kind": kind.value} for item in items)
    return policies


def collect(api_client: Any) -> list[PolicyView]:
    return sorted((summarize(p) for p in fetch(api_client)), key=sort_key)


def show(*, kubeconfig: str | None, as_json: bool) -> int:
    """``tpfilter status --cluster``: 0 when read, 2 without API access, 1 on API errors."""
    import kubernetes
    import urllib3

    from tpfilter.kube import load_api_client

    try:
        api_client = load_api_client(kubeconfig)
    except kubernetes.config.ConfigException as exc:
        print(f"tpfilter status --cluster: no API access: {exc}", file=sys.stderr)
        return 2
    try:
        views = collect(api_client)
    except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError) as exc:
        print(f"tpfilter status --cluster: cannot list the policies: {exc}", file=sys.stderr)
        return 1
    print(format_json(views) if as_json else format_table(views))
    return 0
