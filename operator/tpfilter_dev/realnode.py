"""One real Kubernetes node on this machine: kubelet + containerd + runc, no Docker.

What users run tpfilter on, and what the integration tests' kubelet stand-in only plays:
etcd and kube-apiserver (:mod:`tpfilter_dev.controlplane`), kube-controller-manager and
kube-scheduler (DaemonSets get pods, pods get scheduled), containerd and runc from Debian,
kubelet built from source (scripts/build-k8s-bins.sh), a CNI bridge, and images imported
from OCI tars (scripts/build-images.sh): nothing is pulled from a registry.

Why it looks like this (shared/notes/real-node.md has the measurements):

* The node has an address of its own, added to ``lo`` (this kernel has no dummy links):
  kubelet needs a non-loopback node IP for ``kubectl exec``/``logs``, and pods on the
  bridge reach the API server there. Nothing listens on the machine's own interfaces'
  addresses; no traffic leaves the machine.
* PID 1 is not systemd: containerd and kubelet use the cgroupfs driver, so containers are
  in ``/kubepods/...`` of every hierarchy (hybrid here: cgroup2 at /sys/fs/cgroup/unified)
  exactly as on such a node in production: the agent must find them with no flag.
* No process here has CAP_SYS_RESOURCE: containerd's ``restrict_oom_score_adj``.
* Without systemd every mount is private, and kubelet refuses the chart's Bidirectional
  (bpffs) and HostToContainer (cgroupfs, tracefs) mounts unless their source is shared:
  the node makes ``/`` recursively shared, as systemd does at boot on every systemd host,
  and makes it private again when it stops.
* There is no kube-proxy: the ``kubernetes`` Service's cluster IP is not routed, so pods
  that talk to the API server are given its address (the chart's
  ``kubernetesServiceHost``/``Port``, as Cilium and Tetragon charts have for
  kube-proxy-free clusters).
* kubelet's own API (exec, logs) trusts the API server by network: it listens only on the
  dummy address, anonymous + AlwaysAllow. A test node, not a production setting.

Teardown removes everything this run made: its processes (by PID, shims by their
containerd address), mounts under the work directory, the pods' network namespaces, the
kubepods cgroups, the bridge, the node's address and the work directory. A run that was
killed cannot: the next node finds that footprint and removes it before it starts
(:mod:`tpfilter_dev.nodeleftovers`), and refuses to start only if another node is alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tpfilter_dev import nodeconfig, nodeleftovers
from tpfilter_dev.controlplane import (
    DEFAULT_BIN_DIR,
    ControlPlane,
    ControlPlaneError,
    _terminate,
    binary,
    free_port,
)
from tpfilter_dev.kubectl import run_kubectl

BRIDGE = "tpfcni0"
# Addresses of this run's own test hosts, on interfaces it makes (RFC 6598 shared space:
# never a real destination here).
NODE_IP = "100.96.0.1"
POD_SUBNET = "100.96.64.0/24"
SERVICE_RANGE = "100.96.128.0/24"
PAUSE_REF = "tpfilter.local/pause:dev"
CTR_NAMESPACE = "k8s.io"
WORKDIR_PREFIX = "tpf-node-"
FOOTPRINT = nodeleftovers.NodeFootprint(
    address=NODE_IP,
    bridge=BRIDGE,
    workdir_prefix=WORKDIR_PREFIX,
    cgroup_root="kubepods",  # kubelet's cgroupfs driver
    netns_prefix="cni-",  # containerd's CRI names pod namespaces so
)


class RealNodeError(ControlPlaneError):
    pass


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


@dataclass
class RealNode:
    """A one-node cluster. Use as a context manager; :attr:`kubeconfig` is the admin's."""

    images: tuple[Path, ...]  # OCI tars to import into containerd
    bin_dir: Path = DEFAULT_BIN_DIR
    name: str = "tpf-node"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX)))
    _plane: ControlPlane | None = None
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _node_token: str = field(default_factory=lambda: secrets.token_hex(16))
    _made_shared: bool = False
    _network_made: bool = False  # stop() undoes only what this node made

    @property
    def plane(self) -> ControlPlane:
        if self._plane is None:
            raise RealNodeError("the node is not started")
        return self._plane

    @property
    def kubeconfig(self) -> Path:
        return self.plane.kubeconfig

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def __enter__(self) -> RealNode:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ----------------------------------------------------------------------------

    def start(self) -> None:
        self._check_host()
        if not _root_is_shared():
            _run("mount", "--make-rshared", "/")
            self._made_shared = True
        self._network_up()
        pki = nodeconfig.make_pki(self.workdir / "pki", ip=NODE_IP, service_range=SERVICE_RANGE)
        self._plane = ControlPlane(
            bin_dir=self.bin_dir,
            workdir=self.workdir / "plane",
            host=NODE_IP,
            authorization_mode="Node,RBAC",
            disabled_admission_plugins="",
            extra_apiserver_args=(
                "--enable-admission-plugins=NodeRestriction",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--service-cluster-ip-range={SERVICE_RANGE}",
                "--kubelet-preferred-address-types=InternalIP",
            ),
            extra_tokens=(f"{self._node_token},system:node:{self.name},node,system:nodes",),
        )
        self._plane.start()
        self._start_containerd()
        self._import_images()
        self._start_controllers(pki)
        self._start_kubelet()
        self.wait_node_ready(timeout=120)
        # Pods need their namespace's ServiceAccount (admission) and kube-root-ca.crt.
        self._wait(
            lambda: self.kubectl("get", "sa", "default", "-n", "default", check=False) != "",
            "the default ServiceAccount",
            timeout=60,
        )

    def _check_host(self) -> None:
        if os.geteuid() != 0:
            raise RealNodeError("a real node needs root")
        for tool in ("containerd", "runc", "ctr", "ip", "openssl"):
            if shutil.which(tool) is None:
                raise RealNodeError(f"{tool} not found: run scripts/install.sh")
        if not Path("/usr/lib/cni/bridge").exists():
            raise RealNodeError("CNI plugins missing (containernetworking-plugins)")
        for name in ("kubelet", "kube-scheduler", "kube-controller-manager"):
            binary(name, self.bin_dir)
        live = nodeleftovers.live_daemons(FOOTPRINT)
        if live:
            raise RealNodeError(f"another real node runs on this machine: {', '.join(live)}")
        removed = nodeleftovers.reclaim(FOOTPRINT, keep=self.workdir)
        if removed:  # a killed run's: say so, the next reader of the log may wonder
            print(
                f"realnode: removed a dead node's leftovers: {'; '.join(removed)}",
                file=sys.stderr,
            )

    def _network_up(self) -> None:
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        self._network_made = True
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True)
        (cni / "net.d" / "10-tpf-node.conflist").write_text(
            json.dumps(nodeconfig.cni_conflist(bridge=BRIDGE, subnet=POD_SUBNET, data=cni / "ipam"))
        )

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        base.mkdir()
        config = base / "config.toml"
        config.write_text(
            nodeconfig.containerd_config(
                base=base,
                socket=self.containerd_socket,
                sandbox_image=PAUSE_REF,
                cni_conf_dir=self.workdir / "cni" / "net.d",
            )
        )
        self._procs["containerd"] = self.plane.spawn(
            "containerd", ["containerd", f"--config={config}"]
        )
        self._wait(
            lambda: self._ctr("version", check=False).returncode == 0, "containerd", timeout=30
        )

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            "ctr", f"--address={self.containerd_socket}", f"--namespace={CTR_NAMESPACE}", *args,
            check=check,
        )  # fmt: skip

    def _import_images(self) -> None:
        for tar in self.images:
            self._ctr("images", "import", "--no-unpack", str(tar))

    def _start_controllers(self, pki: Path) -> None:
        kubeconfig = str(self.plane.kubeconfig)
        self._procs["kube-controller-manager"] = self.plane.spawn(
            "kube-controller-manager",
            [
                str(binary("kube-controller-manager", self.bin_dir)),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={self.plane.workdir / 'sa.key'}",
                "--use-service-account-credentials=true",
                "--leader-elect=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )
        self._procs["kube-scheduler"] = self.plane.spawn(
            "kube-scheduler",
            [
                str(binary("kube-scheduler", self.bin_dir)),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )

    def _start_kubelet(self) -> None:
        base = self.workdir / "kubelet"
        base.mkdir()
        kubeconfig = base / "kubeconfig"
        kubeconfig.write_text(
            self.plane.kubeconfig.read_text().replace(self.plane.token, self._node_token)
        )
        config = base / "config.yaml"
        config.write_text(
            nodeconfig.kubelet_config(
                socket=self.containerd_socket, address=NODE_IP, healthz_port=free_port()
            )
        )
        self._procs["kubelet"] = self.plane.spawn(
            "kubelet",
            [
                str(binary("kubelet", self.bin_dir)),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={base / 'root'}",
                f"--hostname-override={self.name}",
                f"--node-ip={NODE_IP}",
            ],
        )

    def wait_node_ready(self, *, timeout: float) -> None:
        def ready() -> bool:
            out = self.kubectl(
                "get", "node", self.name, "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )  # fmt: skip
            return out.strip() == "True"

        self._wait(ready, "node Ready", timeout=timeout)

    def _wait(self, ok: Callable[[], bool], what: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise RealNodeError(
                        f"{name} exited ({proc.returncode}) while waiting for {what}:\n"
                        f"{self.plane.log_tail(name)}"
                    )
            if ok():
                return
            time.sleep(0.5)
        logs = "\n".join(f"--- {n}\n{self.plane.log_tail(n, 15)}" for n in self._procs)
        raise RealNodeError(f"timed out waiting for {what}\n{logs}")

    # -- use ------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None) -> str:
        return run_kubectl(self.kubeconfig, *args, check=check, stdin=stdin, error=RealNodeError)

    def log_tail(self, name: str, lines: int = 40) -> str:
        return self.plane.log_tail(name, lines)

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        for name in ("kubelet", "kube-scheduler", "kube-controller-manager"):
            if name in self._procs:
                _terminate(self._procs.pop(name))
        if "containerd" in self._procs:
            self._remove_containers()
            _terminate(self._procs.pop("containerd"))
        if self._plane is not None:
            self._plane.stop()  # also removes its own workdir
            self._plane = None
        if self._network_made:  # else another node's (or nothing) is there: not ours
            # The same removal as of a killed node's: shims, mounts, pod network namespaces
            # (with their veths), the bridge, the address, the kubepods cgroups, the workdir.
            nodeleftovers.reclaim(FOOTPRINT)
            self._network_made = False
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self._made_shared:
            _run("mount", "--make-rprivate", "/", check=False)
            self._made_shared = False

    def _remove_containers(self) -> None:
        listed = self._ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in listed:
            self._ctr("tasks", "kill", "--signal", "SIGKILL", "--all", task, check=False)
        deadline = time.monotonic() + 15
        while self._ctr("tasks", "list", "-q", check=False).stdout.split():
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for task in listed:
            self._ctr("tasks", "delete", "--force", task, check=False)
        for container in self._ctr("containers", "list", "-q", check=False).stdout.split():
            self._ctr("containers", "delete", container, check=False)


def _root_is_shared() -> bool:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == "/":
                return any(tag.startswith("shared:") for tag in fields[6 : fields.index("-")])
    return False


@contextlib.contextmanager
def running(images: tuple[Path, ...], bin_dir: Path = DEFAULT_BIN_DIR) -> Iterator[RealNode]:
    with RealNode(images=images, bin_dir=bin_dir) as node:
        yield node
