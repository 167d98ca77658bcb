"""A stand-in for this machine's kubelet and container runtime, for tests and the demo.

It does, for real, the parts of a kubelet that the agent can observe: it registers a Node,
binds Pods to it, creates each container's cgroup v2 directory where kubelet + the runtime
would (systemd or cgroupfs driver; containerd, CRI-O or Docker naming), starts a process
in it (in a PID namespace of its own, unless the pod has hostPID: true, as a runtime does),
and reports the container ID and Running in the pod status, as the kubelet does.
:meth:`Kubelet.exec` is `kubectl exec`: it joins the container's cgroup and namespace.

The cgroup layout is written out here on purpose, independently of the agent's own path
logic (``tpfilter.cgroup_paths``): a shared mistake would otherwise pass unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tpfilter_dev import contain
from tpfilter_dev.cgroupfs import remove_cgroup_tree, rmdir_cgroup
from tpfilter_dev.controlplane import die_with_parent

# The API server derives status.qosClass from the resources (and then never lets it change).
RESOURCES: dict[str, dict[str, dict[str, str]]] = {
    "Guaranteed": {
        "requests": {"cpu": "10m", "memory": "16Mi"},
        "limits": {"cpu": "10m", "memory": "16Mi"},
    },
    "Burstable": {"requests": {"cpu": "10m"}},
    "BestEffort": {},
}
QOS_SLICES = {"Guaranteed": "", "Burstable": "burstable", "BestEffort": "besteffort"}
RUNTIMES = ("containerd", "cri-o", "docker")
DRIVERS = ("systemd", "cgroupfs")


@dataclass
class Container:
    name: str
    image: str
    container_id: str = ""
    cgroup: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0

    @property
    def cgroup_id(self) -> int:
        """What bpf_get_current_cgroup_id() returns inside: the directory's inode."""
        assert self.cgroup is not None
        return os.stat(self.cgroup).st_ino


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    qos: str
    containers: dict[str, Container] = field(default_factory=dict)
    host_pid: bool = False


def container_cgroup(
    root: Path, *, driver: str, runtime: str, qos: str, pod_uid: str, container_id: str
) -> Path:
    """Where kubelet (driver) and the runtime put a container's cgroup, below ``root``."""
    tier = QOS_SLICES[qos]
    if driver == "systemd":
        uid = pod_uid.replace("-", "_")
        pod = f"kubepods-{tier}-pod{uid}.slice" if tier else f"kubepods-pod{uid}.slice"
        parts = ["kubepods.slice"] + ([f"kubepods-{tier}.slice"] if tier else []) + [pod]
        prefix = {"containerd": "cri-containerd", "cri-o": "crio", "docker": "docker"}[runtime]
        parts.append(f"{prefix}-{container_id}.scope")
    else:
        parts = ["kubepods"] + ([tier] if tier else []) + [f"pod{pod_uid}"]
        parts.append(f"crio-{container_id}" if runtime == "cri-o" else container_id)
    return root.joinpath(*parts)


