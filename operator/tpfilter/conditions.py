"""Kubernetes conditions (metav1.Condition) and their transitions, pure.

A condition's ``lastTransitionTime`` is when its *status* last changed, not when it was
last written: a reason or message that changes while the status stays keeps the old time.
That rule, and the stable order of the list, are what let the controller compare the
status it computes with the one it last wrote and skip the write when they are equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True, slots=True)
class Wanted:
    """A condition as computed now (without its transition time)."""

    type: str
    status: Status
    reason: str
    message: str = ""


def merge(
    previous: Iterable[Mapping[str, Any]],
    wanted: Sequence[Wanted],
    *,
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The conditions to write: ``wanted`` in order, each with its transition time.

    ``now`` (RFC 3339) becomes the transition time of a condition that is new or whose
    status changed; the others keep theirs.
    """
    before = {str(c.get("type")): c for c in previous}
    result = []
    for w in wanted:
        old = before.get(w.type)
        changed = old is None or old.get("status") != w.status
        result.append(
            {
                "type": w.type,
                "status": w.status,
                "reason": w.reason,
                "message": w.message,
                "observedGeneration": generation,
                "lastTransitionTime": now if changed else old["lastTransitionTime"],  # type: ignore[index]
            }
        )
    return result


def transitions(
    previous: Iterable[Mapping[str, Any]], current: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str, str, str]]:
    """(type, new status, reason, message) of every condition whose status changed."""
    before = {str(c.get("type")): c.get("status") for c in previous}
    return [
        (str(c["type"]), str(c["status"]), str(c["reason"]), str(c.get("message", "")))
        for c in current
        if before.get(str(c["type"])) != c["status"]
    ]
