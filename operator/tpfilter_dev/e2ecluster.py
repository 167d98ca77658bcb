"""The e2e suite's view of a cluster with tpfilter installed by helm: one interface, two
backends.

The suite (tests/e2e) is written once against :class:`E2ECluster` and runs on a real
kubelet + containerd node of this machine (:class:`tpfilter_dev.realcluster.Cluster`) and
on kind where Docker is (:class:`tpfilter_dev.kindcluster.KindCluster`). What goes through
the API server (pods, policies, ``kubectl exec``, the agent's own ``tpfilter status``,
helm) is written here once; a backend only supplies what needs the node's host side,
read independently of the agent: the pinned maps, a container's cgroup ID from the node's
cgroupfs, a directory listing, killing a container through the runtime, and how to
``helm upgrade`` its install.

Test pods go to one node (:attr:`E2ECluster.workload_node`), whose maps the host-side
readers return: a policy must hold exactly the selected pods' cgroups there and nothing
on the other nodes.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from tpfilter.interfaces import HOST_MARKER
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.kubectl import run_kubectl

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tpfilter"
AGENT_LABELS = "app.kubernetes.io/component=agent"
CONTROLLER_LABELS = "app.kubernetes.io/component=controller"


class E2ECluster(ABC):
    """A cluster with the chart installed as release :attr:`release` in :attr:`release_ns`."""

    backend: str  # "realnode" or "kind": the suite's parameter id
    kubeconfig: str
    release: str
    release_ns: str
    pin_dir: PurePosixPath  # the chart's pinDir / stateDir in this install
    state_dir: PurePosixPath
    workload_image: str  # has /bin/sh, /usr/bin/{sleep,true,cat}
    workload_pull_policy: str
    workload_node: str  # where the tests' pods run

    # -- host side: read on the node, not through the agent ---------------------------------

    @abstractmethod
    def maps(self) -> dict[str, frozenset[int]]:
        """{policy key ("Kind/name", "Kind/ns/name"): cgroup IDs} held in the pinned maps
        of the workload node."""

    @abstractmethod
    def map_keys(self, map_id: int) -> frozenset[int] | None:
        """The keys of a BPF map of the workload node as bpftool reads them (host-order
        u64), None when the kernel has no map of that ID."""

    @abstractmethod
    def cgroup_id(self, ns: str, pod: str) -> int:
        """The pod's (first) container's cgroup ID, from the node's cgroupfs by container
        ID: the inode of its cgroup2 directory."""

    @abstractmethod
    def kill_container(self, container_id: str) -> None:
        """SIGKILL a container through the node's runtime (kubelet then restarts it)."""

    @abstractmethod
    def host_listdir(self, path: PurePosixPath) -> list[str] | None:
        """Names in a directory of the workload node, None when it does not exist."""

    @abstractmethod
    def helm_upgrade(self, *values: str) -> None:
        """``helm upgrade`` of the release with the install's values plus ``values``, then
        wait until the agent is rolled out."""

    def diagnostics(self) -> str:
        """What a failed test needs: pods, the agents' logs (a backend adds its own)."""
        out = []
        for args in (
            ("get", "pods", "-A", "-o", "wide"),
            ("get", "tracingpolicies,tracingpoliciesnamespaced", "-A", "-o", "wide"),
            ("logs", "-n", self.release_ns, "-l", self._labels(AGENT_LABELS), "--tail=60",
             "--prefix"),
            ("logs", "-n", self.release_ns, "-l", self._labels(CONTROLLER_LABELS), "--tail=30",
             "--prefix"),
        ):  # fmt: skip
            out.append(f"--- kubectl {' '.join(args)}\n{self.kubectl(*args, check=False)}")
        return "\n".join(out)

    def host_has_kprobes(self) -> bool:
        """What the node's kernel offers, by the files the kernel exposes (not the agent's
        probe): a kprobe PMU, or kprobe_events in a mounted tracefs."""
        pmus = self.host_listdir(PurePosixPath("/sys/bus/event_source/devices")) or []
        tracefs = self.host_listdir(PurePosixPath("/sys/kernel/tracing")) or []
        return "kprobe" in pmus or "kprobe_events" in tracefs

    # -- through the API server: the same on every backend -------------------------------

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return run_kubectl(self.kubeconfig, *args, check=check, stdin=stdin, timeout=300)

    def helm(self, *args: str) -> str:
        return subprocess.run(
            ["helm", f"--kubeconfig={self.kubeconfig}", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout

    def helm_uninstall(self) -> None:
        self.helm("uninstall", self.release, "--namespace", self.release_ns, "--wait")

    def _labels(self, component: str) -> str:
        return f"app.kubernetes.io/instance={self.release},{component}"

    def nodes(self) -> list[str]:
        items = json.loads(self.kubectl("get", "nodes", "-o", "json"))["items"]
        return sorted(n["metadata"]["name"] for n in items)

    def agent_daemonset(self) -> dict[str, Any]:
        items = json.loads(
            self.kubectl(
                "get", "ds", "-n", self.release_ns, "-l", self._labels(AGENT_LABELS), "-o", "json"
            )
        )["items"]
        assert len(items) == 1, f"{len(items)} agent DaemonSets in release {self.release}"
        return dict(items[0])

    def agent_pods(self) -> list[dict[str, Any]]:
        selector = self._labels(AGENT_LABELS)
        out = self.kubectl("get", "pods", "-n", self.release_ns, "-l", selector, "-o", "json")
        return list(json.loads(out)["items"])

    def wait_agent_rolled_out(self) -> None:
        """helm's --wait lets a DaemonSet be "ready" with maxUnavailable (1) pods not
        ready, which on one node means none: wait for every pod of the new template."""

        def rolled_out() -> bool:
            ds = self.agent_daemonset()
            st = ds.get("status", {})
            want = st.get("desiredNumberScheduled", 0)
            return bool(
                want >= 1
                and st.get("observedGeneration") == ds["metadata"]["generation"]
                and st.get("updatedNumberScheduled") == want
                and st.get("numberReady") == want
                and st.get("numberAvailable") == want
            )

        eventually(rolled_out, timeout=240, interval=1, what="the agent DaemonSet rolled out")

    def namespace(self) -> str:
        ns = f"e2e-{secrets.token_hex(3)}"
        self.kubectl("create", "namespace", ns)
        return ns

    def pod(
        self,
        ns: str,
        name: str,
        labels: dict[str, str],
        *,
        command: tuple[str, ...] = ("/usr/bin/sleep", "3600"),
        restart: str = "Always",
        wait: bool = True,
    ) -> dict[str, Any]:
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": self.workload_node},
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": self.workload_image,
                        "imagePullPolicy": self.workload_pull_policy,
                        "command": list(command),
                    }
                ],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        if wait:
            eventually(
                lambda: self.get_pod(ns, name).get("status", {}).get("phase") == "Running",
                timeout=180,
                interval=0.3,
                what=f"pod {ns}/{name} Running",
            )
        return self.get_pod(ns, name)

    def get_pod(self, ns: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "pod", name, "-n", ns, "-o", "json")))

    def container_id(self, ns: str, name: str) -> str | None:
        """The running container's ID, None before the runtime reported one."""
        statuses = self.get_pod(ns, name).get("status", {}).get("containerStatuses") or []
        cid = statuses[0].get("containerID") if statuses else None
        return str(cid).split("://", 1)[1] if cid else None

    def _running_pods(self, component: str, node: str | None) -> list[str]:
        selector = "status.phase=Running" + (f",spec.nodeName={node}" if node else "")
        out = self.kubectl(
            "get", "pods", "-n", self.release_ns, "-l", self._labels(component),
            f"--field-selector={selector}", "-o", "jsonpath={.items[*].metadata.name}",
        )  # fmt: skip
        return out.split()

    def agent_pod(self, node: str | None = None) -> str:
        """The agent's pod on ``node`` (default: the workload node)."""
        names = self._running_pods(AGENT_LABELS, node or self.workload_node)
        assert len(names) == 1, names
        return names[0]

    def controller_pod(self) -> str:
        """A running controller pod (any replica: each reads with the same account)."""
        names = self._running_pods(CONTROLLER_LABELS, None)
        assert names, "no running controller pod"
        return names[0]

    def pod_exec(self, pod: str, container: str, *argv: str) -> str:
        """``kubectl exec`` into a pod of the release; fails on a non-zero exit."""
        return self.kubectl("exec", "-n", self.release_ns, pod, "-c", container, "--", *argv)

    def agent_exec(self, *argv: str, node: str | None = None) -> str:
        return self.pod_exec(self.agent_pod(node), "agent", *argv)

    def agent_status(self, node: str | None = None) -> dict[str, Any]:
        """``tpfilter status --json`` run inside the agent's pod on ``node``."""
        out = self.agent_exec(
            "tpfilter", "status", "--json", f"--pin-dir={self.pin_dir}",
            f"--state-dir={self.state_dir}", node=node,
        )  # fmt: skip
        return dict(json.loads(out))

    def exec_status(self, ns: str, pod: str, *argv: str) -> int:
        """Exit status of ``kubectl exec`` (137: the process was SIGKILLed)."""
        done = subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", "exec", "-n", ns, pod, "--", *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        return done.returncode


def bpftool_keys(dump_json: str) -> frozenset[int]:
    """The keys of ``bpftool -j map dump`` output: each key as its bytes in hex, the u64 in
    host order (little-endian on the machines tpfilter runs on)."""
    return frozenset(
        int.from_bytes(bytes(int(b, 16) for b in entry["key"]), "little")
        for entry in json.loads(dump_json)
    )


def maps_from_status(status: Mapping[str, Any]) -> dict[str, frozenset[int]]:
    """``tpfilter status --json`` -> what :func:`tpfilter_dev.agentproc.kernel_view` reads
    from the pins: {policy key: the inner map's keys}, a slot no record names as "?<id>",
    the host marker included."""
    view = {}
    for row in status["policies"]:
        if row["map_id"] is None:  # no inner map in the kernel: nothing pinned to read
            continue
        if row["kind"] is None:
            key = f"?{row['policy_id']}"
        elif row["namespace"]:
            key = f"{row['kind']}/{row['namespace']}/{row['name']}"
        else:
            key = f"{row['kind']}/{row['name']}"
        view[key] = frozenset(row["cgroup_ids"]) | ({HOST_MARKER} if row["host"] else set())
    return view
