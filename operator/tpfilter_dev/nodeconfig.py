"""The configuration files of the real node (:mod:`tpfilter_dev.realnode`).

Kept apart from the process handling so each setting can carry its reason where it is
written. Paths and addresses come in as arguments; nothing here starts anything, except
``openssl`` for the certificates.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def cni_conflist(*, bridge: str, subnet: str, data: Path) -> dict[str, Any]:
    """A bridge network for the pods, no masquerading: nothing leaves the machine."""
    return {
        "cniVersion": "1.0.0",
        "name": "tpf-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def make_pki(pki: Path, *, ip: str, service_range: str) -> Path:
    """A CA and the API server's serving certificate for every name pods use to reach it
    (the node address, the ``kubernetes`` Service's IP and names); returns ``pki``."""
    pki.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt"),
            "-subj", "/CN=tpf-node-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(pki / "apiserver.key"),
            "-out", str(pki / "apiserver.csr"), "-subj", "/CN=kube-apiserver")  # fmt: skip
    service_ip = service_range.split("/")[0].rsplit(".", 1)[0] + ".1"
    (pki / "san.ext").write_text(
        "subjectAltName=DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc,DNS:localhost,"
        f"IP:{ip},IP:127.0.0.1,IP:{service_ip}\n"
    )
    openssl("x509", "-req", "-in", str(pki / "apiserver.csr"), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "2",
            "-extfile", str(pki / "san.ext"), "-out", str(pki / "apiserver.crt"))  # fmt: skip
    return pki


def containerd_config(*, base: Path, socket: Path, sandbox_image: str, cni_conf_dir: Path) -> str:
    """containerd of this node only: its own root, state and socket (a containerd the
    machine may run is never touched)."""
    return f"""version = 2
root = "{base / "root"}"
state = "{base / "state"}"
[grpc]
  address = "{socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # No process here has CAP_SYS_RESOURCE: a negative oom_score_adj would fail runc init.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      # PID 1 is not systemd here: cgroupfs, as kubelet's cgroupDriver.
      SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
"""


def kubelet_config(*, socket: Path, address: str, healthz_port: int) -> str:
    """kubelet's configuration: the cgroupfs driver, the API on the node address only
    (anonymous, AlwaysAllow: a test node that only the API server on this machine talks
    to), eviction thresholds low enough for a shared disk."""
    return f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://{socket}
failSwapOn: false
address: {address}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: /etc/resolv.conf
serializeImagePulls: false
"""
