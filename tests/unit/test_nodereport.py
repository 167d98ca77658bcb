"""A node's report entries and when they are written (tpfilter.nodereport, tpfilter.coalesce)."""

from __future__ import annotations

import pytest

from tpfilter.coalesce import WriteRates, Written, next_write
from tpfilter.engine import PolicyStatus
from tpfilter.models import PolicyKey, PolicyKind
from tpfilter.nodereport import build_entries, summary, without_counts
from tpfilter.programs import ProgramStatus
from tpfilter.store import InvalidPolicy


def status(uid: str, **kw: object) -> PolicyStatus:
    key = PolicyKey(kind=PolicyKind.CLUSTER, namespace=None, name=f"p-{uid}")
    fields: dict[str, object] = {"policy_id": 1, "cgroups": 2, "pending": 0, "generation": 3}
    fields.update(kw)
    return PolicyStatus(key=key, uid=uid, **fields)  # type: ignore[arg-type]


def loaded(uid: str, state: str = "loaded", *reasons: str) -> ProgramStatus:
    hooks = ("sched/sched_process_exec",) if state == "loaded" else ()
    return ProgramStatus(uid, f"p-{uid}", 1, state, reasons, hooks)  # type: ignore[arg-type]


def test_states_and_their_reasons() -> None:
    entries = build_entries(
        [
            status("a", pods=1),
            status("b", pending=2),
            status("c"),
            status("d", skipped="nodeSelector does not match"),
            status("e", error="map full"),
            status("f"),
        ],
        {
            "a": loaded("a"),
            "b": loaded("b"),
            "c": loaded("c", "unsupported", "spec.kprobes: no kprobes"),
            "e": loaded("e"),
        },
        [InvalidPolicy("TracingPolicy", None, "g", "spec.x: bad", uid="g", generation=1)],
        programs_enabled=True,
    )
    got = {e["uid"]: (e["state"], e.get("reason")) for e in entries}
    assert got == {
        "a": ("Ready", None),
        "b": ("Pending", "ContainersPending"),
        "c": ("Unsupported", "Unsupported"),
        "d": ("Skipped", "NodeSelectorMismatch"),
        "e": ("Error", "MapError"),
        "f": ("Pending", "ProgramsPending"),
        "g": ("Error", "Invalid"),
    }
    a = entries[0]
    assert a == {
        "uid": "a",
        "kind": "TracingPolicy",
        "name": "p-a",
        "generation": 3,
        "state": "Ready",
        "cgroups": 2,
        "pods": 1,
        "hooks": [{"hook": "sched/sched_process_exec", "program": "tracepoint"}],
    }
    assert "cgroups" not in entries[3]  # skipped: holds nothing
    assert [e["uid"] for e in entries] == sorted(got)
    assert summary(entries) == {
        "ready": 1,
        "pending": 2,
        "unsupported": 1,
        "skipped": 1,
        "error": 2,
    }


def test_without_programs_a_converged_map_is_ready() -> None:
    [entry] = build_entries([status("a")], {}, [], programs_enabled=False)
    assert entry["state"] == "Ready"


def test_long_messages_are_bounded() -> None:
    [entry] = build_entries([status("a", error="x" * 10_000)], {}, [], programs_enabled=False)
    assert len(entry["message"]) == 512


RATES = WriteRates(min_interval=5, counts_interval=60, refresh_interval=30)
BASE = [{"uid": "a", "state": "Ready", "cgroups": 1, "pods": 1}]


def test_first_write_is_immediate() -> None:
    assert next_write(BASE, None, RATES) == 0.0


def test_unchanged_waits_for_the_refresh() -> None:
    assert next_write(list(BASE), Written(BASE, at=100.0), RATES) == 130.0


def test_a_state_change_waits_min_interval() -> None:
    changed = [{**BASE[0], "state": "Error", "reason": "MapError"}]
    assert next_write(changed, Written(BASE, at=100.0), RATES) == 105.0


def test_a_count_change_waits_counts_interval_but_not_past_the_refresh() -> None:
    churn = [{**BASE[0], "cgroups": 7, "pods": 3}]
    assert without_counts(churn) == without_counts(BASE)
    assert next_write(churn, Written(BASE, at=100.0), RATES) == 130.0
    slow_refresh = WriteRates(min_interval=5, counts_interval=60, refresh_interval=600)
    assert next_write(churn, Written(BASE, at=100.0), slow_refresh) == 160.0


def test_added_policy_is_significant() -> None:
    more = [*BASE, {"uid": "b", "state": "Pending"}]
    assert next_write(more, Written(BASE, at=100.0), RATES) == 105.0


def test_rates_are_checked() -> None:
    with pytest.raises(ValueError):
        WriteRates(min_interval=10, counts_interval=5)
    with pytest.raises(ValueError):
        WriteRates(refresh_interval=0)
