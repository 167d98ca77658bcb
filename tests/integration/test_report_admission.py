"""The chart's RBAC and ValidatingAdmissionPolicy on the real API server: an agent writes
(and deletes) only its own node's report and its shards.

The agent's credentials are made as the kubelet makes them: a service-account token bound
to the agent's Pod (TokenRequest with a boundObjectRef), which the API server gives the
pod's node name as the extra claim ``authentication.kubernetes.io/node-name``. The chart's
objects are the ones ``helm template`` renders, applied as they are.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from harness import eventually

from conftest import ROOT, Cluster, kubectl
from tpfilter.models import GROUP as POLICY_GROUP
from tpfilter.models import VERSION as POLICY_VERSION
from tpfilter.nodelease import lease_body
from tpfilter.reporter import GROUP, PLURAL, VERSION, report_body
from tpfilter.reportshards import shard_body, shard_name
from tpfilter_dev.controlplane import ControlPlane, binary

pytestmark = pytest.mark.apiserver

KINDS = {
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
}


def helm() -> str:
    return str(binary("helm"))


@pytest.fixture
def chart_objects(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """The chart's agent RBAC and admission policy, in a namespace of their own."""
    ns = cluster.namespace()
    release = f"r{secrets.token_hex(3)}"
    rendered = subprocess.run(
        [helm(), "template", release, str(ROOT / "charts" / "tpfilter"), "--namespace", ns],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in KINDS]
    docs = [d for d in docs if "controller" not in d["metadata"]["name"]]
    text = yaml.safe_dump_all(docs)
    kubectl(cluster.plane, "apply", "-f", "-", stdin=text)
    yield ns, f"{release}-tpfilter"
    kubectl(cluster.plane, "delete", "--ignore-not-found", "-f", "-", stdin=text)


def agent_client(plane: ControlPlane, cluster: Cluster, ns: str, account: str, node: str) -> Any:
    """An API client with the token of an agent pod running on ``node``."""
    import kubernetes

    cluster.core.create_node({"metadata": {"name": node}})
    pod = cluster.core.create_namespaced_pod(
        ns,
        {
            "metadata": {"name": f"agent-{node}"},
            "spec": {
                "nodeName": node,
                "serviceAccountName": account,
                "containers": [{"name": "agent", "image": "tpfilter"}],
            },
        },
    )
    request = {
        "spec": {
            "audiences": [f"{plane.url}/"],
            "expirationSeconds": 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            },
        }
    }
    token = cluster.core.create_namespaced_service_account_token(account, ns, request)
    config = kubernetes.client.Configuration()
    config.host = plane.url
    config.verify_ssl = False
    config.api_key = {"authorization": f"Bearer {token.status.token}"}
    return kubernetes.client.ApiClient(config)


def status_of(call: Any) -> int:
    try:
        call()
    except Exception as exc:
        return int(getattr(exc, "status", 0))
    return 200


