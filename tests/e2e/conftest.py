"""The kind end-to-end suite: the real image, installed by the real chart, on kind nodes.

``scripts/e2e-kind.sh`` (``make e2e``) creates the cluster (tests/e2e/kind-config.yaml),
builds and loads the image, installs charts/tpfilter, waits until the DaemonSet is ready
on every node and then runs ``pytest tests/e2e -m e2e`` with:

* ``TPFILTER_E2E_KUBECONFIG``: the cluster's kubeconfig (a file of its own);
* ``TPFILTER_E2E_NAMESPACE`` / ``TPFILTER_E2E_RELEASE``: where the chart is installed;
* ``TPFILTER_E2E_ARTIFACTS``: where failure diagnostics are written (optional).

Without Docker (as on the development machines, which have only the docker CLI) kind
cannot run, and the whole suite is skipped with the reason. On failure each test prints,
for every agent pod, ``bpftool map show``, ``tpfilter status``, its logs and
``kubectl describe`` (and writes them to the artifacts directory).
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kindkube import Agents, Kube

HERE = Path(__file__).resolve().parent
RUN_HINT = "run `make e2e` / `bash scripts/e2e-kind.sh` where Docker is"


@functools.cache
def environment_problem() -> str | None:
    """Why the suite cannot run here, or None."""
    docker = shutil.which("docker")
    if docker is None:
        return f"no docker CLI on this machine: kind cannot run; {RUN_HINT}"
    try:
        info = subprocess.run(
            [docker, "info"], capture_output=True, text=True, timeout=30, check=False
        )
        docker_ok = info.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        docker_ok = False
    if not docker_ok:
        return f"no Docker engine on this machine: kind cannot run; {RUN_HINT}"
    if shutil.which("kind") is None:
        return f"kind is not installed (go install sigs.k8s.io/kind@latest); {RUN_HINT}"
    if shutil.which("kubectl") is None:
        return f"kubectl is not installed; {RUN_HINT}"
    if not os.environ.get("TPFILTER_E2E_KUBECONFIG"):
        return (
            "no e2e cluster: TPFILTER_E2E_KUBECONFIG is unset; the suite runs inside "
            "scripts/e2e-kind.sh, which creates the kind cluster, loads the image and "
            f"installs the chart; {RUN_HINT}"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if item.path.is_relative_to(HERE)]
    if not ours:
        return
    reason = environment_problem()
    if reason is None:
        return
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kube() -> Kube:
    return Kube(kubeconfig=os.environ["TPFILTER_E2E_KUBECONFIG"])


@pytest.fixture(scope="session")
def agents(kube: Kube) -> Agents:
    return Agents(
        kube=kube,
        namespace=os.environ.get("TPFILTER_E2E_NAMESPACE", "tpfilter-system"),
        release=os.environ.get("TPFILTER_E2E_RELEASE", "tpfilter"),
    )


@pytest.fixture(scope="module")
def test_namespace(kube: Kube) -> Iterator[str]:
    name = f"tpf-e2e-{secrets.token_hex(3)}"
    kube.run("create", "namespace", name)
    yield name
    kube.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(autouse=True)
def diagnostics(request: pytest.FixtureRequest, kube: Kube, agents: Agents) -> Iterator[None]:
    """On failure, print (and save) what explains it: maps, agent status, logs, describe."""
    yield
    report = getattr(request.node, "report_call", None)
    if report is None or not report.failed:
        return
    namespaces = [agents.namespace]
    if "test_namespace" in request.fixturenames:
        namespaces.append(request.getfixturevalue("test_namespace"))
    text = collect_diagnostics(kube, agents, namespaces)
    print(text)
    artifacts = os.environ.get("TPFILTER_E2E_ARTIFACTS")
    if artifacts:
        path = Path(artifacts) / (re.sub(r"[^\w.-]+", "_", request.node.nodeid) + ".txt")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"diagnostics saved to {path}")


def collect_diagnostics(kube: Kube, agents: Agents, namespaces: list[str]) -> str:
    sections: list[tuple[str, subprocess.CompletedProcess[str] | str]] = []

    def kubectl(title: str, *args: str) -> None:
        try:
            sections.append((title, kube.run(*args, check=False, timeout=60)))
        except (OSError, subprocess.TimeoutExpired) as exc:
            sections.append((title, f"failed: {exc}"))

    kubectl("nodes", "get", "nodes", "-o", "wide")
    kubectl("all pods", "get", "pods", "-A", "-o", "wide")
    kubectl("policies", "get", "tracingpolicies,tracingpoliciesnamespaced", "-A", "-o", "yaml")
    kubectl(
        "agent DaemonSet", "-n", agents.namespace, "describe", "daemonset", "-l", agents.selector
    )
    try:
        pods = agents.pods()
    except (AssertionError, OSError, subprocess.TimeoutExpired) as exc:
        pods = []
        sections.append(("agent pods", f"failed: {exc}"))
    for pod in pods:
        name, node = pod["metadata"]["name"], pod["spec"].get("nodeName", "?")
        ns = agents.namespace
        in_pod = ("-n", ns, "exec", name, "-c", "agent", "--")
        kubectl(f"{node} {name}: bpftool map show", *in_pod, "bpftool", "map", "show")
        pin = agents.flag("pin-dir", "/sys/fs/bpf/tpfilter")
        kubectl(
            f"{node} {name}: outer map",
            *in_pod,
            "bpftool",
            "map",
            "dump",
            "pinned",
            f"{pin}/policy_filter_maps",
        )
        kubectl(f"{node} {name}: tpfilter status", *in_pod, "tpfilter", "status", *agents.dirs)
        kubectl(f"{node} {name}: logs", "-n", ns, "logs", name, "-c", "agent", "--tail=300")
        kubectl(
            f"{node} {name}: previous logs",
            "-n",
            ns,
            "logs",
            name,
            "-c",
            "agent",
            "--previous",
            "--tail=100",
        )
        kubectl(f"{node} {name}: describe", "-n", ns, "describe", "pod", name)
    for ns in namespaces[1:]:
        kubectl(f"describe pods in {ns}", "-n", ns, "describe", "pods")
    kubectl("events", "get", "events", "-A", "--sort-by=.lastTimestamp")

    lines = ["", "=" * 30 + " e2e diagnostics " + "=" * 30]
    for title, result in sections:
        lines.append(f"----- {title}")
        if isinstance(result, str):
            lines.append(result)
        else:
            lines.append((result.stdout + result.stderr).rstrip() or f"(exit {result.returncode})")
    return "\n".join(lines)
