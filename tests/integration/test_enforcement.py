"""Issue 4's end to end: a policy applied with kubectl kills the denied binary in a selected
pod on this node and leaves everything else alone. Real API server, real agent process,
real BPF programs on sched_process_exec, real processes in real container cgroups."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import eventually, kernel_view

from conftest import Cluster, Node, kubectl
from tpfilter.models import PolicyKind
from tpfilter_dev import contain
from tpfilter_dev.kubelet import Container, Pod

pytestmark = pytest.mark.apiserver

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed-policy-tracepoint.yaml"


def as_runtime(container: Container, *argv: str) -> int:
    """Exec ``argv`` as the container runtime (or a host tool) would in the container: in
    its cgroup, but from the node's PID namespace. Returns the exit status."""
    assert container.cgroup is not None
    command = contain.argv(container.cgroup, argv, pid_ns="node")
    return subprocess.run(command, stdin=subprocess.DEVNULL, timeout=10).returncode


def test_seed_tracepoint_policy_kills_denied_binaries_only_in_selected_pods(
    node: Node, cluster: Cluster
) -> None:
    node.agent.start()
    ns = cluster.namespace()
    kubelet = node.kubelet
    ubuntu_pod = kubelet.create_pod(ns, "ubuntu", labels={"app": "ubuntu"})
    nginx_pod = kubelet.create_pod(ns, "nginx", labels={"app": "nginx"})
    ubuntu = ubuntu_pod.containers["main"]

    def run_in(pod: Pod, *argv: str) -> int:  # kubectl exec
        return kubelet.exec(pod, "main", *argv)

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
        lambda: run_in(ubuntu_pod, "/usr/bin/true") == -9,
        timeout=20,
        what="exec of /usr/bin/true in the selected pod is SIGKILLed",
    )
    assert run_in(ubuntu_pod, "/usr/bin/sleep", "0") == 0  # on the allow list
    assert run_in(ubuntu_pod, "/usr/bin/cat", "/dev/null") == 0
    assert run_in(nginx_pod, "/usr/bin/true") == 0  # a pod the policy does not select
    assert subprocess.run(["/usr/bin/true"]).returncode == 0  # the host
    # The runtime entering the selected container's cgroup is not the container (issue 5
    # part 3): same cgroup, but the node's PID namespace.
    assert as_runtime(ubuntu, "/usr/bin/true") == 0

    def true_killed() -> list[dict[str, Any]]:
        """The agent's events of /usr/bin/true killed (its event thread polls the ring
        buffer on its own schedule: the kill's event may not be written yet)."""
        lines = node.agent.events_path.read_text().splitlines()
        events = [json.loads(line) for line in lines]
        return [e for e in events if e["action"] == "sigkill" and e["binary"] == "/usr/bin/true"]

    kills = eventually(true_killed, what="the event of the SIGKILLed /usr/bin/true")
    assert (kills[-1]["namespace"], kills[-1]["pod"], kills[-1]["container"]) == (
        ns,
        "ubuntu",
        "main",
    )
    assert kills[-1]["policy"].endswith("policy-1-tracepoint")

    def program_status() -> list[str]:
        """The policy's program status (the agent writes status.json after it synced the
        programs: a kill can be seen before the file says so)."""
        status = json.loads((node.state_dir / "status.json").read_text())
        return [
            json.dumps(p)
            for p in status["programs"]
            if p.get("name") == "policy-1-tracepoint" or "policy-1-tracepoint" in json.dumps(p)
        ]

    eventually(
        lambda: len(program := program_status()) == 1 and "loaded" in program[0],
        what="status.json: the policy's program loaded",
    )

    kubectl(cluster.plane, "delete", "-f", str(EXAMPLE))
    eventually(
        lambda: run_in(ubuntu_pod, "/usr/bin/true") == 0,
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
    ubuntu = node.kubelet.create_pod(ns, "ubuntu", labels={"app": "ubuntu"})
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
    assert node.kubelet.exec(ubuntu, "main", "/usr/bin/true") == 0


def test_hostpid_pods_are_enforced_in_the_nodes_pid_namespace(node: Node, cluster: Cluster) -> None:
    """A hostPID pod's processes share the node's PID namespace with the runtime's; the
    agent records its containers (pod spec.hostPID) so they are still its own."""
    node.agent.start()
    ns = cluster.namespace()
    ubuntu = node.kubelet.create_pod(ns, "ubuntu", labels={"app": "ubuntu"}, host_pid=True)
    kubectl(cluster.plane, "apply", "-f", str(EXAMPLE))
    cluster._policies.append((PolicyKind.CLUSTER, None, "policy-1-tracepoint"))
    eventually(
        lambda: node.kubelet.exec(ubuntu, "main", "/usr/bin/true") == -9,
        timeout=30,
        what="exec of /usr/bin/true in the selected hostPID pod is SIGKILLed",
    )
    assert node.kubelet.exec(ubuntu, "main", "/usr/bin/sleep", "0") == 0
