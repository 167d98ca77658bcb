"""The whole system on this machine, in one command (``scripts/run-local.sh``).

Builds or reuses the control-plane binaries, starts etcd + kube-apiserver on loopback,
installs the CRDs, starts ``tpfilter agent`` for this machine as a node and ``tpfilter
controller`` (the writer of policy status), applies the user's seed policy, starts a pod
the policy selects and one it does not (real cgroups with real processes, reported
through the API as a kubelet would), and shows with ``tpfilter status`` which cgroups each
policy holds and their kernel memory. Then it applies the seed's intent on this node's
hooks (``examples/seed-policy-tracepoint.yaml``) and execs binaries in both pods: the
denied one is killed only in the selected pod. Last, once the controller has summed up the
node's report, the cluster's view (``kubectl get tracingpolicies``, ``tpfilter status
--cluster``): without the controller a user's first ``kubectl get`` would show the status
columns empty. Ctrl-C stops everything and removes the cgroups and pins it made.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.cli import collect_status, format_status
from tpfilter.clusterstatus import PolicyView, collect, format_table
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.controllerproc import ControllerProcess
from tpfilter_dev.controlplane import ControlPlane
from tpfilter_dev.kubelet import Kubelet, Pod
from tpfilter_dev.localnode import LocalNode

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run-local", description=__doc__.split("\n")[0])
    parser.add_argument("--policy", type=Path, default=_seed(), help="policy YAML to apply")
    parser.add_argument("--once", action="store_true", help="show the status and stop")
    args = parser.parse_args(argv)

    import kubernetes

    work = Path(tempfile.mkdtemp(prefix="tpfilter-demo-"))
    node_name = socket.gethostname().lower()
    cgroup_root = find_cgroup2_mount() / "tpfilter-demo"
    pin_dir = Path("/sys/fs/bpf/tpfilter-demo")
    step = _Steps()
    with ControlPlane() as plane:
        step(f"control plane up: {plane.url} (KUBECONFIG={plane.kubeconfig})")
        plane.install_crds(ROOT / "crds")
        step("CRDs installed")
        api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        node = LocalNode(
            plane=plane,
            api_client=api,
            name=node_name,
            cgroup_root=cgroup_root,
            pin_dir=pin_dir,
            work=work,
            labels={"kubernetes.io/hostname": node_name},
        )
        kubelet, agent = node.kubelet, node.agent
        controller = ControllerProcess(
            kubeconfig=plane.kubeconfig, log_path=work / "controller.log"
        )
        try:
            agent.start()
            step(f"agent running for node {node_name} (log: {agent.log_path})")
            controller.start()
            step(f"controller running (log: {controller.log_path})")
            print(plane.kubectl("apply", "-f", str(args.policy)).strip())
            selected = kubelet.create_pod(
                "default",
                "ubuntu",
                labels={"app": "ubuntu"},
                containers=[("ubuntu", "docker.io/library/ubuntu:24.04")],
            )
            other = kubelet.create_pod(
                "default",
                "nginx",
                labels={"app": "nginx"},
                containers=[("nginx", "docker.io/library/nginx:1.27")],
            )
            step(
                f"pod default/ubuntu (selected): cgroup {selected.containers['ubuntu'].cgroup_id}"
                f"; pod default/nginx (not selected): cgroup {other.containers['nginx'].cgroup_id}"
            )
            want = selected.containers["ubuntu"].cgroup_id

            def holds_selected() -> bool:
                status = collect_status(pin_dir=pin_dir, state_dir=agent.state_dir)
                return any(p["cgroups"] == 1 for p in status["policies"])

            eventually(holds_selected, timeout=30, what="the policy's map holds the ubuntu pod")
            print()
            print(format_status(collect_status(pin_dir=pin_dir, state_dir=agent.state_dir)))
            print(f"\n(cgroup {want} is the ubuntu container; bpftool map show shows the maps)")
            _show_enforcement(plane, kubelet, (selected, "ubuntu"), (other, "nginx"))
            _show_cluster_status(plane, api)
            if not args.once:
                step("running; Ctrl-C stops everything and cleans up")
                _wait_for_interrupt()
        finally:
            controller.stop()
            node.close()
            step("stopped; cgroups and pins removed")
    return 0


def _show_enforcement(
    plane: ControlPlane, kubelet: Kubelet, selected: tuple[Pod, str], other: tuple[Pod, str]
) -> None:
    """The seed's intent on this node's hooks: apply the tracepoint variant, exec in pods
    (as `kubectl exec` does: the container's cgroup and PID namespace)."""
    example = ROOT / "examples" / "seed-policy-tracepoint.yaml"
    print("\n" + plane.kubectl("apply", "-f", str(example)).strip())
    print("exec in the selected pod (allow list: sleep, cat, my-server-1):")
    deadline = time.monotonic() + 20
    while (
        kubelet.exec(*selected, "/usr/bin/true") != -signal.SIGKILL and time.monotonic() < deadline
    ):
        time.sleep(0.2)  # the agent syncs the programs right after the maps
    for (pod, name), argv in (
        (selected, ["/usr/bin/true"]),
        (selected, ["/usr/bin/sleep", "0"]),
        (other, ["/usr/bin/true"]),
    ):
        code = kubelet.exec(pod, name, *argv)
        outcome = "killed by SIGKILL" if code == -signal.SIGKILL else f"exit {code}"
        print(f"  {name:7} {' '.join(argv):16} -> {outcome}")


def _show_cluster_status(plane: ControlPlane, api: Any) -> None:
    """What the controller made of the node's report, once every policy's status is settled
    (of its current spec, on this node, past Pending)."""

    def settled(view: PolicyView) -> bool:
        return (
            view.has_status
            and not view.behind
            and view.total_nodes == 1
            and view.reason not in ("Pending", "NoNodes")
        )

    eventually(
        lambda: all(settled(v) for v in collect(api)),
        timeout=60,
        interval=0.2,
        what="every policy's status written by the controller",
    )
    print("\n$ kubectl get tracingpolicies")
    print(plane.kubectl("get", "tracingpolicies").rstrip())
    print("\n$ tpfilter status --cluster")
    print(format_table(collect(api)))


def _seed() -> Path:
    shared = ROOT.parent / "shared" / "examples" / "seed-policy.yaml"
    return shared if shared.exists() else ROOT / "examples" / "seed-policy.yaml"


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()


class _Steps:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}] {text}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