def test_an_agent_writes_only_its_own_nodes_report(
    cluster: Cluster, chart_objects: tuple[str, str]
) -> None:
    import kubernetes

    ns, account = chart_objects
    mine, other = f"vap-{secrets.token_hex(3)}", f"vap-{secrets.token_hex(3)}"
    client = agent_client(cluster.plane, cluster, ns, account, mine)
    as_agent = kubernetes.client.CustomObjectsApi(client)
    try:
        # The API server loads a new admission policy asynchronously: probe with dry runs
        # (admission runs for them too; nothing is stored) until it refuses.
        def create_refused() -> bool:
            body = report_body(other, [], 0.0)
            return status_of(
                lambda: as_agent.create_cluster_custom_object(
                    GROUP, VERSION, PLURAL, body, dry_run="All"
                )
            ) in (403, 422)

        eventually(create_refused, timeout=30, interval=0.5, what="another node's report refused")
        try:
            as_agent.create_cluster_custom_object(
                GROUP, VERSION, PLURAL, report_body(other, [], 0.0)
            )
        except Exception as exc:
            assert "its own node's report" in str(getattr(exc, "body", exc))
            assert mine in str(getattr(exc, "body", exc))
        else:
            raise AssertionError("an agent created another node's report")

        # Its own node's report: create, read, patch.
        own = report_body(mine, [], 0.0)
        as_agent.create_cluster_custom_object(GROUP, VERSION, PLURAL, own)
        assert as_agent.get_cluster_custom_object(GROUP, VERSION, PLURAL, mine)["nodeName"] == mine
        as_agent.patch_cluster_custom_object(GROUP, VERSION, PLURAL, mine, {"policies": []})

        # Its own shards: created, patched, deleted (a change of the shard count).
        mine_shard = shard_name(mine, 1, 2)
        as_agent.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, shard_body(mine, [], 0.0, index=1, count=2)
        )
        as_agent.patch_cluster_custom_object(GROUP, VERSION, PLURAL, mine_shard, {"policies": []})
        assert (
            as_agent.get_cluster_custom_object(GROUP, VERSION, PLURAL, mine_shard)["shard"]["count"]
            == 2
        )
        as_agent.delete_cluster_custom_object(GROUP, VERSION, PLURAL, mine_shard)
        # A shard named for another node (and saying so) is refused.
        other_shard = shard_body(other, [], 0.0, index=0, count=2)
        assert status_of(
            lambda: as_agent.create_cluster_custom_object(GROUP, VERSION, PLURAL, other_shard)
        ) in (403, 422)
        # A report whose nodeName is another node, under a name of its own node's shape:
        # the CRD refuses a name that is not its nodeName's...
        lying = shard_body(other, [], 0.0, index=0, count=2)
        lying["metadata"]["name"] = shard_name(mine, 0, 2)
        assert status_of(
            lambda: as_agent.create_cluster_custom_object(GROUP, VERSION, PLURAL, lying)
        ) in (403, 422)
        # ...but a node may be named "<mine>.shard-0-of-2": its report passes the CRD and
        # the name rule of <mine>'s token; only the nodeName rule refuses it.
        dotted = report_body(shard_name(mine, 0, 2), [], 0.0)
        try:
            as_agent.create_cluster_custom_object(GROUP, VERSION, PLURAL, dotted)
        except Exception as exc:
            assert getattr(exc, "status", 0) in (403, 422)
            assert "its own node's report" in str(getattr(exc, "body", exc))
            assert f"of node {mine}.shard-0-of-2" in str(getattr(exc, "body", exc))
        else:
            raise AssertionError("an agent wrote a report whose nodeName is another node")

        # Another node's existing report cannot be patched either (admin creates it).
        cluster.custom.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, report_body(other, [], 0.0)
        )
        patch = {"summary": {"ready": 1}}
        assert status_of(
            lambda: as_agent.patch_cluster_custom_object(GROUP, VERSION, PLURAL, other, patch)
        ) in (403, 422)
        # Its node Lease (liveness) in the release namespace: its own only.
        leases = kubernetes.client.CoordinationV1Api(client)
        leases.create_namespaced_lease(ns, lease_body(mine, ns, 0.0, 10.0))
        leases.patch_namespaced_lease(mine, ns, lease_body(mine, ns, 1.0, 10.0))
        assert status_of(
            lambda: leases.create_namespaced_lease(ns, lease_body(other, ns, 0.0, 10.0))
        ) in (403, 422)
        # Another node's report and shards: not deleted (admission), its own: deleted.
        cluster.custom.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, shard_body(other, [], 0.0, index=1, count=2)
        )
        for name in (other, shard_name(other, 1, 2)):
            assert status_of(
                lambda n=name: as_agent.delete_cluster_custom_object(GROUP, VERSION, PLURAL, n)
            ) in (403, 422)
            assert cluster.custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        assert (
            status_of(lambda: as_agent.delete_cluster_custom_object(GROUP, VERSION, PLURAL, mine))
            == 200
        )
        # RBAC: no list, no policy status.
        assert status_of(lambda: as_agent.list_cluster_custom_object(GROUP, VERSION, PLURAL)) == 403
        assert (
            status_of(
                lambda: as_agent.patch_cluster_custom_object_status(
                    POLICY_GROUP, POLICY_VERSION, "tracingpolicies", "any", {"status": {}}
                )
            )
            == 403
        )
    finally:
        for node in (mine, other):
            for name in (node, shard_name(node, 0, 2), shard_name(node, 1, 2)):
                status_of(
                    lambda n=name: cluster.custom.delete_cluster_custom_object(
                        GROUP, VERSION, PLURAL, n
                    )
                )
            status_of(lambda n=node: cluster.core.delete_node(n))
