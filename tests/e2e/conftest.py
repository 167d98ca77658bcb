"""The e2e suite: tpfilter installed as users install it, on two backends.

Every test takes the ``cluster`` fixture, a :class:`tpfilter_dev.e2ecluster.E2ECluster`
installed with ``helm install`` of charts/, and runs once per backend:

* ``realnode``: a real kubelet + containerd + runc node on this machine
  (:mod:`tpfilter_dev.realnode`), the agent image built without Docker
  (scripts/build-images.sh), installed by the fixture (~15 s for the node, ~20 s more for
  the agent). Runs in ``scripts/test.sh`` (root); skipped, with the reason, elsewhere.
* ``kind``: the cluster that ``scripts/e2e-kind.sh`` (``make e2e``) creates, builds and
  installs where Docker is, then runs ``pytest tests/e2e -m kind`` with
  ``TPFILTER_E2E_KUBECONFIG`` (and ``_NAMESPACE``, ``_RELEASE``, ``_UBUNTU_IMAGE``,
  ``_ARTIFACTS``) set. Skipped, with the reason, on machines without a Docker engine.

A test that only one backend can run says so with ``@pytest.mark.backends(name,
reason=...)``, and is skipped on the other with that reason. Tests run in file order on
each backend (pytest groups them by the session fixture's parameter): the last two roll the
agent over with ``helm upgrade`` and remove it with ``helm uninstall``.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tpfilter_dev.e2ecluster import E2ECluster

KIND_HINT = "run `make e2e` / `bash scripts/e2e-kind.sh` where Docker is"


@functools.cache
def realnode_problem() -> str | None:
    """Why the real node cannot run here, or None (on this project's machines: None)."""
    if os.geteuid() != 0:
        return "needs root (kubelet, containerd, BPF maps)"
    for tool in ("containerd", "runc", "ctr", "kubectl", "helm", "bpftool"):
        if shutil.which(tool) is None:
            return f"{tool} not found: run scripts/install.sh and scripts/build-k8s-bins.sh"
    return None


@functools.cache
def kind_problem() -> str | None:
    """Why the kind backend cannot run here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return f"no docker CLI on this machine: kind cannot run; {KIND_HINT}"
    try:
        info = subprocess.run([docker, "info"], capture_output=True, timeout=30, check=False)
        docker_ok = info.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        docker_ok = False
    if not docker_ok:
        return f"no Docker engine on this machine (docker info fails): kind cannot run; {KIND_HINT}"
    for tool in ("kind", "kubectl", "helm"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed; {KIND_HINT}"
    if not os.environ.get("TPFILTER_E2E_KUBECONFIG"):
        return (
            "no kind cluster: TPFILTER_E2E_KUBECONFIG is unset; the kind backend runs inside "
            "scripts/e2e-kind.sh, which creates the cluster, loads the images and installs "
            f"the chart; {KIND_HINT}"
        )
    return None


PROBLEMS = {"realnode": realnode_problem, "kind": kind_problem}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("cluster") if callspec else None
        if backend is None:
            continue
        item.add_marker(pytest.mark.e2e)
        only = item.get_closest_marker("backends")
        if only is not None and backend not in only.args:
            item.add_marker(pytest.mark.skip(reason=f"{backend}: {only.kwargs['reason']}"))
            continue
        problem = PROBLEMS[backend]()
        if problem:
            item.add_marker(pytest.mark.skip(reason=f"{backend}: {problem}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


# Module, not session: the node (kubelet, containerd, the agent with its programs on every
# exec) goes when the e2e tests are done, instead of living on through the rest of the run
# (about an hour of kernel tests and the VM, which it slowed and one of which it blocked:
# two real nodes cannot run on one machine).
@pytest.fixture(
    scope="module",
    params=[
        pytest.param("realnode", marks=pytest.mark.realnode),
        pytest.param("kind", marks=pytest.mark.kind),
    ],
)
def cluster(request: pytest.FixtureRequest) -> Iterator[E2ECluster]:
    if request.param == "realnode":
        yield from _realnode()
    else:
        from tpfilter_dev.kindcluster import KindCluster

        kind = KindCluster()
        try:
            yield kind
        finally:
            kind.close()


def _realnode() -> Iterator[E2ECluster]:
    from tpfilter_dev.realcluster import Cluster, build_images, remove_agent_leftovers
    from tpfilter_dev.realnode import RealNode

    images = build_images()
    with RealNode(images=tuple(images.values())) as node:
        c = Cluster(node)
        try:
            c.helm_install()
            yield c
        finally:
            subprocess.run(
                ["helm", f"--kubeconfig={node.kubeconfig}", "uninstall", c.release, "-n",
                 c.release_ns, "--wait", "--timeout", "60s"],
                capture_output=True,
                check=False,
            )  # fmt: skip
    remove_agent_leftovers()


@pytest.fixture
def ns(cluster: E2ECluster) -> Iterator[str]:
    """A namespace of the test's own, deleted with its pods afterwards: the seed policies
    are cluster-wide, so another test's pods must not be left to match them."""
    name = cluster.namespace()
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", check=False)


@pytest.fixture(autouse=True)
def diagnostics(request: pytest.FixtureRequest) -> Iterator[None]:
    """On failure, print (and with TPFILTER_E2E_ARTIFACTS, save) the cluster's state."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed or "cluster" not in request.fixturenames:
        return
    cluster: E2ECluster = request.getfixturevalue("cluster")
    text = cluster.diagnostics()
    print(text)
    artifacts = os.environ.get("TPFILTER_E2E_ARTIFACTS")
    if artifacts:
        path = Path(artifacts) / (re.sub(r"[^\w.-]+", "_", request.node.nodeid) + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"diagnostics saved to {path}")
