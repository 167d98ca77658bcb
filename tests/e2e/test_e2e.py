"""tpfilter as users run it: ``helm install`` of the chart, real pods started by a real
kubelet and runtime, policies applied with kubectl (conftest.py: the two backends). The
maps are read on the node (not through the agent), the cgroup IDs from the node's cgroupfs
by container ID, independently of the agent's own path code.

The tests run in order: the last two roll the agent over with ``helm upgrade`` and remove
it with ``helm uninstall``.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tpfilter.bpfmaps import LEVELS_PIN_NAME, OUTER_PIN_NAME
from tpfilter.indexmap import INDEX_PIN_NAME
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.e2ecluster import ROOT, E2ECluster, maps_from_status

SEED = ROOT / "examples" / "seed-policy.yaml"
TRACEPOINT_SEED = ROOT / "examples" / "seed-policy-tracepoint.yaml"
SEED_NAME, TRACEPOINT_NAME = "policy-1", "policy-1-tracepoint"
SEED_KEY, TRACEPOINT_KEY = f"TracingPolicy/{SEED_NAME}", f"TracingPolicy/{TRACEPOINT_NAME}"
KILLED = 128 + 9  # what kubectl exec reports for a process that died of SIGKILL
COUNTED_FROM_STATUS = "{.status.readyNodes}/{.status.totalNodes}/{.status.pods}/{.status.reason}"


def held(cluster: E2ECluster, key: str) -> frozenset[int]:
    return cluster.maps().get(key, frozenset())


def converge(cluster: E2ECluster, key: str, want: frozenset[int], what: str) -> None:
    seen: list[dict[str, frozenset[int]]] = [{}]

    def reached() -> bool:
        seen[0] = cluster.maps()
        return seen[0].get(key, frozenset()) == want

    try:
        eventually(reached, timeout=60, interval=0.2, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; want {key}: {set(want)}; maps: {seen[0]}") from None


def status_row(status: dict[str, Any], name: str) -> dict[str, Any] | None:
    rows = [p for p in status["policies"] if p["name"] == name]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def test_agent_runs_from_the_chart_and_finds_the_runtimes_cgroups(cluster: E2ECluster) -> None:
    nodes = cluster.nodes()
    ds = cluster.agent_daemonset()
    st = ds["status"]
    assert st["desiredNumberScheduled"] == len(nodes)
    assert st["numberReady"] == st["updatedNumberScheduled"] == st["desiredNumberScheduled"]
    # No flag names the cgroups (the chart's defaults): each agent found its runtime's
    # layout (real node: containerd's cgroupfs driver under the hybrid hierarchy's cgroup2
    # mount; kind: the systemd driver's slices) by itself.
    args = ds["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith(("--cgroup-root", "--kubepods-root"))]
    pods = cluster.agent_pods()
    assert sorted(p["spec"]["nodeName"] for p in pods) == nodes
    for pod in pods:
        name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True", name
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, name
        logs = cluster.kubectl("logs", "-n", cluster.release_ns, name, "-c", "agent")
        assert "kubepods roots under" in logs, logs[-2000:]
        cluster.agent_exec("tpfilter", "probe", node=node)  # exit 0, or kubectl fails
        # The CLI inside each agent's pod reads the same pins (no policy applied yet).
        status = _synced_status(cluster, node)
        assert status["node"] == node
        assert status["policies"] == []
    assert "policy_filter_maps" in (cluster.host_listdir(cluster.pin_dir) or []), (
        "the pins are the node's"
    )


def _synced_status(cluster: E2ECluster, node: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [{}]

    def synced() -> bool:
        found[0] = cluster.agent_status(node)
        return bool(found[0]["synced"])

    eventually(synced, timeout=90, interval=1, what=f"the agent on {node} synced")
    return found[0]


@pytest.mark.backends(
    "realnode", reason="a property of the real-node fixture (tpfilter_dev.realnode), not of kind"
)
def test_a_second_node_is_refused_and_leaves_the_first_alone(cluster: E2ECluster) -> None:
    from tpfilter_dev.realcluster import Cluster
    from tpfilter_dev.realnode import NODE_IP, RealNode, RealNodeError

    assert isinstance(cluster, Cluster)
    with pytest.raises(RealNodeError, match="another real node runs"):
        RealNode(images=()).__enter__()
    assert (
        NODE_IP
        in subprocess.run(
            ["ip", "-4", "addr", "show", "dev", "lo"], check=True, capture_output=True, text=True
        ).stdout
    )
    cluster.node.wait_node_ready(timeout=30)


def expected_seed_status(cluster: E2ECluster, pods: int) -> str:
    """The controller's sum of the nodes' reports for the kprobe seed, as
    COUNTED_FROM_STATUS reads it. Without kprobes (this machine's kernel) no node can run
    it: Unsupported on every node, 0 Ready. With them (a kind host may have them), Ready
    wherever the agent loaded its programs."""
    nodes = cluster.nodes()
    if not cluster.host_has_kprobes():
        return f"0/{len(nodes)}/{pods}/UnsupportedOnNodes"
    loaded = 0
    for node in nodes:
        row = status_row(cluster.agent_status(node), SEED_NAME)
        loaded += row is not None and row["program"] not in (None, "unsupported")
    reason = "AllNodesReady" if loaded == len(nodes) else "UnsupportedOnNodes"
    return f"{loaded}/{len(nodes)}/{pods}/{reason}"


def wait_status(cluster: E2ECluster, name: str, expected: Callable[[], str], what: str) -> None:
    """Until the policy's status (COUNTED_FROM_STATUS) is what ``expected`` says."""
    seen = [("", "")]

    def reached() -> bool:
        want = expected()
        got = cluster.kubectl(
            "get", "tracingpolicy", name, "-o", f"jsonpath={COUNTED_FROM_STATUS}"
        )  # fmt: skip
        seen[0] = (got, want)
        return got == want

    try:
        eventually(reached, timeout=90, interval=1, what=what)
    except AssertionError as e:
        raise AssertionError(f"{e}; status {seen[0][0]!r}, want {seen[0][1]!r}") from None


def test_seed_policy_maps_exactly_the_selected_containers(cluster: E2ECluster, ns: str) -> None:
    cluster.pod(ns, "ubuntu", {"app": "ubuntu"})
    cluster.pod(ns, "ubuntu-2", {"app": "ubuntu"})
    cluster.pod(ns, "nginx", {"app": "nginx"})
    cluster.kubectl("apply", "-f", str(SEED))
    try:
        want = frozenset({cluster.cgroup_id(ns, "ubuntu"), cluster.cgroup_id(ns, "ubuntu-2")})
        converge(cluster, SEED_KEY, want, "the seed's map holds the two ubuntu containers")
        assert cluster.cgroup_id(ns, "nginx") not in held(cluster, SEED_KEY)
        # The chart's controller sums the nodes' reports up in the policy's status, and
        # kubectl get says so (readyNodes/totalNodes/pods/reason).
        wait_status(
            cluster,
            SEED_NAME,
            lambda: expected_seed_status(cluster, pods=2),
            "the seed's status: the nodes' reports summed up",
        )
        # The agent's own view, from inside its pod, agrees with the node's; so does the
        # kernel's, read by bpftool (independently of tpfilter's map code).
        row = status_row(cluster.agent_status(), SEED_NAME)
        assert row is not None
        assert (row["kind"], row["namespace"], row["error"]) == ("TracingPolicy", None, None)
        assert frozenset(row["cgroup_ids"]) == want
        assert isinstance(row["map_id"], int)
        assert cluster.map_keys(row["map_id"]) == want
        # All of it: every slot the agent reports is what the node's pins hold.
        assert maps_from_status(cluster.agent_status()) == cluster.maps()
        # The pods run on one node: every other node's agent knows the policy, holds nothing.
        for node in cluster.nodes():
            if node != cluster.workload_node:
                elsewhere = eventually(
                    lambda node=node: status_row(cluster.agent_status(node), SEED_NAME),
                    timeout=60,
                    what=f"{SEED_NAME} known to the agent on {node}",
                )
                assert elsewhere["cgroups"] == 0, elsewhere

        # Relabel into the selector; delete a selected pod.
        cluster.kubectl("label", "pod", "nginx", "-n", ns, "app=ubuntu", "--overwrite")
        cluster.kubectl("delete", "pod", "ubuntu-2", "-n", ns, "--wait=true")
        want = frozenset({cluster.cgroup_id(ns, "ubuntu"), cluster.cgroup_id(ns, "nginx")})
        converge(cluster, SEED_KEY, want, "relabelled pod in, deleted pod out")
    finally:
        cluster.kubectl("delete", "-f", str(SEED), "--wait=true")
    # Deleting the policy frees its map: gone from the pins, from the agent's status, and
    # from the kernel (no fd or pin holds the inner map any more).
    eventually(lambda: SEED_KEY not in cluster.maps(), timeout=60, what="seed's map unpinned")
    eventually(
        lambda: status_row(cluster.agent_status(), SEED_NAME) is None,
        timeout=60,
        what="the seed gone from tpfilter status",
    )
    map_id = row["map_id"]
    eventually(
        lambda: cluster.map_keys(map_id) is None,
        timeout=60,
        what=f"inner map {map_id} freed by the kernel",
    )


def test_restarted_container_is_mapped_by_its_new_cgroup(cluster: E2ECluster, ns: str) -> None:
    cluster.pod(ns, "ubuntu", {"app": "ubuntu"})
    cluster.kubectl("apply", "-f", str(SEED))
    try:
        first_id, first = cluster.container_id(ns, "ubuntu"), cluster.cgroup_id(ns, "ubuntu")
        assert first_id is not None
        converge(cluster, SEED_KEY, frozenset({first}), "the first container mapped")
        # The runtime kills the container; kubelet starts a new one (new ID, new cgroup).
        cluster.kill_container(first_id)
        eventually(
            lambda: (
                cluster.container_id(ns, "ubuntu") != first_id
                and cluster.get_pod(ns, "ubuntu")["status"]["containerStatuses"][0]["ready"]
            ),
            timeout=90,
            interval=0.3,
            what="the restarted container running",
        )
        second = cluster.cgroup_id(ns, "ubuntu")
        assert second != first
        converge(cluster, SEED_KEY, frozenset({second}), "only the new container mapped")
    finally:
        cluster.kubectl("delete", "-f", str(SEED), "--wait=true")


def test_tracepoint_policy_kills_denied_binaries_in_selected_containers_only(
    cluster: E2ECluster, ns: str
) -> None:
    cluster.pod(ns, "ubuntu", {"app": "ubuntu"})
    cluster.pod(ns, "nginx", {"app": "nginx"})
    cluster.kubectl("apply", "-f", str(TRACEPOINT_SEED))
    try:
        want = frozenset({cluster.cgroup_id(ns, "ubuntu")})
        converge(cluster, TRACEPOINT_KEY, want, "mapped")
        eventually(
            lambda: cluster.exec_status(ns, "ubuntu", "/usr/bin/true") == KILLED,
            timeout=60,
            interval=0.5,
            what="kubectl exec /usr/bin/true killed in the selected pod",
        )
        assert cluster.exec_status(ns, "ubuntu", "/usr/bin/sleep", "0") == 0
        assert cluster.exec_status(ns, "ubuntu", "/usr/bin/cat", "/etc/passwd") == 0
        assert cluster.exec_status(ns, "nginx", "/usr/bin/true") == 0
        # Processes the container itself starts (no kubectl exec): its shell runs the
        # denied binary until one is killed. Its first exec may come before the agent has
        # mapped the new container's cgroup (the window README's benchmark measures), so
        # the loop, not the entrypoint, is what must be killed; a killed entrypoint (the
        # map already there) counts as enforced as well.
        loop = ("i=0; while [ $i -lt 600 ]; do /usr/bin/true || { echo killed; exit 0; }; "
                "/usr/bin/sleep 0.1; i=$((i+1)); done; echo never killed; exit 1")  # fmt: skip
        cluster.pod(ns, "runs-true", {"app": "ubuntu"}, command=("/bin/sh", "-c", loop),
                    restart="Never", wait=False)  # fmt: skip

        def terminated() -> dict[str, object] | None:
            statuses = cluster.get_pod(ns, "runs-true").get("status", {}).get("containerStatuses")
            state = statuses[0]["state"] if statuses else {}
            return state.get("terminated")  # type: ignore[no-any-return]

        done = eventually(terminated, timeout=120, interval=0.3, what="the looping container ended")
        logs = cluster.kubectl("logs", "-n", ns, "runs-true")
        # The shell may also report the SIGKILLed child ("Killed", on stderr): the two
        # streams interleave in any order in the container's log.
        killed_in_loop = done["exitCode"] == 0 and "killed" in logs.splitlines()
        assert killed_in_loop or done["exitCode"] == KILLED, (done, logs)
    finally:
        cluster.kubectl("delete", "-f", str(TRACEPOINT_SEED), "--wait=true")
    eventually(
        lambda: cluster.exec_status(ns, "ubuntu", "/usr/bin/true") == 0,
        timeout=60,
        interval=0.5,
        what="deleting the policy lifts it",
    )


def test_cluster_status_from_inside_the_agent_and_controller_pods(
    cluster: E2ECluster, ns: str
) -> None:
    """``tpfilter status --cluster`` in the cluster, as README shows it: the CLI in the
    agent's pod (and in the controller's) reads the policies' status with the pod's own
    service account, through the chart's RBAC (read-only on the policies)."""
    cluster.pod(ns, "ubuntu", {"app": "ubuntu"})
    cluster.kubectl("apply", "-f", str(TRACEPOINT_SEED))
    try:
        n = len(cluster.nodes())
        wait_status(
            cluster,
            TRACEPOINT_NAME,
            lambda: f"{n}/{n}/1/AllNodesReady",
            "the tracepoint seed Ready on every node",
        )
        generation = int(
            cluster.kubectl(
                "get", "tracingpolicy", TRACEPOINT_NAME, "-o", "jsonpath={.metadata.generation}"
            )
        )
        for pod, container in (
            (cluster.agent_pod(), "agent"),
            (cluster.controller_pod(), "controller"),
        ):
            table = cluster.pod_exec(pod, container, "tpfilter", "status", "--cluster")
            rows = [line.split() for line in table.splitlines() if TRACEPOINT_NAME in line.split()]
            assert rows == [
                ["TracingPolicy", TRACEPOINT_NAME, "True", "True", f"{n}/{n}", "1", "AllNodesReady"]
            ], f"{container}: {table}"
            data = json.loads(
                cluster.pod_exec(pod, container, "tpfilter", "status", "--cluster", "--json")
            )
            (view,) = [p for p in data["policies"] if p["name"] == TRACEPOINT_NAME]
            assert view["kind"] == "TracingPolicy" and view["namespace"] is None
            assert view["observedGeneration"] == view["generation"] == generation
            assert view["accepted"]["status"] == view["ready"]["status"] == "True", view
            assert (view["readyNodes"], view["totalNodes"], view["pods"]) == (n, n, 1), view
            assert (view["reason"], view["notReadyNodes"], view["nodes"]) == (
                "AllNodesReady", 0, []
            ), view  # fmt: skip
    finally:
        cluster.kubectl("delete", "-f", str(TRACEPOINT_SEED), "--wait=true")


def test_helm_upgrade_rolls_the_agent_with_no_gap_in_the_maps(cluster: E2ECluster, ns: str) -> None:
    cluster.pod(ns, "ubuntu", {"app": "ubuntu"})
    cluster.kubectl("apply", "-f", str(SEED))
    try:
        want = frozenset({cluster.cgroup_id(ns, "ubuntu")})
        converge(cluster, SEED_KEY, want, "mapped before the upgrade")
        before = cluster.agent_pod()
        gaps: list[frozenset[int]] = []
        reads = [0]
        stop = threading.Event()

        def watch() -> None:  # the selected container must be mapped at every moment
            while not stop.is_set():
                now = held(cluster, SEED_KEY)
                if not want <= now:
                    gaps.append(now)
                reads[0] += 1

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            cluster.helm_upgrade("--set", "resyncSeconds=120")
        finally:
            stop.set()
            watcher.join()
        after = cluster.agent_pod()
        assert after != before, "the changed value rolled the agent pod"
        args = cluster.agent_daemonset()["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "--resync-seconds=120" in args
        assert reads[0] > 0 and gaps == []
        # The new agent is in charge: a new selected pod gets mapped by it.
        cluster.pod(ns, "late", {"app": "ubuntu"})
        converge(
            cluster, SEED_KEY, want | {cluster.cgroup_id(ns, "late")}, "new agent maps a new pod"
        )
    finally:
        cluster.kubectl("delete", "-f", str(SEED), "--wait=true")


def test_helm_uninstall_leaves_only_the_pins_and_state(cluster: E2ECluster, ns: str) -> None:
    cluster.pod(ns, "ubuntu", {"app": "ubuntu"})
    cluster.kubectl("apply", "-f", str(SEED))
    converge(cluster, SEED_KEY, frozenset({cluster.cgroup_id(ns, "ubuntu")}), "mapped")
    cluster.helm_uninstall()
    eventually(
        lambda: not cluster.kubectl(
            "get", "pods", "-n", cluster.release_ns, "-l",
            f"app.kubernetes.io/instance={cluster.release}", "-o", "name",
        ).strip(),
        timeout=60,
        what="agent and controller pods gone",
    )  # fmt: skip
    # Left on the node by design (README, "Install into a cluster"): the pinned maps and
    # the state file, so that an agent installed again adopts them and BPF programs keep
    # filtering; they go with a reboot, or by hand (rm -r of the pin and state directories).
    assert "policy_filter_maps" in (cluster.host_listdir(cluster.pin_dir) or [])
    assert "policies.json" in (cluster.host_listdir(cluster.state_dir) or [])
    assert SEED_KEY in cluster.maps()
    # The CRDs stay too (Helm never deletes CRDs), and with them the policies.
    assert SEED_NAME in cluster.kubectl("get", "tracingpolicies", "-o", "name")
    cluster.kubectl("delete", "-f", str(SEED))
    leftover = cluster.host_listdir(cluster.pin_dir)
    assert leftover == sorted([OUTER_PIN_NAME, LEVELS_PIN_NAME, INDEX_PIN_NAME]), leftover
