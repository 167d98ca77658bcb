"""``tpfilter status --cluster``'s view (tpfilter.clusterstatus), on statuses the
controller's own aggregation computes (tpfilter.aggregate), never on hand-written ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tpfilter.accept import Verdict
from tpfilter.aggregate import NodeReport, PolicyFacts, aggregate, seen
from tpfilter.cli import main
from tpfilter.clusterstatus import format_json, format_table, sort_key, summarize

NOW = 1000.0
OK = Verdict(True, "Accepted", "")


def policy(
    name: str,
    *reports: NodeReport,
    kind: str = "TracingPolicy",
    namespace: str | None = None,
    generation: int = 2,
    status_generation: int | None = None,
    verdict: Verdict = OK,
    max_listed: int = 20,
) -> dict[str, Any]:
    """A policy object as the API returns it, with the status the controller would write
    for it (``status_generation=0``: no status at all)."""
    metadata: dict[str, Any] = {"name": name, "generation": generation}
    if namespace:
        metadata["namespace"] = namespace
    obj: dict[str, Any] = {"kind": kind, "metadata": metadata, "spec": {}}
    observed = generation if status_generation is None else status_generation
    if observed:
        facts = PolicyFacts(uid="u1", generation=observed, verdict=verdict)
        obj["status"] = aggregate(
            facts,
            reports,
            previous=None,
            now=NOW,
            now_text="T1",
            stale_after=30.0,
            max_listed=max_listed,
        )
    return obj


def node(name: str, state: str = "Ready", heartbeat: float = NOW, **entry: Any) -> NodeReport:
    return NodeReport(name, heartbeat, {"u1": seen({"state": state, "generation": 2, **entry})})


def table_rows(*objects: dict[str, Any]) -> list[list[str]]:
    views = sorted((summarize(o) for o in objects), key=sort_key)
    return [line.split() for line in format_table(views).splitlines()]


def test_ready_everywhere() -> None:
    view = summarize(policy("web", node("a", pods=2), node("b", pods=1)))
    assert (view.ready_nodes, view.total_nodes, view.pods) == (2, 2, 3)
    assert view.reason == "AllNodesReady"
    assert view.accepted is not None and view.accepted.status == "True"
    assert view.ready is not None and view.ready.status == "True"
    assert view.nodes == () and not view.behind
    assert format_table([view]).splitlines() == [
        "KIND           NAMESPACE/NAME  ACCEPTED  READY  READY/NODES  PODS  REASON",
        "TracingPolicy  web             True      True   2/2          3     AllNodesReady",
    ]


def test_not_ready_nodes_with_their_reasons() -> None:
    obj = policy(
        "kprobe",
        node("a", "Unsupported", reason="Unsupported", message="no kprobes on this kernel"),
        node("b", pods=3),
        node("c", heartbeat=NOW - 100, pods=1),
    )
    lines = format_table([summarize(obj)]).splitlines()
    row = ["TracingPolicy", "kprobe", "True", "False", "1/3", "3", "UnsupportedOnNodes"]
    assert lines[1].split() == row
    assert lines[2:] == [
        "  a: Unsupported (Unsupported): no kprobes on this kernel",
        "  c: Stale (NodeStale): no sign of life from the node's agent since "
        "1970-01-01T00:15:00Z (timeout 30s)",
    ]


def test_namespaced_and_order() -> None:
    rows = table_rows(
        policy("z", node("a")),
        policy("b", node("a"), kind="TracingPolicyNamespaced", namespace="team-2"),
        policy("a", node("a"), kind="TracingPolicyNamespaced", namespace="team-2"),
        policy("x", node("a"), kind="TracingPolicyNamespaced", namespace="team-1"),
    )
    assert [r[:2] for r in rows[1:]] == [
        ["TracingPolicy", "z"],
        ["TracingPolicyNamespaced", "team-1/x"],
        ["TracingPolicyNamespaced", "team-2/a"],
        ["TracingPolicyNamespaced", "team-2/b"],
    ]


def test_no_status_is_said_not_shown_as_zeros() -> None:
    text = format_table([summarize(policy("new", status_generation=0))])
    row = text.splitlines()[1]
    assert row.split()[:6] == ["TracingPolicy", "new", "-", "-", "-", "-"]
    assert row.endswith("  (no status)")
    assert text.splitlines()[-1] == (
        "1 of 1 policies have no status yet: is `tpfilter controller` running?"
    )
    assert summarize(policy("new", status_generation=0)).to_json()["readyNodes"] is None


def test_status_of_an_older_generation_is_flagged() -> None:
    view = summarize(policy("roll", node("a"), generation=3, status_generation=2))
    assert view.behind
    assert format_table([view]).splitlines()[2] == (
        "  status of generation 2, the spec is at 3: the controller has not caught up"
    )


def test_not_accepted_says_why() -> None:
    verdict = Verdict(False, "Unsupported", "spec.tracepoints[0]: Override on a tracepoint")
    lines = format_table([summarize(policy("bad", node("a"), verdict=verdict))]).splitlines()
    assert lines[1].split()[2] == "False"
    assert lines[2] == "  not accepted (Unsupported): spec.tracepoints[0]: Override on a tracepoint"


def test_a_bounded_node_list_says_how_many_more() -> None:
    reports = [node(f"n{i}", "Error", reason="MapError", message="full") for i in range(4)]
    view = summarize(policy("big", *reports, max_listed=1))
    assert (view.not_ready_count, [n.node for n in view.nodes]) == (4, ["n0"])
    assert format_table([view]).splitlines()[2:] == [
        "  n0: Error (MapError): full",
        "  and 3 more nodes not Ready (the status lists at most --max-listed-nodes)",
    ]


def test_json_has_the_same_fields_named_as_in_the_status() -> None:
    obj = policy(
        "web",
        node("a", pods=2),
        node("b", "Pending", reason="ContainersPending", message="1 container"),
        kind="TracingPolicyNamespaced",
        namespace="team",
    )
    [out] = json.loads(format_json([summarize(obj)]))["policies"]
    assert out == {
        "kind": "TracingPolicyNamespaced",
        "namespace": "team",
        "name": "web",
        "generation": 2,
        "observedGeneration": 2,
        "accepted": {"status": "True", "reason": "Accepted", "message": ""},
        "ready": {
            "status": "False",
            "reason": "Pending",
            "message": "1 of 2 nodes not Ready: b: Pending (1 container)",
        },
        "readyNodes": 1,
        "totalNodes": 2,
        "pods": 2,
        "reason": "Pending",
        "notReadyNodes": 1,
        "nodes": [
            {
                "node": "b",
                "state": "Pending",
                "reason": "ContainersPending",
                "message": "1 container",
            }
        ],
    }


def test_no_policies() -> None:
    assert format_table([]) == "no TracingPolicy or TracingPolicyNamespaced in the cluster"
    assert json.loads(format_json([])) == {"policies": []}


def test_cli_without_api_access_fails_plainly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--cluster", "--kubeconfig", str(tmp_path / "missing")]) == 2
    assert "tpfilter status --cluster: no API access" in capsys.readouterr().err
