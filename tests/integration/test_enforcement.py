"""Issue 4's end to end: a policy applied with kubectl kills the denied binary in a selected
pod on this node and leaves everything else alone. Real API server, real agent process,
real BPF programs on sched_process_exec, real processes in real container cgroups."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Cluster, Node, kubectl
from harness import eventually, kernel_view

from tpfilter.models import PolicyKind
from tpfilter_dev.kubelet import Container

pytestmark = pytest.mark.apiserver

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed-policy-tracepoint.yaml"


def run_in(container: Container, *argv: str) -> int:
    """Exec ``argv`` as a process of ``container`` (in its cgroup), as `kubectl exec` would."""
    assert container.cgroup is not None
    procs = container.cgroup / "cgroup.procs"
    done = subprocess.run(
        list(argv),
        preexec_fn=lambda: procs.write_text(str(os.getpid())),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=10,
    )
    return done.returncode


def test_seed_tracepoint_policy_kills_denied_binaries_only_in_selected_pods(
    node: Node, cluster: Cluster
) -> None:
    node.agent.start()
    ns = cluster.namespace()
    ubuntu = node.kubelet.create_pod(ns, "ubuntu", labels={"app": "ubuntu"}).containers["main"]
    nginx = node.kubelet.create_pod(ns, "nginx", labels={"app": "nginx"}).containers["main"]
    kubectl(cluster.plane, "apply", "-f", str(EXAMPLE))
    cluster._policies.append((PolicyKind.CLUSTER, None, "policy-1-tracepoint"))
    eventually(
        lambda: (
            kernel_view(node.pin_dir, node.state_dir).get("TracingPolicy/policy-1-tracepoint")
            == frozenset({ubuntu.cgroup_id})
        ),
        what="the policy's filter map holds the ubuntu container",
    )

    # The programs are synced right after the maps: wait until the denied exec is killed.
    eventually(
        lambda: run_in(ubuntu, "/usr/bin/true") == -9,
        timeout=20,
        what="exec of /usr/bin/true in the selected pod is SIGKILLed",
    )
    assert run_in(ubuntu, "/usr/bin/sleep", "0") == 0  # on the allow list
    assert run_in(ubuntu, "/usr/bin/cat", "/dev/null") == 0
    assert run_in(nginx, "/usr/bin/true") == 0  # a pod the policy does not select
    assert subprocess.run(["/usr/bin/true"]).returncode == 0  # the host

    events = [json.loads(line) for line in node.agent.events_path.read_text().splitlines()]
    kills = [e for e in events if e["action"] == "sigkill" and e["binary"] == "/usr/bin/true"]
    assert kills, events[-5:]
    assert (kills[-1]["namespace"], kills[-1]["pod"], kills[-1]["container"]) == (
        ns,
        "ubuntu",
        "main",
    )
    assert kills[-1]["policy"].endswith("policy-1-tracepoint")

    status = json.loads((node.state_dir / "status.json").read_text())
    (program,) = [
        p
        for p in status["programs"]
        if p.get("name") == "policy-1-tracepoint" or "policy-1-tracepoint" in json.dumps(p)
    ]
    assert "loaded" in json.dumps(program)

    kubectl(cluster.plane, "delete", "-f", str(EXAMPLE))
    eventually(
        lambda: run_in(ubuntu, "/usr/bin/true") == 0,
        timeout=20,
        what="enforcement stops once the policy is deleted",
    )


def test_seed_kprobe_policy_is_reported_unsupported_here_not_crashed_on(
    node: Node, cluster: Cluster
) -> None:
    """This node has no kprobes: the seed applies, its filter map exists, and its program
    status says why it cannot run here; nothing else is affected."""
    node.agent.start()
    ns = cluster.namespace()
    ubuntu = node.kubelet.create_pod(ns, "ubuntu", labels={"app": "ubuntu"}).containers["main"]
    seed = Path(__file__).resolve().parents[2] / "examples" / "seed-policy.yaml"
    kubectl(cluster.plane, "apply", "-f", str(seed))
    cluster._policies.append((PolicyKind.CLUSTER, None, "policy-1"))

    def reported() -> str:
        status = json.loads((node.state_dir / "status.json").read_text())
        return json.dumps([p for p in status.get("programs", []) if "policy-1" in json.dumps(p)])

    text = eventually(
        lambda: "unsupported" in reported() and reported(),
        timeout=30,
        what="the seed's program status",
    )
    assert "kprobe" in text
    assert run_in(ubuntu, "/usr/bin/true") == 0
