"""Node reports -> one policy's status, pure (the controller's whole decision).

Each node's agent reports its own state of every policy it knows (tpfilter.nodereport).
For one policy, a node is:

* **Skipped**: its entry says the nodeSelector does not match, at the policy's current
  generation. Not counted in ``totalNodes`` (the policy does not apply there);
* **Stale**: the node's last sign of life (its Lease's renewal, or its report's write
  time) is older than ``stale_after`` (its agent stopped, or cannot reach the API
  server): whatever it said last may no longer be true;
* **Pending**: it has no entry for the policy yet (``NotReported``), or its entry is for
  an older generation (``OldGeneration``: a spec change rolling through the nodes);
* otherwise what its entry says: Ready, Pending, Unsupported or Error.

``totalNodes`` counts the nodes where the policy applies, ``readyNodes`` those where it
is Ready, ``pods`` the selected pods over all of them. ``nodes`` lists the nodes where it
is not Ready, sorted, at most ``max_listed`` (``notReadyNodes`` counts them all), so a
policy object stays small at any cluster size.

Conditions (Kubernetes conventions, tpfilter.conditions):

* **Accepted**: tpfilter's programs implement the spec (tpfilter.accept; no kernel);
* **Ready**: applies on at least one node and is Ready on every node where it applies;
* **Degraded**: some node where it applies has an Error, cannot run it (Unsupported) or
  is Stale. A rollout in progress (Pending) is not Ready, but not Degraded either.

The reason of a not-Ready policy is that of the worst state among its nodes, in the order
Error, Unsupported, Stale, Pending.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from tpfilter.accept import Verdict
from tpfilter.conditions import Wanted, merge

READY, PENDING, UNSUPPORTED, SKIPPED, ERROR, STALE = (
    "Ready",
    "Pending",
    "Unsupported",
    "Skipped",
    "Error",
    "Stale",
)
# Worst first: the state that names a not-Ready policy's reason.
SEVERITY: Final = (ERROR, UNSUPPORTED, STALE, PENDING)
DEGRADING: Final = frozenset({ERROR, UNSUPPORTED, STALE})
REASONS: Final = {
    ERROR: "NodeErrors",
    UNSUPPORTED: "UnsupportedOnNodes",
    STALE: "NodesStale",
    PENDING: "Pending",
}
MESSAGE_NODES: Final = 3  # nodes named in a condition's message


@dataclass(frozen=True, slots=True)
class Seen:
    """What the controller keeps of one report entry: only what aggregation reads.

    At 1,000 nodes x 1,000 policies the controller holds 10^6 of these; a slotted object
    of five fields is a fraction of the entry's JSON dict (names, hooks, counts).
    """

    state: str
    reason: str = ""
    message: str = ""
    generation: int = 0
    pods: int = 0


def seen(entry: Mapping[str, Any]) -> Seen:
    return Seen(
        str(entry.get("state", PENDING)),
        sys.intern(str(entry.get("reason", ""))),
        str(entry.get("message", "")),
        int(entry.get("generation") or 0),
        int(entry.get("pods") or 0),
    )


@dataclass(frozen=True, slots=True)
class NodeReport:
    """One node's report as the controller keeps it."""

    node: str
    heartbeat: float  # epoch seconds of its last sign of life (Lease renewal or report write)
    entries: Mapping[str, Seen] = field(default_factory=dict)  # by policy UID


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    uid: str
    generation: int
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class NodeState:
    node: str
    state: str
    reason: str = ""
    message: str = ""
    generation: int = 0
    pods: int = 0


