"""``tpfilter status --cluster`` on the real API server: what the controller wrote, shown.

Two agents are two nodes, ``tpfilter controller`` runs as its own process, and the command
runs as a user runs it: a separate process with a kubeconfig. The expectations are the
concrete figures the scenario makes (nodes, pods, reasons, the node that went Stale).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import eventually

from conftest import Cluster, MakeController, MakeNode
from tpfilter.models import PolicyKind
from tpfilter_dev.agentproc import TPFILTER

pytestmark = pytest.mark.apiserver

TP, TPN = PolicyKind.CLUSTER, PolicyKind.NAMESPACED
ACCEPTED = "tpfilter's programs implement every part of the spec"


def cluster_status(kubeconfig: Path, *extra: str, env_kubeconfig: bool = False) -> str:
    """``tpfilter status --cluster``, the kubeconfig given by flag or by $KUBECONFIG."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    argv = [str(TPFILTER), "status", "--cluster", *extra]
    if env_kubeconfig:
        env["KUBECONFIG"] = str(kubeconfig)
    else:
        argv += ["--kubeconfig", str(kubeconfig)]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def by_name(out: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(out)["policies"]}


def rows(out: str) -> dict[str, list[str]]:
    """Table rows by NAMESPACE/NAME, each followed by its detail lines."""
    found: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines()[1:]:
        if line.startswith("  "):
            current.append(line)
        else:
            current = [line]
            found[line.split()[1]] = current
    return found


def test_cluster_view_shows_ready_then_the_stale_node(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    kubeconfig = cluster.plane.kubeconfig
    make_controller(stale_after=8.0)
    a, b = make_node(), make_node()
    ns = cluster.namespace()
    a.kubelet.create_pod(ns, "web-a", labels={"app": "web"})
    b.kubelet.create_pod(ns, "web-b", labels={"app": "web"})
    b.kubelet.create_pod(ns, "db-b", labels={"app": "db"})
    web = {"podSelector": {"matchLabels": {"app": "web"}}, "tracepoints": []}
    generation = cluster.apply_policy(TP, "web-cs", web)["metadata"]["generation"]
    cluster.apply_policy(TPN, "all-cs", {"tracepoints": []}, namespace=ns)

    def both_ready() -> dict[str, dict[str, Any]] | None:
        policies = by_name(cluster_status(kubeconfig, "--json"))
        mine = {n: policies.get(n, {}) for n in ("web-cs", "all-cs")}
        done = all(p.get("readyNodes") == 2 and p.get("pods") for p in mine.values())
        return mine if done else None

    policies = eventually(both_ready, timeout=60, interval=0.5, what="both policies Ready")
    assert policies["web-cs"] == {
        "kind": "TracingPolicy",
        "namespace": None,
        "name": "web-cs",
        "generation": generation,
        "observedGeneration": generation,
        "accepted": {"status": "True", "reason": "Accepted", "message": ACCEPTED},
        "ready": {"status": "True", "reason": "AllNodesReady", "message": "Ready on all 2 nodes"},
        "readyNodes": 2,
        "totalNodes": 2,
        "pods": 2,
        "reason": "AllNodesReady",
        "notReadyNodes": 0,
        "nodes": [],
    }
    namespaced = policies["all-cs"]
    assert (namespaced["kind"], namespaced["namespace"]) == ("TracingPolicyNamespaced", ns)
    assert (namespaced["readyNodes"], namespaced["totalNodes"], namespaced["pods"]) == (2, 2, 3)

    table = rows(cluster_status(kubeconfig, env_kubeconfig=True))
    assert [line.split() for line in table["web-cs"]] == [
        ["TracingPolicy", "web-cs", "True", "True", "2/2", "2", "AllNodesReady"]
    ]
    assert table[f"{ns}/all-cs"][0].split()[2:] == ["True", "True", "2/2", "3", "AllNodesReady"]

    # b's agent stops: after the controller's --stale-after, b is Stale in both policies,
    # its pods no longer counted, and the command names it with the reason.
    b.agent.stop()

    def both_stale() -> dict[str, dict[str, Any]] | None:
        policies = by_name(cluster_status(kubeconfig, "--json"))
        mine = {n: policies.get(n, {}) for n in ("web-cs", "all-cs")}
        done = all(p.get("reason") == "NodesStale" for p in mine.values())
        return mine if done else None

    policies = eventually(both_stale, timeout=60, interval=0.5, what="both policies NodesStale")
    policy = policies["web-cs"]
    assert (policy["readyNodes"], policy["totalNodes"], policy["pods"]) == (1, 2, 1)
    assert policy["ready"]["status"] == "False"
    [stale] = policy["nodes"]
    assert (stale["node"], stale["state"], stale["reason"]) == (b.name, "Stale", "NodeStale")
    assert stale["message"].startswith("no sign of life from the node's agent since ")

    table = rows(cluster_status(kubeconfig))
    row, *details = table["web-cs"]
    assert row.split() == ["TracingPolicy", "web-cs", "True", "False", "1/2", "1", "NodesStale"]
    assert details == [f"  {b.name}: Stale (NodeStale): {stale['message']}"]
    row, *details = table[f"{ns}/all-cs"]
    assert row.split()[2:] == ["True", "False", "1/2", "1", "NodesStale"]
    assert [d.split(":")[0] for d in details] == [f"  {b.name}"]
