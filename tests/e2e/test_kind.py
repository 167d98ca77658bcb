"""End to end on kind: the chart's DaemonSet runs everywhere, and a policy's map on a node
holds exactly the cgroups of the pods it selects there, and goes when the policy goes.

The policy is the shared seed policy (podSelector app=ubuntu), applied unchanged. No
Tetragon runs here: the suite checks tpfilter's half of the contract, the pinned maps.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kindkube import Agents, Doc, Kube, eventually, policy_rows

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
UBUNTU_IMAGE = os.environ.get("TPFILTER_E2E_UBUNTU_IMAGE", "ubuntu:24.04")


def seed_policy_path() -> Path:
    for path in (
        ROOT / "examples" / "seed-policy.yaml",
        ROOT.parent / "shared" / "examples" / "seed-policy.yaml",
    ):
        if path.is_file():
            return path
    raise FileNotFoundError("seed-policy.yaml: neither examples/ nor ../shared/examples/")


@dataclass(frozen=True)
class Workload:
    node: str
    namespace: str
    selected: str  # labelled app=ubuntu
    other: str  # no labels


@pytest.fixture(scope="module")
def workload(kube: Kube, test_namespace: str) -> Workload:
    """Two ubuntu pods on one (worker) node: one labelled app=ubuntu, one not."""
    nodes = kube.json("get", "nodes")["items"]
    workers = [
        n["metadata"]["name"]
        for n in nodes
        if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
    ]
    node = (workers or [nodes[0]["metadata"]["name"]])[0]

    def pod(name: str, labels: dict[str, str]) -> Doc:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": test_namespace, "labels": labels},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node},
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "ubuntu",
                        "image": UBUNTU_IMAGE,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sleep", "infinity"],
                    }
                ],
            },
        }

    kube.apply([pod("ubuntu-selected", {"app": "ubuntu"}), pod("ubuntu-other", {})])
    kube.run(
        "-n",
        test_namespace,
        "wait",
        "--for=condition=Ready",
        "pod/ubuntu-selected",
        "pod/ubuntu-other",
        "--timeout=180s",
        timeout=200,
    )
    return Workload(node, test_namespace, "ubuntu-selected", "ubuntu-other")


@pytest.fixture
def seed_policy(kube: Kube) -> Iterator[Doc]:
    path = seed_policy_path()
    doc = yaml.safe_load(path.read_text())
    kube.run("apply", "-f", str(path))
    yield doc
    kube.run("delete", "-f", str(path), "--ignore-not-found", check=False)


def container_cgroup_id(kube: Kube, namespace: str, pod: str) -> int | None:
    """The container's cgroup ID, from inside it: with a private cgroup namespace (cgroup
    v2, the runtimes' default) /sys/fs/cgroup is the container's own cgroup, and on cgroup
    v2 a cgroup's ID is its directory's inode number. None on cgroup v1 hosts."""
    ns = ("-n", namespace, "exec", pod, "--")
    fs = kube.run(*ns, "stat", "-f", "-c", "%T", "/sys/fs/cgroup").stdout.strip()
    if fs != "cgroup2fs":
        return None
    return int(kube.run(*ns, "stat", "-c", "%i", "/sys/fs/cgroup").stdout.strip())


def converged_row(agents: Agents, node: str, name: str) -> Doc | None:
    rows = policy_rows(agents.status(node), name)
    return rows[0] if len(rows) == 1 else None


def test_daemonset_ready_on_every_node(kube: Kube, agents: Agents) -> None:
    nodes = sorted(n["metadata"]["name"] for n in kube.json("get", "nodes")["items"])
    ds = agents.daemonset()
    status = ds["status"]
    assert status["desiredNumberScheduled"] == len(nodes)
    assert status["numberReady"] == status["desiredNumberScheduled"]
    assert status.get("updatedNumberScheduled") == status["desiredNumberScheduled"]

    pods = agents.pods()
    assert sorted(p["spec"]["nodeName"] for p in pods) == nodes
    for pod in pods:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True", pod["metadata"]["name"]
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0

    for node in nodes:
        probe = agents.exec(node, "tpfilter", "probe", check=False)
        assert probe.returncode == 0, f"{node}: tpfilter probe\n{probe.stdout}{probe.stderr}"
        synced = eventually(
            functools.partial(agents.status, node),
            lambda s: bool(s["synced"]),
            what=f"agent on {node} synced",
        )
        assert synced["node"] == node


def test_policy_holds_exactly_the_selected_pods_cgroup(
    kube: Kube, agents: Agents, workload: Workload, seed_policy: Doc
) -> None:
    name = seed_policy["metadata"]["name"]
    row = eventually(
        lambda: converged_row(agents, workload.node, name),
        lambda r: r is not None and r["cgroups"] == 1 and r["pending"] == 0,
        what=f"{name} on {workload.node} holds one cgroup",
    )
    assert row is not None
    assert row["kind"] == "TracingPolicy"
    assert row["namespace"] is None
    assert row["error"] is None
    assert row["map_id"]
    assert row["cgroups"] == 1  # ubuntu-selected's one container; ubuntu-other not counted

    # What the kernel holds, read by bpftool (independent of tpfilter's own map code), is
    # what tpfilter status reports, and it is the selected container's cgroup.
    held = agents.inner_map_keys(workload.node, row["map_id"])
    if "cgroup_ids" in row:
        assert held == set(row["cgroup_ids"])
    selected = container_cgroup_id(kube, workload.namespace, workload.selected)
    other = container_cgroup_id(kube, workload.namespace, workload.other)
    if selected is not None and other is not None:
        assert held == {selected}
        assert other not in held
    else:
        assert len(held) == 1

    # The selected pod runs on one node only: everywhere else the policy selects nothing.
    for pod in agents.pods():
        node = pod["spec"]["nodeName"]
        if node == workload.node:
            continue
        elsewhere = eventually(
            functools.partial(converged_row, agents, node, name),
            lambda r: r is not None,
            what=f"{name} known to the agent on {node}",
        )
        assert elsewhere is not None and elsewhere["cgroups"] == 0, elsewhere


def test_deleting_the_policy_frees_its_map(
    kube: Kube, agents: Agents, workload: Workload, seed_policy: Doc
) -> None:
    name = seed_policy["metadata"]["name"]
    row = eventually(
        lambda: converged_row(agents, workload.node, name),
        lambda r: r is not None and r["cgroups"] == 1 and bool(r["map_id"]),
        what=f"{name} on {workload.node} holds one cgroup",
    )
    assert row is not None
    map_id = row["map_id"]
    assert agents.map_exists(workload.node, map_id)

    kube.run("delete", "tracingpolicy", name, "--wait=true")

    eventually(
        lambda: agents.status(workload.node),
        lambda s: not policy_rows(s, name) and map_id not in {p["map_id"] for p in s["policies"]},
        what=f"{name} gone from tpfilter status on {workload.node}",
    )
    eventually(
        lambda: agents.map_exists(workload.node, map_id),
        lambda exists: not exists,
        what=f"inner map {map_id} freed by the kernel",
    )
