"""Node reports -> a policy's status (tpfilter.aggregate), conditions (tpfilter.conditions)
and acceptance without a kernel (tpfilter.accept)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tpfilter.accept import Verdict, accept
from tpfilter.aggregate import NodeReport, PolicyFacts, aggregate, seen
from tpfilter.conditions import Wanted, merge, transitions

OK = Verdict(True, "Accepted", "")
POLICY = PolicyFacts(uid="u1", generation=2, verdict=OK)
NOW = 1000.0
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def report(node: str, heartbeat: float = NOW, **entries: dict[str, Any]) -> NodeReport:
    return NodeReport(node, heartbeat, {uid: seen(e) for uid, e in entries.items()})


def entry(state: str = "Ready", generation: int = 2, **kw: Any) -> dict[str, Any]:
    return {"uid": "u1", "state": state, "generation": generation, **kw}


def status(*reports: NodeReport, previous: dict[str, Any] | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = {"now": NOW, "now_text": "T1", "stale_after": 30.0, **kw}
    return aggregate(POLICY, reports, previous=previous, **args)


def conditions(s: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in s["conditions"]}


def test_ready_everywhere() -> None:
    s = status(report("a", u1=entry(pods=2)), report("b", u1=entry(pods=1)))
    assert (s["readyNodes"], s["totalNodes"], s["pods"], s["nodes"]) == (2, 2, 3, [])
    assert conditions(s) == {
        "Accepted": ("True", "Accepted"),
        "Ready": ("True", "AllNodesReady"),
        "Degraded": ("False", "AsExpected"),
    }
    assert s["reason"] == "AllNodesReady"
    assert s["observedGeneration"] == 2
    assert all(
        c["lastTransitionTime"] == "T1" and c["observedGeneration"] == 2 for c in s["conditions"]
    )


def test_unsupported_on_one_node_degrades() -> None:
    bad = entry("Unsupported", reason="Unsupported", message="spec.kprobes: no kprobes")
    s = status(report("a", u1=entry()), report("b", u1=bad))
    assert (s["readyNodes"], s["totalNodes"], s["notReadyNodes"]) == (1, 2, 1)
    assert conditions(s)["Ready"] == ("False", "UnsupportedOnNodes")
    assert conditions(s)["Degraded"] == ("True", "UnsupportedOnNodes")
    [listed] = s["nodes"]
    assert listed["node"] == "b" and listed["state"] == "Unsupported"
    ready = next(c for c in s["conditions"] if c["type"] == "Ready")
    assert "b: Unsupported (spec.kprobes: no kprobes)" in ready["message"]


def test_skipped_nodes_do_not_count() -> None:
    skip = entry("Skipped", reason="NodeSelectorMismatch")
    s = status(report("a", u1=entry()), report("b", u1=skip))
    assert (s["readyNodes"], s["totalNodes"], s["skippedNodes"]) == (1, 1, 1)
    assert conditions(s)["Ready"] == ("True", "AllNodesReady")
    only_skipped = status(report("b", u1=skip))
    assert conditions(only_skipped)["Ready"] == ("False", "NoNodes")


def test_old_generation_and_unreported_are_pending_not_degraded() -> None:
    s = status(report("a", u1=entry(generation=1)), report("b"), report("c", u1=entry()))
    assert (s["readyNodes"], s["totalNodes"]) == (1, 3)
    assert {n["node"]: n["reason"] for n in s["nodes"]} == {
        "a": "OldGeneration",
        "b": "NotReported",
    }
    assert conditions(s)["Ready"] == ("False", "Pending")
    assert conditions(s)["Degraded"] == ("False", "AsExpected")


def test_a_silent_node_is_stale() -> None:
    s = status(report("a", u1=entry()), report("b", heartbeat=NOW - 31, u1=entry()))
    assert conditions(s)["Degraded"] == ("True", "NodesStale")
    assert [n["state"] for n in s["nodes"]] == ["Stale"]
    [listed] = s["nodes"]
    assert listed["message"].startswith("no sign of life from the node's agent since 1970-")
    later = status(
        report("a", NOW + 100, u1=entry()),
        report("b", heartbeat=NOW - 31, u1=entry()),
        now=NOW + 100,
    )
    assert later["nodes"] == s["nodes"]  # nothing changed: nothing to rewrite
    fresh = status(report("b", heartbeat=NOW - 29, u1=entry()))
    assert conditions(fresh)["Ready"] == ("True", "AllNodesReady")


def test_worst_state_names_the_reason() -> None:
    s = status(
        report("a", u1=entry("Pending", reason="ContainersPending")),
        report("b", u1=entry("Error", reason="MapError", message="map full")),
        report("c", heartbeat=0, u1=entry()),
    )
    assert s["reason"] == "NodeErrors"
    assert conditions(s)["Degraded"] == ("True", "NodeErrors")


def test_listed_nodes_are_bounded_and_sorted() -> None:
    reports = [report(f"n{i:03}", u1=entry("Error", reason="MapError")) for i in range(50)]
    s = status(*reports, max_listed=5)
    assert [n["node"] for n in s["nodes"]] == [f"n{i:03}" for i in range(5)]
    assert s["notReadyNodes"] == 50
    ready = next(c for c in s["conditions"] if c["type"] == "Ready")
    assert ready["message"].endswith("and 47 more")


def test_not_accepted() -> None:
    policy = PolicyFacts("u1", 2, Verdict(False, "Unsupported", "spec.kprobes: ..."))
    s = aggregate(policy, [report("a")], previous=None, now=NOW, now_text="T", stale_after=30)
    assert conditions(s)["Accepted"] == ("False", "Unsupported")


def test_transition_time_moves_only_when_status_changes() -> None:
    first = status(report("a", u1=entry("Pending", generation=1)))
    same = status(report("a", u1=entry("Pending")), previous=first, now_text="T2")
    ready = {c["type"]: c for c in same["conditions"]}
    assert ready["Ready"]["lastTransitionTime"] == "T1"  # reason changed, status did not
    assert ready["Ready"]["reason"] == "Pending"
    done = status(report("a", u1=entry()), previous=same, now_text="T3")
    times = {c["type"]: c["lastTransitionTime"] for c in done["conditions"]}
    assert times == {"Accepted": "T1", "Ready": "T3", "Degraded": "T1"}
    assert transitions(same["conditions"], done["conditions"]) == [
        ("Ready", "True", "AllNodesReady", "Ready on all 1 nodes")
    ]
    # Recomputed from the same reports and the status just written: identical (no write).
    again = status(report("a", u1=entry()), previous=done, now_text="T4")
    assert again == done


def test_merge_keeps_wanted_order() -> None:
    merged = merge([], [Wanted("B", "True", "R"), Wanted("A", "False", "S")], generation=1, now="T")
    assert [c["type"] for c in merged] == ["B", "A"]


def test_accept_without_a_kernel() -> None:
    tracepoint = yaml.safe_load((EXAMPLES / "seed-policy-tracepoint.yaml").read_text())
    assert accept(tracepoint["spec"]).accepted
    # the seed (kprobe + Override) runs where the kernel has kprobes and BPF LSM: the nodes
    # say whether theirs do
    seed = yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text())
    assert accept(seed["spec"]).accepted
    # ... but no node runs a uprobe, or an Override on a function without an LSM hook
    verdict = accept({**seed["spec"], "uprobes": [{"path": "/bin/sh", "symbols": ["main"]}]})
    assert not verdict.accepted and verdict.reason == "Unsupported"
    assert "spec.uprobes" in verdict.message
    not_security = yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text())["spec"]
    not_security["kprobes"][0]["call"] = "do_sys_openat2"
    assert "Override on do_sys_openat2" in accept(not_security).message
    string_mask = {
        "tracepoints": [
            {
                "subsystem": "syscalls",
                "event": "sys_enter_openat",
                "args": [{"index": 6, "type": "string"}],
                "selectors": [{"matchArgs": [{"index": 6, "operator": "Mask", "values": ["1"]}]}],
            }
        ]
    }
    assert "Mask" in accept(string_mask).message
    prefix = string_mask["tracepoints"][0]["selectors"][0]["matchArgs"][0]  # type: ignore[index]
    prefix.update(operator="Prefix", values=["/etc"])
    assert accept(string_mask).accepted
    # Selectors are the filter's business, not the programs'.
    assert accept({"podSelector": {}, "nodeSelector": {}, "tracepoints": []}).accepted
