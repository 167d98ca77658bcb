"""A real etcd + kube-apiserver on loopback, started and stopped as one unit.

The binaries come from ``scripts/build-k8s-bins.sh`` (built from source, cached outside
the repo). The flags follow the way envtest runs them: token authentication for an admin
in ``system:masters``, RBAC, a self-signed serving certificate made by the API server in
its cert dir, service-account keys generated here. There is no controller-manager, so
there is no garbage collection, no namespace finalisation and no DaemonSet pods: tests
create Pods directly and play the kubelet (``tpfilter_dev.kubelet``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PR_SET_PDEATHSIG = 1
DEFAULT_BIN_DIR = Path(os.environ.get("TPFILTER_CACHE", "/var/cache/tpfilter")) / "bin"


class ControlPlaneError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str, bin_dir: Path = DEFAULT_BIN_DIR) -> Path:
    path = bin_dir / name
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(
            f"{path} not found: run scripts/build-k8s-bins.sh (builds it from source once)"
        )
    return path


@dataclass
class ControlPlane:
    """etcd + kube-apiserver in a temporary directory. Use as a context manager."""

    bin_dir: Path = DEFAULT_BIN_DIR
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tpf-cp-")))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    etcd_port: int = field(default_factory=free_port)
    etcd_peer_port: int = field(default_factory=free_port)
    port: int = field(default_factory=free_port)
    # Where the API server listens and what it advertises (a real node's pods must reach
    # it: tpfilter_dev.realnode gives it an address of its own), more flags (later ones
    # win) and more token lines ("token,user,uid,groups").
    host: str = "127.0.0.1"
    authorization_mode: str = "RBAC"
    # No controller-manager makes ServiceAccounts here, so their admission is off.
    disabled_admission_plugins: str = "ServiceAccount"
    extra_apiserver_args: tuple[str, ...] = ()
    extra_tokens: tuple[str, ...] = ()
    _etcd: subprocess.Popen[bytes] | None = None
    _apiserver: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def __enter__(self) -> ControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._prepare()
        self.start_etcd()
        self.start_apiserver()

    def stop(self) -> None:
        self.stop_apiserver()
        if self._etcd:
            _terminate(self._etcd)
            self._etcd = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    def start_etcd(self) -> None:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        client = f"http://127.0.0.1:{self.etcd_port}"
        self._etcd = self.spawn(
            "etcd",
            [
                str(binary("etcd", self.bin_dir)),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--unsafe-no-fsync",  # throwaway test data; fsync dominates otherwise
                "--log-level=warn",
            ],
        )
        _wait_http(f"{client}/health", self._etcd, "etcd", timeout=30)

    def start_apiserver(self) -> None:
        """Start (or restart, after :meth:`stop_apiserver`) the API server on the same port."""
        w = self.workdir
        self._apiserver = self.spawn(
            "kube-apiserver",
            [
                str(binary("kube-apiserver", self.bin_dir)),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                f"--cert-dir={w / 'certs'}",
                f"--secure-port={self.port}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                f"--authorization-mode={self.authorization_mode}",
                f"--token-auth-file={w / 'tokens.csv'}",
                f"--disable-admission-plugins={self.disabled_admission_plugins}",
                f"--service-account-issuer={self.url}/",
                f"--service-account-key-file={w / 'sa.pub'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                "--enable-priority-and-fairness=false",
                "--v=0",
                *self.extra_apiserver_args,
            ],
        )
        self._wait_ready(timeout=120)

    def stop_apiserver(self) -> None:
        if self._apiserver:
            _terminate(self._apiserver)
            self._apiserver = None

    def kubectl(self, *args: str) -> str:
        """Run kubectl against this control plane; its stdout, or CalledProcessError."""
        return subprocess.run(
            ["kubectl", f"--kubeconfig={self.kubeconfig}", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def install_crds(self, crds: Path) -> None:
        """Apply the CRDs in ``crds`` and wait until the API server serves them."""
        self.kubectl("apply", "-f", str(crds))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(crds))

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "certs").mkdir(exist_ok=True)
        tokens = [f"{self.token},admin,admin,system:masters", *self.extra_tokens]
        (self.workdir / "tokens.csv").write_text("".join(f"{line}\n" for line in tokens))
        subprocess.run(
            ["openssl", "genrsa", "-out", str(self.workdir / "sa.key"), "2048"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "openssl",
                "rsa",
                "-in",
                str(self.workdir / "sa.key"),
                "-pubout",
                "-out",
                str(self.workdir / "sa.pub"),
            ],
            check=True,
            capture_output=True,
        )
        self.kubeconfig.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {self.url}
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: {self.token}
contexts:
- name: local
  context: {{cluster: local, user: admin}}
current-context: local
"""
        )

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start a process of this cluster: its log in the workdir, dies with this one."""
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (lives with the process)
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def _wait_ready(self, *, timeout: float) -> None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._apiserver is not None
            if self._apiserver.poll() is not None:
                raise ControlPlaneError(
                    f"kube-apiserver exited:\n{self.log_tail('kube-apiserver')}"
                )
            request = urllib.request.Request(
                f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.token}"}
            )
            if _http_ok(request, context):
                return
            time.sleep(0.25)
        raise ControlPlaneError(f"kube-apiserver not ready:\n{self.log_tail('kube-apiserver')}")


def _wait_http(url: str, process: subprocess.Popen[bytes], name: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ControlPlaneError(f"{name} exited with {process.returncode}")
        if _http_ok(urllib.request.Request(url)):
            return
        time.sleep(0.1)
    raise ControlPlaneError(f"{name} did not become healthy at {url}")


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the process that started it dies, so a killed
    test run or benchmark leaves no etcd, API server or agent behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _http_ok(request: urllib.request.Request, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(request, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running(bin_dir: Path = DEFAULT_BIN_DIR) -> Iterator[ControlPlane]:
    with ControlPlane(bin_dir=bin_dir) as plane:
        yield plane
