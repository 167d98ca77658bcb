"""The Helm chart in charts/tpfilter: its CRDs match crds/, it lints, and it renders right.

The CRD check needs nothing. The rest runs ``helm lint`` and ``helm template`` and parses
what they print: helm comes from ``scripts/build-k8s-bins.sh`` (cached in
``${TPFILTER_CACHE:-/var/cache/tpfilter}/bin``) or PATH; the tests skip only when neither
has one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tpfilter"
CACHED_HELM = Path(os.environ.get("TPFILTER_CACHE", "/var/cache/tpfilter")) / "bin" / "helm"

RELEASE = "tpf"
NAMESPACE = "tpfilter-system"
READ_VERBS = {"get", "list", "watch"}
GUARDED = {"pods", "tracingpolicies", "tracingpoliciesnamespaced"}

Doc = dict[str, Any]


# -- CRDs (no helm needed) ---------------------------------------------------------------


def test_chart_crds_are_identical_to_generated_crds() -> None:
    generated = {p.name: p.read_bytes() for p in sorted((ROOT / "crds").glob("*.yaml"))}
    in_chart = {p.name: p.read_bytes() for p in sorted((CHART / "crds").glob("*.yaml"))}
    assert generated, "no crds/*.yaml"
    assert in_chart.keys() == generated.keys(), "run scripts/sync-chart-crds.sh"
    drifted = [name for name in generated if in_chart[name] != generated[name]]
    assert not drifted, f"{drifted} differ from crds/: run scripts/sync-chart-crds.sh"
    assert {p.name for p in (CHART / "crds").iterdir()} == generated.keys(), (
        "charts/tpfilter/crds holds files that are not generated CRDs"
    )


# -- helm --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> str:
    if os.access(CACHED_HELM, os.X_OK):
        return str(CACHED_HELM)
    found = shutil.which("helm")
    if found is None:
        pytest.skip(f"helm not found ({CACHED_HELM} or PATH): run scripts/build-k8s-bins.sh")
    return found


def _run(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def _set_args(values: Mapping[str, str]) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def render(
    helm: str,
    values: Mapping[str, str] | None = None,
    *,
    extra: Sequence[str] = (),
) -> list[Doc]:
    result = _run(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        *_set_args(values or {}),
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def only(docs: Sequence[Doc], kind: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s rendered"
    return found[0]


def agent_container(docs: Sequence[Doc]) -> Doc:
    containers = only(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["agent"]
    result: Doc = containers[0]
    return result


def mounts(docs: Sequence[Doc]) -> dict[str, tuple[Doc, Doc]]:
    """mountPath -> (volumeMount, volume)."""
    pod = only(docs, "DaemonSet")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in agent_container(docs)["volumeMounts"]}


def named(docs: Sequence[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind}s named {name}"
    return found[0]


AGENT = f"{RELEASE}-tpfilter"
CONTROLLER = f"{RELEASE}-tpfilter-controller"


def rules(docs: Sequence[Doc], role: str = AGENT) -> Iterator[tuple[str, str, set[str]]]:
    for rule in named(docs, "ClusterRole", role)["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                yield group, resource, set(rule["verbs"])


def test_lint(helm: str) -> None:
    for values in ({}, {"cgroupRoot": "/sys/fs/cgroup/unified", "tracefs": "true"}):
        result = _run(helm, "lint", "--strict", str(CHART), *_set_args(values))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 chart(s) failed" in result.stdout


def test_default_render_objects_and_labels(helm: str) -> None:
    docs = render(helm)
    assert sorted(d["kind"] for d in docs) == [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "DaemonSet",
        "Deployment",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "ServiceAccount",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "tpfilter"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"].startswith("tpfilter-")
        if doc["kind"] in ("ServiceAccount", "DaemonSet", "Deployment", "Role", "RoleBinding"):
            assert doc["metadata"]["namespace"] == NAMESPACE
    ds = only(docs, "DaemonSet")
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert "app.kubernetes.io/version" not in selector  # the selector is immutable

    account = named(docs, "ServiceAccount", AGENT)["metadata"]["name"]
    binding = named(docs, "ClusterRoleBinding", AGENT)
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == account
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
    ]
    assert binding["roleRef"]["name"] == AGENT
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == CONTROLLER
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        controller_binding = named(docs, kind, CONTROLLER)
        assert controller_binding["subjects"] == [
            {"kind": "ServiceAccount", "name": CONTROLLER, "namespace": NAMESPACE}
        ]
    controller_labels = deployment["spec"]["selector"]["matchLabels"]
    assert controller_labels["app.kubernetes.io/component"] == "controller"
    assert selector["app.kubernetes.io/component"] == "agent"


def test_default_daemonset(helm: str) -> None:
    docs = render(helm)
    ds = only(docs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    agent = agent_container(docs)

    assert agent["image"] == "tpfilter:0.1.0"
    assert agent["args"] == [
        "agent",
        "--pin-dir=/sys/fs/bpf/tpfilter",
        "--state-dir=/run/tpfilter",
        "--max-policies=16384",
        "--max-cgroups-per-policy=32768",
        "--resync-seconds=300",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--report-interval=5",
        "--report-counts-interval=60",
        "--report-refresh-seconds=3600",
        "--heartbeat-seconds=10",
    ]
    assert "command" not in agent  # the image's entrypoint script must run
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}

    assert agent["securityContext"]["privileged"] is True
    assert pod["hostPID"] is True  # the node's PID namespace is the agent's own
    assert pod.get("hostNetwork", False) is False
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    assert agent["resources"]["requests"].keys() == {"cpu", "memory"}
    assert "memory" in agent["resources"]["limits"]

    port = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert port == {"healthz": 8080}
    for probe in ("livenessProbe", "readinessProbe"):
        assert agent[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}

    m = mounts(docs)
    bpf_mount, bpf_vol = m["/sys/fs/bpf"]
    assert bpf_mount["mountPropagation"] == "Bidirectional"
    assert bpf_vol["hostPath"] == {"path": "/sys/fs/bpf", "type": "DirectoryOrCreate"}
    cg_mount, cg_vol = m["/sys/fs/cgroup"]
    assert cg_mount["readOnly"] is True
    assert cg_mount.get("mountPropagation") in (None, "HostToContainer")
    assert cg_vol["hostPath"]["path"] == "/sys/fs/cgroup"
    state_mount, state_vol = m["/run/tpfilter"]
    assert not state_mount.get("readOnly", False)
    assert state_vol["hostPath"] == {"path": "/run/tpfilter", "type": "DirectoryOrCreate"}
    for host_dir in ("/lib/modules", "/usr/src"):
        mount, volume = m[f"/host{host_dir}"]
        assert mount["readOnly"] is True
        assert volume["hostPath"]["path"] == host_dir
    assert "/sys/kernel/tracing" not in m
    assert env["TPFILTER_HOST_ROOT"]["value"] == "/host"
    assert env["TPFILTER_MOUNT_BPFFS"]["value"] == "1"
    assert "KUBERNETES_SERVICE_HOST" not in env  # the Service, as in any cluster


def test_overrides(helm: str) -> None:
    docs = render(
        helm,
        {
            "image.repository": "registry.example/tpfilter",
            "image.tag": "e2e",
            "image.pullPolicy": "Never",
            "pinDir": "/sys/fs/bpf/other/",
            "stateDir": "/var/run/tpf",
            "cgroupRoot": "/sys/fs/cgroup/unified",
            "kubepodsRoots[0]": "kubepods.slice",
            "kubepodsRoots[1]": "kubelet.slice/kubelet-kubepods.slice",
            "limits.maxPolicies": "100000",
            "limits.maxCgroupsPerPolicy": "4096",
            "resyncSeconds": "60",
            "livenessPort": "9876",
            "livenessBindAddress": "::",
            "verbose": "true",
            "extraArgs[0]": "--something=1",
            "hostKernelHeaders": "false",
            "tracefs": "true",
            "mountBpffs": "false",
            "priorityClassName": "",
            "nodeSelector.pool": "bpf",
            "report.enabled": "false",
            "kubernetesServiceHost": "192.0.2.10",
            "kubernetesServicePort": "6443",
        },
        extra=["--set-json", "tolerations=[]"],
    )
    pod = only(docs, "DaemonSet")["spec"]["template"]["spec"]
    agent = agent_container(docs)
    assert agent["image"] == "registry.example/tpfilter:e2e"
    assert agent["imagePullPolicy"] == "Never"
    assert agent["args"] == [
        "agent",
        "--pin-dir=/sys/fs/bpf/other",
        "--state-dir=/var/run/tpf",
        "--max-policies=100000",  # not 1e+05: large numbers must stay integers
        "--max-cgroups-per-policy=4096",
        "--resync-seconds=60",
        "--liveness=http://[::]:9876/healthz",
        "--no-report",
        "--cgroup-root=/sys/fs/cgroup/unified",
        "--kubepods-root=kubepods.slice",
        "--kubepods-root=kubelet.slice/kubelet-kubepods.slice",
        "--verbose",
        "--something=1",
    ]
    assert {p["name"]: p["containerPort"] for p in agent["ports"]} == {"healthz": 9876}
    m = mounts(docs)
    assert m["/var/run/tpf"][1]["hostPath"]["path"] == "/var/run/tpf"
    assert "/run/tpfilter" not in m
    assert not any(path.startswith("/host/") for path in m)
    assert m["/sys/kernel/tracing"][1]["hostPath"]["path"] == "/sys/kernel/tracing"
    assert m["/sys/fs/bpf"][0]["mountPropagation"] == "Bidirectional"
    env = {e["name"]: e for e in agent["env"]}
    assert env["TPFILTER_HOST_ROOT"]["value"] == ""
    assert env["TPFILTER_MOUNT_BPFFS"]["value"] == "0"
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["KUBERNETES_SERVICE_HOST"]["value"] == "192.0.2.10"
    assert env["KUBERNETES_SERVICE_PORT"]["value"] == "6443"
    assert "priorityClassName" not in pod
    assert "tolerations" not in pod
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "bpf"}


def test_agent_role_is_read_only_but_for_its_report(helm: str) -> None:
    granted = list(rules(render(helm)))
    for group, resource, verbs in granted:
        assert "*" not in verbs and resource != "*" and group != "*", (group, resource, verbs)
        if resource in GUARDED or resource.split("/")[0] in GUARDED:
            assert verbs <= READ_VERBS, f"write verbs on {resource}: {verbs - READ_VERBS}"
    by_resource = {(g, r): v for g, r, v in granted}
    assert by_resource[("", "pods")] >= {"list", "watch"}
    for plural in ("tracingpolicies", "tracingpoliciesnamespaced"):
        assert by_resource[("cilium.io", plural)] >= {"list", "watch"}
    # its own Node's labels, for nodeSelector: read only
    assert {"get", "list", "watch"} <= by_resource[("", "nodes")] <= READ_VERBS
    # kopf's resource observer watches CRDs; posting is disabled, so no events.
    assert by_resource[("apiextensions.k8s.io", "customresourcedefinitions")] == {"list", "watch"}
    assert ("", "events") not in by_resource
    assert ("events.k8s.io", "events") not in by_resource
    # Its node's report: no list; delete for its old shards (the admission policy binds
    # every verb to its node).
    assert by_resource[("tpfilter.io", "tracingpolicynodereports")] == {
        "get",
        "create",
        "patch",
        "delete",
    }
    writes = {(g, r) for g, r, v in granted if v - READ_VERBS}
    assert writes == {("tpfilter.io", "tracingpolicynodereports")}
    assert not any(r.endswith("/status") for _, r, _ in granted)
    no_report = list(rules(render(helm, {"report.enabled": "false"})))
    assert all(v <= READ_VERBS for _, _, v in no_report)


def test_controller_deployment(helm: str) -> None:
    docs = render(helm)
    deployment = only(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["command"] == ["tpfilter"]
    assert container["args"] == [
        "controller",
        "--interval=2",
        "--stale-after=180",
        "--max-listed-nodes=20",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--leader-elect",
        f"--lease-name={CONTROLLER}",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert "hostPID" not in pod and "volumes" not in pod
    direct = render(helm, {"kubernetesServiceHost": "192.0.2.10", "kubernetesServicePort": "6443"})
    controller_pod = only(direct, "Deployment")["spec"]["template"]["spec"]
    direct_env = {e["name"]: e.get("value") for e in controller_pod["containers"][0]["env"]}
    assert direct_env["KUBERNETES_SERVICE_HOST"] == "192.0.2.10"
    assert direct_env["KUBERNETES_SERVICE_PORT"] == "6443"
    single = render(helm, {"controller.replicas": "1", "controller.leaderElection": "false"})
    args = only(single, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--leader-elect" not in args
    verbs = [r["verbs"] for r in named(single, "Role", CONTROLLER)["rules"]]
    assert verbs == [["list"]]  # the node Leases only: no Lease of its own
    off = render(helm, {"controller.enabled": "false"})
    assert not [d for d in off if "controller" in d["metadata"]["name"]]


def test_controller_rbac_is_least_privilege(helm: str) -> None:
    docs = render(helm)
    granted = {(g, r): v for g, r, v in rules(docs, CONTROLLER)}
    assert all("*" not in v for v in granted.values())
    for plural in ("tracingpolicies", "tracingpoliciesnamespaced"):
        assert granted[("cilium.io", plural)] == READ_VERBS  # never the spec
        assert granted[("cilium.io", f"{plural}/status")] == {"patch"}  # only the status
    assert granted[("tpfilter.io", "tracingpolicynodereports")] == READ_VERBS | {"delete"}
    assert granted[("", "events")] == {"create"}
    assert granted[("", "nodes")] == {"list", "watch"}
    assert ("", "pods") not in granted
    role = named(docs, "Role", CONTROLLER)
    assert role["metadata"]["namespace"] == NAMESPACE
    by_verbs = {tuple(r["verbs"]): r for r in role["rules"]}
    assert by_verbs[("get", "update")]["resourceNames"] == [CONTROLLER]
    assert "resourceNames" not in by_verbs[("create",)]  # create cannot be name-restricted
    assert ("list",) in by_verbs  # the agents' node Leases
    assert all(r["resources"] == ["leases"] for r in role["rules"])
    # The agent: its node Lease, create and patch, in the release namespace only.
    agent_role = named(docs, "Role", AGENT)
    assert agent_role["rules"] == [
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["create", "patch"],
        }
    ]


def test_node_bound_reports_admission_policy(helm: str) -> None:
    docs = render(helm)
    policy = only(docs, "ValidatingAdmissionPolicy")
    binding = only(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    resources = {r["resources"][0]: r for r in spec["matchConstraints"]["resourceRules"]}
    assert resources.keys() == {"tracingpolicynodereports", "leases"}
    assert set(resources["leases"]["operations"]) == {"CREATE", "UPDATE"}
    assert set(resources["tracingpolicynodereports"]["operations"]) == {
        "CREATE",
        "UPDATE",
        "DELETE",
    }
    [condition] = spec["matchConditions"]
    assert f"system:serviceaccount:{NAMESPACE}:{AGENT}" in condition["expression"]
    [validation] = spec["validations"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "authentication.kubernetes.io/node-name" in variables["node"]
    assert "oldObject" in variables["target"]
    assert "variables.target.nodeName == variables.node" in validation["expression"]
    assert 'startsWith(variables.node + ".shard-")' in validation["expression"]
    off = render(helm, {"report.nodeBound": "false"})
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_rbac_and_account_can_be_disabled(helm: str) -> None:
    docs = render(
        helm, {"rbac.create": "false", "serviceAccount.create": "false", "serviceAccount.name": "x"}
    )
    assert sorted(d["kind"] for d in docs) == [
        "DaemonSet",
        "Deployment",
        "ServiceAccount",  # the controller's
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ]
    assert only(docs, "DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"] == "x"


def test_crds_are_shipped(helm: str) -> None:
    docs = render(helm, extra=["--include-crds"])
    crds = {d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"}
    assert crds == {
        "tracingpolicies.cilium.io",
        "tracingpoliciesnamespaced.cilium.io",
        "tracingpolicynodereports.tpfilter.io",
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        # values.schema.json
        ({"pinDir": "/var/lib/tpfilter"}, "at '/pinDir'"),
        ({"pinDir": "/sys/fs/bpf"}, "at '/pinDir'"),
        ({"stateDir": "run/tpfilter"}, "at '/stateDir'"),
        ({"limits.maxPolicy": "5"}, "additional properties 'maxPolicy' not allowed"),
        ({"resyncSeconds": "0"}, "at '/resyncSeconds'"),
        ({"image.pullPolicy": "Sometimes"}, "at '/image/pullPolicy'"),
        # the templates
        (
            {"serviceAccount.create": "false"},
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
    ],
)
def test_bad_values_fail(helm: str, values: dict[str, str], message: str) -> None:
    result = _run(helm, "template", RELEASE, str(CHART), *_set_args(values))
    assert result.returncode != 0
    assert message in result.stderr


def test_kube_version_constraint(helm: str) -> None:
    ok = _run(helm, "template", RELEASE, str(CHART), "--kube-version", "1.27.0")
    assert ok.returncode == 0, ok.stderr
    old = _run(helm, "template", RELEASE, str(CHART), "--kube-version", "1.26.15")
    assert old.returncode != 0
    assert "kubeVersion" in old.stderr or "incompatible" in old.stderr