class Kubelet:
    def __init__(
        self,
        *,
        api_client: Any,
        node_name: str,
        cgroup_root: Path,
        driver: str = "systemd",
        runtime: str = "containerd",
    ) -> None:
        import kubernetes

        assert driver in DRIVERS and runtime in RUNTIMES
        self.core: Any = kubernetes.client.CoreV1Api(api_client)  # dict bodies, not models
        self.node_name = node_name
        self.cgroup_root = cgroup_root
        self.driver = driver
        self.runtime = runtime
        self.pods: dict[tuple[str, str], Pod] = {}

    # --- API objects ----------------------------------------------------------------------

    def register_node(self, labels: dict[str, str] | None = None) -> None:
        body = {"metadata": {"name": self.node_name, "labels": labels or {}}}
        try:
            self.core.create_node(body)
        except Exception as exc:  # already there (a second test, a restart): fine
            if getattr(exc, "status", None) != 409:
                raise

    def create_pod(
        self,
        namespace: str,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        containers: list[tuple[str, str]] | None = None,
        qos: str = "BestEffort",
        host_pid: bool = False,
        start: bool = True,
    ) -> Pod:
        specs = containers or [("main", "docker.io/library/busybox:1.36")]
        body = {
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {
                "nodeName": self.node_name,
                "hostPID": host_pid,
                "containers": [
                    {"name": n, "image": i, "resources": RESOURCES[qos]} for n, i in specs
                ],
            },
        }
        created = self.core.create_namespaced_pod(namespace, body)
        uid = str(created.metadata.uid)
        pod = Pod(namespace, name, uid, qos, {n: Container(n, i) for n, i in specs}, host_pid)
        self.pods[(namespace, name)] = pod
        if start:
            self.start(pod)
        return pod

    def set_labels(self, pod: Pod, labels: dict[str, str | None]) -> None:
        self.core.patch_namespaced_pod(pod.name, pod.namespace, {"metadata": {"labels": labels}})

    def start(self, pod: Pod, *names: str, report: bool = True) -> None:
        """Start containers (all by default): cgroup, process, then the status report."""
        for container in pod.containers.values():
            if (not names or container.name in names) and container.process is None:
                self._run(pod, container)
        if report:
            self.report(pod)

    def restart_container(self, pod: Pod, name: str) -> Container:
        """The container dies and comes back with a new ID and a new cgroup."""
        container = pod.containers[name]
        self._kill(container)
        container.restarts += 1
        self._run(pod, container)
        self.report(pod)
        return container

    def exec(self, pod: Pod, name: str, *argv: str, timeout: float = 10) -> int:
        """`kubectl exec`: run ``argv`` in the container's cgroup and PID namespace (the
        node's for a hostPID pod). Returns the exit status (-9: SIGKILLed)."""
        container = pod.containers[name]
        assert container.cgroup is not None, f"{name} is not running"
        command = contain.argv(container.cgroup, argv, pid_ns="node" if pod.host_pid else "join")
        if not pod.host_pid:
            contain.wait_started(container.cgroup)
        done = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
        return done.returncode

    def delete_pod(self, pod: Pod) -> None:
        for container in pod.containers.values():
            self._kill(container)
        self.core.delete_namespaced_pod(pod.name, pod.namespace, grace_period_seconds=0)
        self.pods.pop((pod.namespace, pod.name), None)
        self._remove_pod_dirs(pod)

    def report(self, pod: Pod) -> None:
        """Patch the pod status as the kubelet would."""
        statuses = []
        for c in pod.containers.values():
            status: dict[str, Any] = {
                "name": c.name,
                "image": c.image,
                "imageID": "",
                "ready": c.process is not None,
                "restartCount": c.restarts,
            }
            if c.process is not None:
                status["containerID"] = f"{self._scheme()}://{c.container_id}"
                status["state"] = {"running": {"startedAt": _now()}}
                status["started"] = True
            else:
                status["state"] = {"waiting": {"reason": "ContainerCreating"}}
            statuses.append(status)
        running = all(c.process is not None for c in pod.containers.values())
        self.core.patch_namespaced_pod_status(
            pod.name,
            pod.namespace,
            {
                "status": {
                    "phase": "Running" if running else "Pending",
                    "containerStatuses": statuses,
                }
            },
        )

    # --- the node's side ------------------------------------------------------------------

    def _scheme(self) -> str:
        return {"containerd": "containerd", "cri-o": "cri-o", "docker": "docker"}[self.runtime]

    def _run(self, pod: Pod, container: Container) -> None:
        container.container_id = secrets.token_hex(32)
        container.cgroup = container_cgroup(
            self.cgroup_root,
            driver=self.driver,
            runtime=self.runtime,
            qos=pod.qos,
            pod_uid=pod.uid,
            container_id=container.container_id,
        )
        container.cgroup.mkdir(parents=True)
        procs = container.cgroup / "cgroup.procs"
        # util-linux unshare, not tpfilter_dev.contain: the same steps (enter the cgroup,
        # a new PID namespace, fork, exec), without a Python start per container (hundreds
        # of pods in the tests and benchmarks); nobody needs this process's exit status.
        command = ["sleep", "infinity"]
        if not pod.host_pid:
            command = ["unshare", "--pid", "--fork", "--kill-child", *command]
        container.process = subprocess.Popen(
            command,
            preexec_fn=lambda: _enter(procs),
            start_new_session=True,
        )

    def _kill(self, container: Container) -> None:
        if container.process is not None:
            with contextlib.suppress(ProcessLookupError):
                container.process.send_signal(signal.SIGKILL)
            container.process.wait()
            container.process = None
        if container.cgroup is not None:
            rmdir_cgroup(container.cgroup)
            container.cgroup = None

    def _remove_pod_dirs(self, pod: Pod) -> None:
        marker = pod.uid if self.driver == "cgroupfs" else pod.uid.replace("-", "_")
        for path in sorted(self.cgroup_root.rglob(f"*pod{marker}*"), key=lambda p: -len(p.parts)):
            rmdir_cgroup(path)

    def close(self) -> None:
        """Kill every process and remove every cgroup this stand-in made."""
        for pod in list(self.pods.values()):
            for container in pod.containers.values():
                self._kill(container)
        self.pods.clear()
        remove_cgroup_tree(self.cgroup_root)


def _enter(procs: Path) -> None:
    """In the container's process before exec: join its cgroup, and die with us."""
    procs.write_text(str(os.getpid()))
    die_with_parent()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
