"""The kind backend of the e2e suite (tests/e2e): the chart installed by
``scripts/e2e-kind.sh`` on a kind cluster, where Docker is.

A kind node is a container of the Docker host: its host side is reached with ``docker exec``
into it (its cgroupfs, containerd's ``ctr``, a directory listing). It has no bpftool, so
the pinned maps are read by a reader pod of its own: the agent's image (which has
``tpfilter`` and bpftool), privileged, with the node's bpffs and the chart's state
directory mounted, and not the agent's pod, so that reads go on while ``helm upgrade``
rolls the agent and after ``helm uninstall``.

Never run on kind on the development machines (no Docker engine): written from kind's
conventions (a node's container is named after the node; cgroup v2 with the systemd driver,
each container in a ``cri-containerd-<id>.scope``; ``ctr`` in the node image) and from the
previous kind suite. Its code did run once against the real node, with ``docker exec``
replaced by running on that node's host and the real node's pin and state directories:
every shared test passed (reader pod, maps, cgroup IDs, ``ctr`` kill, upgrade, uninstall).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import PurePosixPath
from typing import Any

from tpfilter_dev.e2ecluster import CHART, E2ECluster, bpftool_keys, maps_from_status

READER_NS, READER = "tpfilter-e2e-reader", "node-reader"
# The chart's defaults (scripts/e2e-kind.sh sets neither pinDir nor stateDir).
PIN_DIR, STATE_DIR = PurePosixPath("/sys/fs/bpf/tpfilter"), PurePosixPath("/run/tpfilter")

# The container's cgroup2 directory inside the node: by container ID, in the node's
# cgroup2 mount (its own cgroup namespace; inode numbers are the kernel's cgroup IDs).
CGROUP_ID_SH = (
    "root=$(awk '$3 == \"cgroup2\" {print $2; exit}' /proc/mounts); "
    'find "$root" -type d -name "*$1*" -exec stat -c %i {} +'
)


class KindCluster(E2ECluster):
    backend = "kind"
    pin_dir, state_dir = PIN_DIR, STATE_DIR
    workload_pull_policy = "IfNotPresent"  # loaded into the nodes by `kind load`

    def __init__(self) -> None:
        self.kubeconfig = os.environ["TPFILTER_E2E_KUBECONFIG"]
        self.release = os.environ.get("TPFILTER_E2E_RELEASE", "tpfilter")
        self.release_ns = os.environ.get("TPFILTER_E2E_NAMESPACE", "tpfilter-system")
        self.workload_image = os.environ.get("TPFILTER_E2E_UBUNTU_IMAGE", "ubuntu:24.04")
        nodes = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
        workers = [
            n["metadata"]["name"]
            for n in nodes
            if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
        ]
        self.workload_node = (workers or [nodes[0]["metadata"]["name"]])[0]
        self._start_reader()

    # -- the node's host side ------------------------------------------------------------

    def _docker_exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", self.workload_node, *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def cgroup_id(self, ns: str, pod: str) -> int:
        cid = self.container_id(ns, pod)
        assert cid is not None, f"no container for {ns}/{pod}"
        out = self._docker_exec("sh", "-c", CGROUP_ID_SH, "sh", cid).stdout.split()
        assert len(out) == 1, f"cgroup directories of container {cid}: {out}"
        return int(out[0])

    def kill_container(self, container_id: str) -> None:
        self._docker_exec(
            "ctr", "--namespace=k8s.io", "tasks", "kill", "--signal", "SIGKILL", container_id
        )

    def host_listdir(self, path: PurePosixPath) -> list[str] | None:
        done = self._docker_exec("ls", "-A", str(path), check=False)
        return sorted(done.stdout.split()) if done.returncode == 0 else None

    def helm_upgrade(self, *values: str) -> None:
        self.helm(
            "upgrade", self.release, str(CHART), "--namespace", self.release_ns,
            "--reuse-values", "--wait", "--timeout", "240s", *values,
        )  # fmt: skip
        self.wait_agent_rolled_out()

    # -- the maps, through the reader pod ------------------------------------------------

    def _start_reader(self) -> None:
        agent = self.agent_daemonset()["spec"]["template"]["spec"]["containers"][0]
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": READER, "namespace": READER_NS},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": self.workload_node},
                "tolerations": [{"operator": "Exists"}],
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "reader",
                        "image": agent["image"],
                        "imagePullPolicy": agent.get("imagePullPolicy", "IfNotPresent"),
                        "command": ["sleep", "infinity"],
                        "securityContext": {"privileged": True},
                        "volumeMounts": [
                            {
                                "name": "bpffs",
                                "mountPath": "/sys/fs/bpf",
                                "mountPropagation": "HostToContainer",
                            },
                            {"name": "state", "mountPath": str(STATE_DIR)},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "bpffs", "hostPath": {"path": "/sys/fs/bpf"}},
                    {
                        "name": "state",
                        "hostPath": {"path": str(STATE_DIR), "type": "DirectoryOrCreate"},
                    },
                ],
            },
        }
        self.kubectl("create", "namespace", READER_NS, check=False)
        self.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
        self.kubectl(
            "wait", "-n", READER_NS, "--for=condition=Ready", f"pod/{READER}", "--timeout=180s"
        )

    def _read(self, *argv: str, check: bool = True) -> str:
        return self.kubectl("exec", "-n", READER_NS, READER, "--", *argv, check=check)

    def maps(self) -> dict[str, frozenset[int]]:
        dirs = (f"--pin-dir={PIN_DIR}", f"--state-dir={STATE_DIR}")
        return maps_from_status(json.loads(self._read("tpfilter", "status", "--json", *dirs)))

    def map_keys(self, map_id: int) -> frozenset[int] | None:
        try:
            out = self._read("bpftool", "-j", "map", "dump", "id", str(map_id))
        except AssertionError:  # kubectl exec: bpftool exited non-zero, no such map
            return None
        return bpftool_keys(out)

    def close(self) -> None:
        self.kubectl("delete", "namespace", READER_NS, "--wait=false", check=False)
