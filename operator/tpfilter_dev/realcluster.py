"""tpfilter installed on a real node (:mod:`tpfilter_dev.realnode`) as users install it.

``helm install`` of charts/tpfilter with the agent image built here
(scripts/build-images.sh, no Docker), pods of the busybox test image, and readers of what
the agent did: the maps from the host's pins, cgroup IDs from the host's cgroupfs (found by
container ID, independently of the agent's own path code). Shared by the real-node e2e
suite (tests/realnode) and its benchmark (benchmarks/bench_realnode.py).
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.indexmap import INDEX_PIN_NAME
from tpfilter_dev.agentproc import eventually, kernel_view
from tpfilter_dev.realnode import NODE_IP, RealNode

ROOT = Path(__file__).resolve().parents[2]
RELEASE, RELEASE_NS = "tpfilter", "kube-system"
PIN_DIR = Path("/sys/fs/bpf/tpfilter-e2e")
STATE_DIR = Path("/run/tpfilter-e2e")
BUSYBOX = "tpfilter.local/busybox:dev"


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

    def container_id(self, ns: str, name: str) -> str | None:
        """The running container's ID, None before the runtime reported one."""
        statuses = self.get_pod(ns, name).get("status", {}).get("containerStatuses") or []
        cid = statuses[0].get("containerID") if statuses else None
        return str(cid).split("://", 1)[1] if cid else None

    def cgroup_dir(self, ns: str, name: str) -> Path | None:
        """The container's cgroup2 directory, found on the host by its container ID (not
        by the agent's layout code); None before the container exists."""
        cid = self.container_id(ns, name)
        if cid is None:
            return None
        found = list((find_cgroup2_mount() / "kubepods").rglob(cid))
        assert len(found) <= 1, f"cgroup of container {cid}: {found}"
        return found[0] if found else None

    def cgroup_id(self, ns: str, name: str) -> int:
        """The container's cgroup ID: the inode of its cgroup2 directory."""
        cgroup = self.cgroup_dir(ns, name)
        assert cgroup is not None, f"no cgroup for {ns}/{name}"
        return cgroup.stat().st_ino

    def agent_pod(self) -> str:
        out = self.kubectl(
            "get", "pods", "-n", RELEASE_NS,
            # the agent's pod, not the controller's (component=controller)
            "-l", "app.kubernetes.io/name=tpfilter,app.kubernetes.io/component=agent",
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


def remove_agent_leftovers() -> None:
    """What the agent leaves on the node by design (README: pins and state), removed once
    the node is gone."""
    (PIN_DIR / INDEX_PIN_NAME).unlink(missing_ok=True)
    if (PIN_DIR / OUTER_PIN_NAME).exists():
        PinnedFilterMaps(pin_dir=PIN_DIR).remove_pins()
    shutil.rmtree(STATE_DIR, ignore_errors=True)


def main() -> int:
    """``scripts/run-node.sh``: a real node with the agent installed by helm, until Ctrl-C."""
    import signal
    import threading

    images = build_images()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with RealNode(images=tuple(images.values())) as node:
        cluster = Cluster(node)
        cluster.helm_install()
        print(
            f"node {node.name} Ready, tpfilter installed with helm (release {RELEASE} in "
            f"{RELEASE_NS}); pods run with image {BUSYBOX}.\n"
            f"  export KUBECONFIG={node.kubeconfig}\n"
            f"  kubectl apply -f {ROOT / 'examples' / 'seed-policy-tracepoint.yaml'}\n"
            f"  kubectl -n {RELEASE_NS} exec ds/tpfilter -- tpfilter status "
            f"--pin-dir={PIN_DIR} --state-dir={STATE_DIR}\n"
            "Ctrl-C stops the node and removes what it made, the agent's pins included.",
            flush=True,
        )
        stop.wait()
    remove_agent_leftovers()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
