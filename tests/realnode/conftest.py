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
import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tpfilter_dev.realcluster import (
    RELEASE,
    RELEASE_NS,
    Cluster,
    build_images,
    remove_agent_leftovers,
)
from tpfilter_dev.realnode import RealNode


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
    remove_agent_leftovers()


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
