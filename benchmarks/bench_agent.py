"""The agent against a real API server: reaction latency, restart convergence, RSS and CPU.

Run as root (``.venv/bin/python benchmarks/bench_agent.py``; needs the binaries of
scripts/build-k8s-bins.sh on PATH). Prints tables; asserts nothing. What it measures:

* latency from a pod status update (the kubelet reporting a started container) to that
  container's cgroup ID being in its policy's map, over N pod starts with 50 policies
  loaded, as p50/p90/p99/max;
* time for an agent to converge on 200 pods x 50 policies: cold (no pins, no state: a new
  node) beside warm (a restart that adopts the pinned maps: the case that matters);
* the agent's RSS and CPU while idle and during the pod churn.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from pathlib import Path

from tpfilter import statefile
from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps
from tpfilter.cgroups import find_cgroup2_mount
from tpfilter.indexmap import INDEX_PIN_NAME
from tpfilter.models import GROUP, VERSION
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.controlplane import ControlPlane
from tpfilter_dev.localnode import LocalNode

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--policies", type=int, default=50)
    args = parser.parse_args()

    import kubernetes

    token = secrets.token_hex(4)
    work = Path(tempfile.mkdtemp(prefix="tpf-bench-"))
    print(f"work dir (agent log): {work}", flush=True)
    cgroup_root = find_cgroup2_mount() / f"tpf-bench-{token}"
    pin_dir = Path("/sys/fs/bpf") / f"tpf-bench-{token}"
    with ControlPlane() as plane:
        plane.install_crds(ROOT / "crds")
        api = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        custom = kubernetes.client.CustomObjectsApi(api)
        node = LocalNode(
            plane=plane,
            api_client=api,
            name=f"bench-{token}",
            cgroup_root=cgroup_root,
            pin_dir=pin_dir,
            work=work,
        )
        kubelet, agent = node.kubelet, node.agent
        try:
            agent.start()
            assert agent.process is not None
            teams = 10
            for j in range(args.policies):
                selector = {"bench": "latency"} if j == 0 else {"team": f"t{j % teams}"}
                custom.create_cluster_custom_object(
                    GROUP,
                    VERSION,
                    "tracingpolicies",
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "TracingPolicy",
                        "metadata": {"name": f"pol-{j}"},
                        "spec": {"podSelector": {"matchLabels": selector}},
                    },
                )
            for i in range(args.pods):
                kubelet.create_pod("default", f"p{i}", labels={"team": f"t{i % teams}"})
            expected_entries = sum(
                sum(1 for i in range(args.pods) if i % teams == j % teams)
                for j in range(1, args.policies)
            )

            def entries() -> int:
                if not (pin_dir / OUTER_PIN_NAME).exists():
                    return -1
                with PinnedFilterMaps(pin_dir=pin_dir) as maps:
                    return sum(len(s.cgroup_ids) for s in maps.read_all().values())

            eventually(lambda: entries() == expected_entries, timeout=300, what="convergence")
            time.sleep(2)

            # --- idle ---
            pid = agent.process.pid
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            time.sleep(10)
            idle_cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0) * 100
            idle_rss = rss_mib(pid)

            # --- latency under churn ---
            records = {
                r.name: r.policy_id for r in statefile.load(agent.state_dir / statefile.STATE_FILE)
            }
            latency_policy = records["pol-0"]
            latencies = []
            cpu0, t0 = cpu_seconds(pid), time.monotonic()
            peak_rss = 0.0
            with PinnedFilterMaps(pin_dir=pin_dir) as maps:
                for i in range(args.starts):
                    pod = kubelet.create_pod(
                        "default", f"l{i}", labels={"bench": "latency"}, start=False
                    )
                    container = next(iter(pod.containers.values()))
                    kubelet.start(pod, report=False)  # cgroup and process exist now
                    assert container.cgroup is not None
                    cgroup_id = container.cgroup_id
                    started = time.perf_counter()
                    kubelet.report(pod)  # the status update the agent reacts to
                    while not maps.contains(latency_policy, cgroup_id):
                        time.sleep(0.0005)
                        if time.perf_counter() - started > 30:
                            raise RuntimeError(f"pod l{i} never reached its map")
                    latencies.append((time.perf_counter() - started) * 1000)
                    kubelet.delete_pod(pod)
                    if i % 50 == 0:
                        peak_rss = max(peak_rss, rss_mib(pid))
            churn_seconds = time.monotonic() - t0
            churn_cpu = (cpu_seconds(pid) - cpu0) / churn_seconds * 100
            peak_rss = max(peak_rss, rss_mib(pid))

            # --- restart convergence: warm (pins kept) and cold (a fresh node) ---
            def timed_restart(*, cold: bool) -> float:
                agent.stop()
                if cold:
                    (pin_dir / INDEX_PIN_NAME).unlink(missing_ok=True)
                    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
                        maps.remove_pins()
                    (agent.state_dir / statefile.STATE_FILE).unlink()
                start = time.monotonic()
                agent.start(wait=False)
                # Right maps are not enough (a warm restart starts with them): the agent must
                # also have listed the cluster and reconciled, i.e. be in charge again.
                eventually(
                    lambda: agent.synced() and entries() == expected_entries,
                    timeout=300,
                    interval=0.01,
                    what="convergence after restart",
                )
                return time.monotonic() - start

            warm = timed_restart(cold=False)
            cold = timed_restart(cold=True)
        finally:
            node.close()

    print(
        f"\nagent benchmark: {args.policies} policies, {args.pods} pods, "
        f"{os.cpu_count()} CPUs, kernel {os.uname().release}\n"
    )
    print(f"pod status update -> cgroup ID in its map, {len(latencies)} pod starts")
    print("| p50 | p90 | p99 | max |\n|---|---|---|---|")
    print(
        "| "
        + " | ".join(f"{percentile(latencies, q):.1f} ms" for q in (0.5, 0.9, 0.99))
        + f" | {max(latencies):.1f} ms |"
    )
    print(
        f"\nconvergence on {args.pods} pods x {args.policies} policies "
        f"({expected_entries} map entries)"
    )
    print("| start | seconds until every map is right |\n|---|---|")
    print(f"| warm restart (adopts pinned maps) | {warm:.2f} |")
    print(f"| cold start (no pins, no state) | {cold:.2f} |")
    print("\nagent process")
    print("| phase | CPU (% of one core) | RSS |\n|---|---|---|")
    print(f"| idle | {idle_cpu:.1f} % | {idle_rss:.0f} MiB |")
    print(
        f"| churn ({args.starts} pod start+delete in {churn_seconds:.0f} s) | {churn_cpu:.1f} % "
        f"| {peak_rss:.0f} MiB peak |"
    )


if __name__ == "__main__":
    main()
