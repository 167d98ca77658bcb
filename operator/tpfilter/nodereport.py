"""What one node says about every policy it knows: the body of its TracingPolicyNodeReport.

Pure: the agent's last reconcile result, its program statuses and the invalid policies in;
a list of plain JSON entries out, sorted by policy UID so that two reports with the same
content compare (and serialise) equal, which is what makes "write only on change" work.

One entry per policy, with its state on this node:

=============  =====================================================================
Ready          the filter map holds every selected container and the programs run it
Pending        containers without a cgroup yet, or programs waiting for the map's ID
Unsupported    this node cannot run a part of the policy (the reasons say which)
Skipped        the policy's nodeSelector does not match this node (no map, no programs)
Error          a map write failed, a limit was hit, or the policy could not be parsed
=============  =====================================================================

``reason`` is one CamelCase word (machine readable, as Kubernetes conditions have it);
``message`` the details, bounded so a policy with many problems cannot inflate the report.
Ready entries carry no message at all: most entries are Ready, and every byte of an entry
is paid 1,000 times per node (docs/status.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from tpfilter.engine import PolicyStatus
from tpfilter.programs import ProgramStatus
from tpfilter.store import InvalidPolicy

READY: Final = "Ready"
PENDING: Final = "Pending"
UNSUPPORTED: Final = "Unsupported"
SKIPPED: Final = "Skipped"
ERROR: Final = "Error"
STATES: Final = (READY, PENDING, UNSUPPORTED, SKIPPED, ERROR)

MESSAGE_MAX: Final = 512  # characters of one entry's message
COUNT_FIELDS: Final = ("cgroups", "pods")  # what pod churn changes: written lazily

Entry = dict[str, Any]


def _bounded(text: str) -> str:
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"


def _entry(status: PolicyStatus, program: ProgramStatus | None, programs_enabled: bool) -> Entry:
    key = status.key
    entry: Entry = {"uid": status.uid, "kind": key.kind.value, "name": key.name}
    if key.namespace:
        entry["namespace"] = key.namespace
    entry["generation"] = status.generation
    state, reason, message = _state(status, program, programs_enabled)
    entry["state"] = state
    if reason:
        entry["reason"] = reason
    if message:
        entry["message"] = _bounded(message)
    if state != SKIPPED:
        entry["cgroups"] = status.cgroups
        entry["pods"] = status.pods
    if program is not None and program.hooks:
        # The mechanism per hook: every hook of this subset runs as a tracepoint program.
        entry["hooks"] = [{"hook": hook, "program": "tracepoint"} for hook in program.hooks]
    return entry


def _state(
    status: PolicyStatus, program: ProgramStatus | None, programs_enabled: bool
) -> tuple[str, str, str]:
    if status.skipped:
        return SKIPPED, "NodeSelectorMismatch", status.skipped
    if status.error:
        return ERROR, "MapError", status.error
    if program is not None and program.state == "unsupported":
        return UNSUPPORTED, "Unsupported", "; ".join(program.reasons)
    if program is not None and program.state == "error":
        return ERROR, "ProgramError", "; ".join(program.reasons)
    if status.pending:
        waiting = f"{status.pending} selected containers have no cgroup yet"
        return PENDING, "ContainersPending", waiting
    if programs_enabled and (program is None or program.state == "pending"):
        why = "; ".join(program.reasons) if program else "programs not synced yet"
        return PENDING, "ProgramsPending", why
    return READY, "", ""


def build_entries(
    statuses: Iterable[PolicyStatus],
    programs: Mapping[str, ProgramStatus],
    invalid: Iterable[InvalidPolicy],
    *,
    programs_enabled: bool,
) -> list[Entry]:
    """One entry per policy this node knows, sorted by UID."""
    entries = [_entry(s, programs.get(s.uid), programs_enabled) for s in statuses]
    for bad in invalid:
        entry: Entry = {"uid": bad.uid, "kind": bad.kind, "name": bad.name}
        if bad.namespace:
            entry["namespace"] = bad.namespace
        entry.update(
            generation=bad.generation,
            state=ERROR,
            reason="Invalid",
            message=_bounded(bad.error),
        )
        entries.append(entry)
    return sorted(entries, key=lambda e: str(e["uid"]))


def without_counts(entries: Sequence[Entry]) -> list[Entry]:
    """The entries minus what pod churn changes (the significant part of a report)."""
    return [{k: v for k, v in e.items() if k not in COUNT_FIELDS} for e in entries]


def summary(entries: Sequence[Entry]) -> dict[str, int]:
    """Entries per state, for a human reading the report (`kubectl get`)."""
    counts = dict.fromkeys(STATES, 0)
    for entry in entries:
        counts[str(entry["state"])] = counts.get(str(entry["state"]), 0) + 1
    return {state.lower(): n for state, n in counts.items()}
