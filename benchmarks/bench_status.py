"""The controller at scale: 1,000 simulated nodes x 100 policies on a real API server.

Run as ``.venv/bin/python benchmarks/bench_status.py`` (needs the binaries of
scripts/build-k8s-bins.sh on PATH; no root). Prints what it measured; asserts nothing.

A simulated node is what the controller sees of a node: a Node object, its Lease and its
TracingPolicyNodeReport, written here through the API as an agent would write them
(1,000 agent processes do not fit on one machine). Measured:

* the size of one report (JSON as written) at 100 and 1,000 policies;
* ``tpfilter controller`` started on the whole picture: time until every policy shows
  all nodes Ready, status writes (one per policy is the least possible), CPU and RSS;
* a spec change rolling through: every node rewrites its report with the new
  generation; time to Ready again and status writes to that policy (coalesced);
* a restart of the controller: status writes (0 expected: nothing changed);
* the pure aggregation of one policy over 1,000 nodes, in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tpfilter.accept import Verdict
from tpfilter.aggregate import NodeReport, PolicyFacts, aggregate, seen
from tpfilter.models import GROUP, VERSION
from tpfilter.nodelease import lease_body
from tpfilter.reporter import GROUP as RG
from tpfilter.reporter import PLURAL as RP
from tpfilter.reporter import VERSION as RV
from tpfilter.reporter import report_body
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.controllerproc import ControllerProcess
from tpfilter_dev.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]


def entry(uid: str, name: str, generation: int) -> dict[str, Any]:
    return {
        "uid": uid,
        "kind": "TracingPolicy",
        "name": name,
        "generation": generation,
        "state": "Ready",
        "cgroups": 4,
        "pods": 2,
        "hooks": [{"hook": "sched/sched_process_exec", "program": "tracepoint"}],
    }


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS bytes) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=100)
    args = parser.parse_args()
    import urllib3

    urllib3.disable_warnings()  # the local API server's self-signed certificate
    n_nodes, n_policies = args.nodes, args.policies

    sizes = {}
    for count in (100, 1000):
        body = report_body(
            "ip-10-0-12-34.ec2.internal",
            [entry(str(uuid.uuid4()), f"policy-{i:04d}-audit-exec", 3) for i in range(count)],
            0.0,
        )
        sizes[count] = len(json.dumps(body, separators=(",", ":")))
    print(f"report size: 100 policies {sizes[100]:,} B; 1,000 policies {sizes[1000]:,} B")

    facts = PolicyFacts("u", 1, Verdict(True, "Accepted", ""))
    reports = [NodeReport(f"n{i}", 1e9, {"u": seen(entry("u", "p", 1))}) for i in range(1000)]
    started = time.perf_counter()
    for _ in range(20):
        aggregate(facts, reports, previous=None, now=1e9, now_text="T", stale_after=60)
    per = (time.perf_counter() - started) / 20
    print(f"aggregate one policy over 1,000 nodes: {per * 1000:.1f} ms")

    with ControlPlane() as plane:
        plane.install_crds(ROOT / "crds")
        import kubernetes

        client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        core = kubernetes.client.CoreV1Api(client)
        custom = kubernetes.client.CustomObjectsApi(client)
        leases = kubernetes.client.CoordinationV1Api(client)
        policies = []
        for i in range(n_policies):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TracingPolicy",
                "metadata": {"name": f"policy-{i:04d}"},
                "spec": {"podSelector": {"matchLabels": {"app": f"a{i}"}}, "tracepoints": []},
            }
            made = custom.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", body)
            policies.append((made["metadata"]["uid"], made["metadata"]["name"]))

        def simulate(i: int, generation: dict[str, int]) -> None:
            node = f"sim-{i:04d}"
            entries = [entry(uid, name, generation.get(uid, 1)) for uid, name in policies]
            body = report_body(node, entries, time.time())
            try:
                custom.patch_cluster_custom_object(RG, RV, RP, node, body)
            except Exception:
                custom.create_cluster_custom_object(RG, RV, RP, body)

        def register(i: int) -> None:
            node = f"sim-{i:04d}"
            core.create_node({"metadata": {"name": node}})
            leases.create_namespaced_lease("default", lease_body(node, "default", time.time(), 600))
            simulate(i, {})

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(register, range(n_nodes)))
        print(f"{n_nodes} simulated nodes registered in {time.perf_counter() - started:.1f} s")

        def all_ready(generation: int = 1, only: str | None = None) -> bool:
            items = custom.list_cluster_custom_object(GROUP, VERSION, "tracingpolicies")["items"]
            return all(
                (p.get("status") or {}).get("readyNodes") == n_nodes
                and (p.get("status") or {}).get("observedGeneration", 0) >= generation
                for p in items
                if only is None or p["metadata"]["name"] == only
            )

        def rvs() -> dict[str, str]:
            items = custom.list_cluster_custom_object(GROUP, VERSION, "tracingpolicies")["items"]
            return {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in items}

        with tempfile.TemporaryDirectory() as tmp:
            before = rvs()
            controller = ControllerProcess(
                kubeconfig=plane.kubeconfig,
                log_path=Path(tmp) / "controller.log",
                interval=1.0,
                stale_after=3600,
                extra=("--no-events",),
            )
            started = time.perf_counter()
            controller.start()
            assert controller.process is not None
            eventually(all_ready, timeout=600, interval=1.0, what="all policies Ready")
            took = time.perf_counter() - started
            cpu, rss = proc_stats(controller.process.pid)
            after = rvs()
            writes = sum(after[k] != before[k] for k in after)
            print(
                f"controller start to {n_policies} policies Ready on {n_nodes} nodes: "
                f"{took:.1f} s; policies written: {writes}; CPU {cpu:.1f} s; RSS {rss >> 20} MiB"
            )

            # A spec change rolling through every node.
            uid, name = policies[0]
            current = custom.get_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name)
            current["spec"]["containerSelector"] = {}
            changed = custom.replace_cluster_custom_object(
                GROUP, VERSION, "tracingpolicies", name, current
            )
            generation = changed["metadata"]["generation"]
            rv_before = changed["metadata"]["resourceVersion"]
            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda i: simulate(i, {uid: generation}), range(n_nodes)))
            written = time.perf_counter() - started
            eventually(
                lambda: all_ready(generation, name), timeout=600, interval=0.5, what="rollout"
            )
            took = time.perf_counter() - started
            final = custom.get_cluster_custom_object(GROUP, VERSION, "tracingpolicies", name)
            print(
                f"rollout of generation {generation} over {n_nodes} reports (written in "
                f"{written:.1f} s): Ready after {took:.1f} s; "
                f"status conditions moved {final['metadata']['resourceVersion'] != rv_before}"
            )
            controller.stop()
            before = rvs()
            restarted = ControllerProcess(
                kubeconfig=plane.kubeconfig,
                log_path=Path(tmp) / "controller2.log",
                interval=1.0,
                stale_after=3600,
                extra=("--no-events",),
            )
            restarted.start()
            eventually(lambda: "recomputed" in restarted.log(50), timeout=300, what="recomputation")
            after = rvs()
            print(
                f"controller restart: policies written: {sum(after[k] != before[k] for k in after)}"
            )
            print(
                "\n".join(line for line in restarted.log(20).splitlines() if "recomputed" in line)
            )
            restarted.stop()


if __name__ == "__main__":
    main()
