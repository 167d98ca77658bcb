"""The controller alone at 1,000 nodes x 1,000 policies: start to Ready, memory, CPU.

Run as ``.venv/bin/python benchmarks/bench_controller_scale.py`` (the binaries of
scripts/build-k8s-bins.sh on PATH; no root; a few minutes and a few GB of memory at the
defaults). ``--source DIR`` runs the controller from another checkout's ``operator``
directory (e.g. ``git archive <commit> operator | tar -x -C DIR``), to put a before and
an after side by side on the same machine. Prints what it measured; asserts nothing.

The reports are written straight through the API, already serialised (the agents are not
what is measured here: ``bench_status.py`` runs their real writer): N reports of P Ready
entries each, one Node per report, P policies. Then ``tpfilter controller`` starts with
its defaults (``--stale-after 3600``: no Leases here) and is timed until every policy
shows every node Ready. Memory is the controller's peak RSS (``VmHWM``) and its RSS then.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tpfilter.models import GROUP, VERSION
from tpfilter.reporter import GROUP as RG
from tpfilter.reporter import PLURAL as RP
from tpfilter.reporter import VERSION as RV
from tpfilter.reporter import report_body
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.controllerproc import ControllerProcess
from tpfilter_dev.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--source", type=Path, help="run the controller from DIR/operator")
    args = parser.parse_args()
    if args.source:
        os.environ["PYTHONPATH"] = str(args.source.resolve() / "operator")
    import kubernetes
    import urllib3

    urllib3.disable_warnings()  # the local API server's self-signed certificate
    with ControlPlane() as plane:
        plane.install_crds(ROOT / "crds")
        client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        custom = kubernetes.client.CustomObjectsApi(client)
        core = kubernetes.client.CoreV1Api(client)
        http = urllib3.PoolManager(maxsize=8, cert_reqs="CERT_NONE")
        headers = {"Authorization": f"Bearer {plane.token}", "Content-Type": "application/json"}

        def policy(i: int) -> tuple[str, str]:
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "TracingPolicy",
                "metadata": {"name": f"policy-{i:04d}"},
                "spec": {"podSelector": {"matchLabels": {"app": f"a{i}"}}},
            }
            made = custom.create_cluster_custom_object(GROUP, VERSION, "tracingpolicies", body)
            return str(made["metadata"]["uid"]), str(made["metadata"]["name"])

        started = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            policies = list(pool.map(policy, range(args.policies)))
        entries = sorted(
            (
                {
                    "uid": uid,
                    "kind": "TracingPolicy",
                    "name": name,
                    "generation": 1,
                    "state": "Ready",
                    "cgroups": 4,
                    "pods": 2,
                    "hooks": [{"hook": "sched/sched_process_exec", "program": "tracepoint"}],
                }
                for uid, name in policies
            ),
            key=lambda e: str(e["uid"]),
        )
        url = f"{plane.url}/apis/{RG}/{RV}/{RP}"

        def node(i: int) -> int:
            name = f"sim-{i:04d}"
            core.create_node({"metadata": {"name": name}})
            data = json.dumps(report_body(name, entries, time.time())).encode()
            response = http.request("POST", url, body=data, headers=headers)
            assert response.status == 201, response.data[:300]
            return len(data)

        with ThreadPoolExecutor(8) as pool:
            sizes = list(pool.map(node, range(args.nodes)))
        print(
            f"{args.policies} policies, {args.nodes} reports of {sizes[0]:,} B "
            f"({sum(sizes) / 1e6:,.0f} MB) written in {time.perf_counter() - started:.0f} s"
        )

        def all_ready() -> bool:
            token = None
            while True:
                page = custom.list_cluster_custom_object(
                    GROUP, VERSION, "tracingpolicies", limit=500, _continue=token
                )
                for p in page["items"]:
                    if (p.get("status") or {}).get("readyNodes") != args.nodes:
                        return False
                token = page["metadata"].get("continue")
                if not token:
                    return True

        with tempfile.TemporaryDirectory() as tmp:
            controller = ControllerProcess(
                kubeconfig=plane.kubeconfig,
                log_path=Path(tmp) / "controller.log",
                interval=2.0,
                stale_after=3600,
            )
            started = time.perf_counter()
            controller.start()
            assert controller.process is not None
            pid = controller.process.pid
            eventually(all_ready, timeout=1800, interval=2.0, what="all Ready")
            took = time.perf_counter() - started
            print(
                f"controller ({args.source or 'this checkout'}): start to {args.policies} "
                f"policies Ready on {args.nodes} nodes {took:.0f} s; CPU {cpu_seconds(pid):.0f} s; "
                f"peak RSS {status_kb(pid, 'VmHWM') >> 10} MiB; RSS then "
                f"{status_kb(pid, 'VmRSS') >> 10} MiB"
            )
            lines = controller.log(400).splitlines()
            print("\n".join(x for x in lines if "listed" in x or "recomputed" in x)[:2000])
            controller.stop()
        apiserver = plane._apiserver
        if apiserver is not None:
            print(f"kube-apiserver peak RSS {status_kb(apiserver.pid, 'VmHWM') >> 10} MiB")
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().release}")


if __name__ == "__main__":
    main()
