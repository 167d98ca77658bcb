"""tpfilter installed on a real node (:mod:`tpfilter_dev.realnode`) as users install it.

``helm install`` of charts/tpfilter with the agent image built here
(scripts/build-images.sh, no Docker), pods of the busybox test image, and readers of what
the agent did: the maps from the host's pins, cgroup IDs from the host's cgroupfs (found by
container ID, independently of the agent's own path code). The real-node backend of the
e2e suite (tests/e2e, :mod:`tpfilter_dev.e2ecluster`), its benchmark
(benchmarks/bench_realnode.py) and ``scripts/run-node.sh``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.indexmap import INDEX_PIN_NAME
from tpfilter_dev.agentproc import kernel_view
from tpfilter_dev.e2ecluster import CHART, ROOT, E2ECluster, bpftool_keys
from tpfilter_dev.realnode import CTR_NAMESPACE, NODE_IP, RealNode

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


class Cluster(E2ECluster):
    """The real-node backend of the e2e suite: one node, read from this machine (the
    node's host): the pins by the agent's map code run here, bpftool, the cgroupfs, ctr."""

    backend = "realnode"
    release, release_ns = RELEASE, RELEASE_NS
    pin_dir, state_dir = PurePosixPath(PIN_DIR), PurePosixPath(STATE_DIR)
    workload_image, workload_pull_policy = BUSYBOX, "Never"

    def __init__(self, node: RealNode) -> None:
        self.node = node
        self.kubeconfig = str(node.kubeconfig)
        self.workload_node = node.name

    def helm_install(self, verb: str = "install", *values: str) -> str:
        """helm install/upgrade of charts/tpfilter with the image built here, then wait
        until the agent is rolled out."""
        out = self.helm(
            verb, RELEASE, str(CHART),
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

    def helm_upgrade(self, *values: str) -> None:
        self.helm_install("upgrade", *values)

    def maps(self) -> dict[str, frozenset[int]]:
        return maps_on_host()

    def map_keys(self, map_id: int) -> frozenset[int] | None:
        done = subprocess.run(
            ["bpftool", "-j", "map", "dump", "id", str(map_id)],
            capture_output=True,
            text=True,
            check=False,
        )
        return bpftool_keys(done.stdout) if done.returncode == 0 else None

    def cgroup_dir(self, ns: str, name: str) -> Path | None:
        """The container's cgroup2 directory, found on the host by its container ID (not
        by the agent's layout code); None before the container exists."""
        cid = self.container_id(ns, name)
        if cid is None:
            return None
        found = list((find_cgroup2_mount() / "kubepods").rglob(cid))
        assert len(found) <= 1, f"cgroup of container {cid}: {found}"
        return found[0] if found else None

    def cgroup_id(self, ns: str, pod: str) -> int:
        cgroup = self.cgroup_dir(ns, pod)
        assert cgroup is not None, f"no cgroup for {ns}/{pod}"
        return cgroup.stat().st_ino

    def kill_container(self, container_id: str) -> None:
        subprocess.run(
            ["ctr", f"--address={self.node.containerd_socket}", f"--namespace={CTR_NAMESPACE}",
             "tasks", "kill", "--signal", "SIGKILL", container_id],
            check=True, capture_output=True,
        )  # fmt: skip

    def host_listdir(self, path: PurePosixPath) -> list[str] | None:
        try:
            return sorted(p.name for p in Path(path).iterdir())
        except FileNotFoundError:
            return None

    def diagnostics(self) -> str:
        logs = [f"--- {name}\n{self.node.log_tail(name, 20)}" for name in ("kubelet", "containerd")]
        return "\n".join([super().diagnostics(), *logs])


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
