"""Fixtures: a real etcd + kube-apiserver for the session; per test, a node of our own.

Each test gets a fresh node name, cgroup prefix (inside the real cgroup v2 mount), bpffs pin
directory and state directory, so tests never see each other's maps or pods, and everything
they made is removed afterwards, also when they fail. ``make_node`` and ``make_controller``
start as many nodes (agents) and ``tpfilter controller`` processes as a test needs, stopped
and removed after it.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tpfilter.bpfmaps import probe
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.models import GROUP, VERSION, PolicyKind
from tpfilter_dev.controllerproc import ControllerProcess
from tpfilter_dev.controlplane import ControlPlane, ControlPlaneError, binary
from tpfilter_dev.localnode import LocalNode

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.apiserver


def _require_node_features() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests play a node: they need root (cgroups, BPF maps)")
    support = probe()
    if not support.ok:
        pytest.skip(f"this kernel lacks what the agent needs: {support}")


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    _require_node_features()
    try:
        binary("kube-apiserver")
        binary("etcd")
    except ControlPlaneError as exc:
        pytest.fail(str(exc))  # this machine can build them: a missing binary is an error
    with ControlPlane() as plane:
        plane.install_crds(ROOT / "crds")
        yield plane


def kubectl(
    plane: ControlPlane, *args: str, check: bool = True, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", f"--kubeconfig={plane.kubeconfig}", *args],
        check=check,
        capture_output=True,
        text=True,
        input=stdin,
    )


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Any:
    import kubernetes

    return kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))


class Cluster:
    """Convenience over the API for tests: namespaces, policies, cleanup."""

    def __init__(self, plane: ControlPlane, api_client: Any) -> None:
        import kubernetes

        self.plane = plane
        self.core: Any = kubernetes.client.CoreV1Api(api_client)
        self.custom: Any = kubernetes.client.CustomObjectsApi(api_client)
        self._policies: list[tuple[PolicyKind, str | None, str]] = []

    def namespace(self) -> str:
        name = f"ns-{secrets.token_hex(4)}"
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def apply_policy(
        self, kind: PolicyKind, name: str, spec: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind.value,
            "metadata": {"name": name},
            "spec": spec,
        }
        self._policies.append((kind, namespace, name))
        if kind is PolicyKind.NAMESPACED:
            assert namespace
            body["metadata"]["namespace"] = namespace
        scope = (namespace,) if namespace else ()
        verb = "namespaced" if namespace else "cluster"
        try:
            create = getattr(self.custom, f"create_{verb}_custom_object")
            return dict(create(GROUP, VERSION, *scope, kind.plural, body))
        except Exception as exc:
            if getattr(exc, "status", None) != 409:
                raise
        current = self.get_policy(kind, name, namespace)
        current["spec"] = spec  # replace the whole spec, as `kubectl apply` of a new one does
        replace = getattr(self.custom, f"replace_{verb}_custom_object")
        return dict(replace(GROUP, VERSION, *scope, kind.plural, name, current))

    def delete_policy(self, kind: PolicyKind, name: str, namespace: str | None = None) -> None:
        if kind is PolicyKind.NAMESPACED:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, name
            )
        else:
            self.custom.delete_cluster_custom_object(GROUP, VERSION, kind.plural, name)

    def get_policy(self, kind: PolicyKind, name: str, namespace: str | None = None) -> Any:
        if kind is PolicyKind.NAMESPACED:
            return self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, kind.plural, name
            )
        return self.custom.get_cluster_custom_object(GROUP, VERSION, kind.plural, name)

    def cleanup(self) -> None:
        for kind, namespace, name in self._policies:
            try:
                self.delete_policy(kind, name, namespace)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    raise


@pytest.fixture
def cluster(control_plane: ControlPlane, api_client: Any) -> Iterator[Cluster]:
    c = Cluster(control_plane, api_client)
    yield c
    c.cleanup()


class Node(LocalNode):
    """One node of our own: its kubelet stand-in, its agent, its maps, all unique names."""

    def __init__(
        self,
        *,
        plane: ControlPlane,
        api_client: Any,
        tmp: Path,
        driver: str = "systemd",
        runtime: str = "containerd",
    ) -> None:
        token = secrets.token_hex(4)
        super().__init__(
            plane=plane,
            api_client=api_client,
            name=f"node-{token}",
            cgroup_root=find_cgroup2_mount() / f"tpf-it-{token}",
            pin_dir=Path("/sys/fs/bpf") / f"tpf-it-{token}",
            work=tmp,
            labels={"kubernetes.io/hostname": f"node-{token}"},
            driver=driver,
            runtime=runtime,
        )


def _node(
    request: pytest.FixtureRequest,
    control_plane: ControlPlane,
    api_client: Any,
    tmp_path: Path,
    **kwargs: str,
) -> Iterator[Node]:
    node = Node(plane=control_plane, api_client=api_client, tmp=tmp_path, **kwargs)
    yield node
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n--- agent log ({node.name}) ---\n{node.agent.log(200)}")
    node.close()


@pytest.fixture
def node(
    request: pytest.FixtureRequest, control_plane: ControlPlane, api_client: Any, tmp_path: Path
) -> Iterator[Node]:
    yield from _node(request, control_plane, api_client, tmp_path)


@pytest.fixture(
    params=[("systemd", "cri-o"), ("cgroupfs", "containerd"), ("cgroupfs", "docker")],
    ids=lambda p: "-".join(p),
)
def other_layout_node(
    request: pytest.FixtureRequest, control_plane: ControlPlane, api_client: Any, tmp_path: Path
) -> Iterator[Node]:
    driver, runtime = request.param
    yield from _node(request, control_plane, api_client, tmp_path, driver=driver, runtime=runtime)


MakeNode = Callable[..., Node]
MakeController = Callable[..., ControllerProcess]


@pytest.fixture
def make_node(
    request: pytest.FixtureRequest, cluster: Cluster, api_client: Any, tmp_path: Path
) -> Iterator[MakeNode]:
    made: list[Node] = []

    def make(*, start: bool = True, labels: dict[str, str] | None = None, **agent: Any) -> Node:
        work = tmp_path / f"node{len(made)}"
        work.mkdir()
        node = Node(plane=cluster.plane, api_client=api_client, tmp=work)
        made.append(node)
        if labels:
            node.kubelet.core.patch_node(node.name, {"metadata": {"labels": labels}})
        for key, value in agent.items():
            setattr(node.agent, key, value)
        if start:
            node.agent.start()
        return node

    yield make
    failed = getattr(request.node, "rep_call", None)
    for node in made:
        if failed is not None and failed.failed:
            print(f"\n--- agent log ({node.name}) ---\n{node.agent.log(60)}")
        node.close()


@pytest.fixture
def make_controller(
    request: pytest.FixtureRequest, cluster: Cluster, tmp_path: Path
) -> Iterator[MakeController]:
    made: list[ControllerProcess] = []

    def make(**options: Any) -> ControllerProcess:
        log = tmp_path / f"controller{len(made)}.log"
        controller = ControllerProcess(kubeconfig=cluster.plane.kubeconfig, log_path=log, **options)
        made.append(controller)
        controller.start()
        return controller

    yield make
    failed = getattr(request.node, "rep_call", None)
    for controller in made:
        if failed is not None and failed.failed:
            print(f"\n--- controller log ---\n{controller.log(80)}")
        controller.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