def node_state(
    policy: PolicyFacts, report: NodeReport, *, now: float, stale_after: float
) -> NodeState:
    entry = report.entries.get(policy.uid)
    generation = entry.generation if entry else 0
    current = entry is not None and generation >= policy.generation
    if current and entry is not None and entry.state == SKIPPED:
        return NodeState(report.node, SKIPPED, entry.reason, "", generation)
    if now - report.heartbeat > stale_after:
        # The time, not the age: the message must not change while nothing does, or every
        # recomputation (a controller restart) would rewrite the status.
        since = datetime.fromtimestamp(report.heartbeat, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        message = (
            f"no sign of life from the node's agent since {since} (timeout {stale_after:.0f}s)"
        )
        return NodeState(report.node, STALE, "NodeStale", message, generation)
    if entry is None:
        return NodeState(report.node, PENDING, "NotReported", "the node has not reported it yet")
    if not current:
        message = f"the node applies generation {generation}, not {policy.generation}"
        return NodeState(report.node, PENDING, "OldGeneration", message, generation)
    return NodeState(report.node, entry.state, entry.reason, entry.message, generation, entry.pods)


def aggregate(
    policy: PolicyFacts,
    reports: Iterable[NodeReport],
    *,
    previous: Mapping[str, Any] | None,
    now: float,
    now_text: str,
    stale_after: float,
    max_listed: int = 20,
) -> dict[str, Any]:
    """The policy's ``status``; ``previous`` is the status it has now (transition times)."""
    states = [node_state(policy, r, now=now, stale_after=stale_after) for r in reports]
    applying = [s for s in states if s.state != SKIPPED]
    not_ready = sorted((s for s in applying if s.state != READY), key=lambda s: s.node)
    ready = len(applying) - len(not_ready)
    conditions = _conditions(policy, applying, not_ready)
    status: dict[str, Any] = {
        "observedGeneration": policy.generation,
        "conditions": merge(
            (previous or {}).get("conditions") or (),
            conditions,
            generation=policy.generation,
            now=now_text,
        ),
        "readyNodes": ready,
        "totalNodes": len(applying),
        "skippedNodes": len(states) - len(applying),
        "notReadyNodes": len(not_ready),
        "pods": sum(s.pods for s in applying),
        "reason": conditions[1].reason,
        "nodes": [_listed(s) for s in not_ready[:max_listed]],
    }
    return status


def _listed(state: NodeState) -> dict[str, Any]:
    item: dict[str, Any] = {"node": state.node, "state": state.state}
    if state.reason:
        item["reason"] = state.reason
    if state.message:
        item["message"] = state.message
    item["observedGeneration"] = state.generation
    return item


def _worst(not_ready: Iterable[NodeState]) -> str:
    present = {s.state for s in not_ready}
    return next((s for s in SEVERITY if s in present), PENDING)


def _describe(nodes: list[NodeState], total: int) -> str:
    named = "; ".join(
        f"{s.node}: {s.state}" + (f" ({s.message})" if s.message else "")
        for s in nodes[:MESSAGE_NODES]
    )
    more = f"; and {len(nodes) - MESSAGE_NODES} more" if len(nodes) > MESSAGE_NODES else ""
    return f"{len(nodes)} of {total} nodes not Ready: {named}{more}"


def _conditions(
    policy: PolicyFacts, applying: list[NodeState], not_ready: list[NodeState]
) -> list[Wanted]:
    verdict = policy.verdict
    accepted = Wanted(
        "Accepted", "True" if verdict.accepted else "False", verdict.reason, verdict.message
    )
    if not applying:
        ready = Wanted("Ready", "False", "NoNodes", "no node where the policy applies reports")
    elif not not_ready:
        ready = Wanted("Ready", "True", "AllNodesReady", f"Ready on all {len(applying)} nodes")
    else:
        worst = _worst(not_ready)
        ready = Wanted("Ready", "False", REASONS[worst], _describe(not_ready, len(applying)))
    degrading = [s for s in not_ready if s.state in DEGRADING]
    if degrading:
        worst = _worst(degrading)
        degraded = Wanted("Degraded", "True", REASONS[worst], _describe(degrading, len(applying)))
    else:
        degraded = Wanted("Degraded", "False", "AsExpected", "")
    return [accepted, ready, degraded]
