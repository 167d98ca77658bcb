"""The real-node e2e suite: installed as users install it, on a node that runs real pods.

``helm install`` of charts/ with the agent image built here (scripts/build-images.sh, no
Docker), on one node where kubelet and containerd + runc make the pods and their cgroups
(:mod:`tpfilter_dev.realnode`). What the integration tests, which play the kubelet,
cannot show: that the agent finds a real runtime's cgroups with no flag naming them, in
its own container, and that the programs act on processes the real runtime starts.

One node for the whole session (~15 s to start, the agent ~20 s more); each test works in
a namespace of its own. The maps are read from the host (the pins are the host's), the
cgroup IDs from the host's cgroupfs, independently of the agent's own path code.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.indexmap import INDEX_PIN_NAME
from tpfilter_dev.agentproc import eventually, kernel_view
from tpfilter_dev.realnode import NODE_IP, RealNode

ROOT = Path(__file__).resolve().parents[2]
RELEASE, RELEASE_NS = "tpfilter", "kube-system"
PIN_DIR = Path("/sys/fs/bpf/tpfilter-e2e")
STATE_DIR = Path("/run/tpfilter-e2e")
BUSYBOX = "tpfilter.local/busybox:dev"


@functools.cache
def environment_problem() -> str | None:
    """Why the suite cannot run here, or None (on this project's machines: None)."""
    if os.geteuid() != 0:
        return "needs root (kubelet, containerd, BPF maps)"
    for tool in ("containerd", "runc", "ctr", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"{tool} not found: run scripts/install.sh and scripts/build-k8s-bins.sh"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problem = environment_problem()
    for item in items:
        if "tests/realnode/" in str(item.path):
            item.add_marker(pytest.mark.realnode)
            if problem:
                item.add_marker(pytest.mark.skip(reason=f"real node: {problem}"))


def build_images() -> dict[str, Path]:
    """The image tars (cached by scripts/build-images.sh; test.sh built them already)."""
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {k: Path(v) for k, v in re.findall(r"^(\w+_IMAGE)=(.+)$", out, re.MULTILINE)}


@dataclass
class Cluster:
    node: RealNode

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return self.node.kubectl(*args, check=check, stdin=stdin)

    def helm(self, *args: str) -> str:
        return subprocess.run(
            ["helm", f"--kubeconfig={self.node.kubeconfig}", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def helm_install(self, verb: str = "install", *values: str) -> str:
        """helm install/upgrade of charts/tpfilter with the image built here, then wait
        until the agent is rolled out: helm's --wait lets a DaemonSet be "ready" with
        maxUnavailable (1) pods not ready, which on one node means none."""
        out = self.helm(
            verb, RELEASE, str(ROOT / "charts" / "tpfilter"),
            "--namespace", RELEASE_NS, "--wait", "--timeout", "240s",
            "--set", "image.repository=tpfilter.local/tpfilter",
            "--set", "image.tag=dev",
            "--set", "image.pullPolicy=Never",
            "--set", f"pinDir={PIN_DIR}",
            "--set", f"stateDir={STATE_DIR}",
            "--set", f"kubernetesServiceHost={NODE_IP}",
            "--set", f"kubernetesServicePort={self.node.plane.port}",
            # this machine's tracefs is not mounted at boot: the agent attaches tracepoints
            "--set", "tracefs=true",
            *values,
        )  # fmt: skip
        self.wait_agent_rolled_out()
        return out

    def wait_agent_rolled_out(self) -> None:
        def rolled_out() -> bool:
            ds = json.loads(self.kubectl("get", "ds", "tpfilter", "-n", RELEASE_NS, "-o", "json"))
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
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": list(command),
                    }
                ],
            },
        }
        self.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))
        if wait:
            eventually(
                lambda: self.get_pod(ns, name).get("status", {}).get("phase") == "Running",
                timeout=90,
                interval=0.3,
                what=f"pod {ns}/{name} Running",
            )
        return self.get_pod(ns, name)

    def get_pod(self, ns: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", "pod", name, "-n", ns, "-o", "json")))

    def container_id(self, ns: str, name: str) -> str:
        (status,) = self.get_pod(ns, name)["status"]["containerStatuses"]
        return str(status["containerID"]).split("://", 1)[1]

    def cgroup_id(self, ns: str, name: str) -> int:
        """The container's cgroup ID, found on the host by its container ID (not by the
        agent's layout code): the inode of its cgroup2 directory."""
        cid = self.container_id(ns, name)
        found = list((find_cgroup2_mount() / "kubepods").rglob(cid))
        assert len(found) == 1, f"cgroup of container {cid}: {found}"
        return found[0].stat().st_ino

    def agent_pod(self) -> str:
        out = self.kubectl(
            "get", "pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=tpfilter",
            "--field-selector=status.phase=Running", "-o", "jsonpath={.items[*].metadata.name}",
        )  # fmt: skip
        names = out.split()
        assert len(names) == 1, names
        return names[0]

    def agent_exec(self, *args: str) -> str:
        return self.kubectl("exec", "-n", RELEASE_NS, self.agent_pod(), "--", *args)

    def agent_status(self) -> dict[str, Any]:
        """``tpfilter status --json`` run inside the agent's pod."""
        out = self.agent_exec(
            "tpfilter", "status", "--json", f"--pin-dir={PIN_DIR}", f"--state-dir={STATE_DIR}"
        )
        return dict(json.loads(out))

    def exec_status(self, ns: str, pod: str, *argv: str) -> int:
        """Exit status of ``kubectl exec`` (137: the process was SIGKILLed)."""
        done = subprocess.run(
            ["kubectl", f"--kubeconfig={self.node.kubeconfig}", "exec", "-n", ns, pod, "--",
             *argv],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        return done.returncode


def maps_on_host() -> dict[str, frozenset[int]]:
    """{policy key: cgroup IDs} read from the host's pins through the agent's state file."""
    return kernel_view(PIN_DIR, STATE_DIR)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    images = build_images()
    with RealNode(images=tuple(images.values())) as node:
        c = Cluster(node)
        try:
            c.helm_install()
            yield c
        finally:
            _diagnostics(c)
            subprocess.run(
                ["helm", f"--kubeconfig={node.kubeconfig}", "uninstall", RELEASE, "-n",
                 RELEASE_NS, "--wait", "--timeout", "60s"],
                capture_output=True,
                check=False,
            )  # fmt: skip
    (PIN_DIR / INDEX_PIN_NAME).unlink(missing_ok=True)
    if (PIN_DIR / "policy_filter_maps").exists():
        PinnedFilterMaps(pin_dir=PIN_DIR).remove_pins()
    shutil.rmtree(STATE_DIR, ignore_errors=True)


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    """A namespace of the test's own, deleted with its pods afterwards: the seed policies
    are cluster-wide, so another test's pods must not be left to match them."""
    name = cluster.namespace()
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


def _diagnostics(c: Cluster) -> None:
    """What a failed run needs, written where pytest shows captured output."""
    for args in (
        ("get", "pods", "-A", "-o", "wide"),
        ("logs", "-n", RELEASE_NS, "-l", "app.kubernetes.io/name=tpfilter", "--tail=60"),
    ):
        print(c.kubectl(*args, check=False))
    for name in ("kubelet", "containerd"):
        print(f"--- {name}\n{c.node.log_tail(name, 20)}")
