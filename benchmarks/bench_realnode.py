"""The window in which a new container runs unfiltered, on a real node. Root.

Why: the agent learns a container's cgroup from the pod's status, which kubelet writes
after the runtime has started the container; until the agent has written the cgroup into
the policy's map, the container's processes are not filtered. This measures that window
on the real node of the e2e suite (kubelet + containerd + runc, the agent installed with
helm, :mod:`tpfilter_dev.realcluster`), for N pods created one after another (the oldest
deleted once 50 are running: kubelet's limit is 110 pods), each selected by one policy:

* ``created -> mapped``: from the pod's create request returning to its container's
  cgroup being in the policy's map (read from the host's pins);
* ``created -> first process``: from the same moment to the start time of the
  container's first process (``/proc/<pid>/stat``, CLOCK_BOOTTIME ticks: what the runtime
  takes, for comparison);
* ``unfiltered window``: first process -> mapped, the time the container ran unfiltered.

The maps are polled every ``--poll-ms`` (the resolution of the mapped times); the first
process' start time has clock-tick resolution (10 ms with USER_HZ 100).

Run: ``sudo .venv/bin/python benchmarks/bench_realnode.py [--pods 200]`` (needs what
scripts/test.sh installs and builds; ~1 s per pod plus ~40 s to start).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from tpfilter_dev.realcluster import RELEASE, RELEASE_NS, Cluster, build_images, maps_on_host
from tpfilter_dev.realnode import RealNode

POLICY = """apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: bench-window
spec:
  podSelector:
    matchLabels:
      app: bench
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
"""
KEY = "TracingPolicy/bench-window"
TICKS = os.sysconf("SC_CLK_TCK")
LIVE_PODS = 50


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def first_process_start(cgroup: Path) -> float | None:
    """CLOCK_BOOTTIME seconds at which the oldest process of ``cgroup`` started."""
    starts = []
    for pid in (cgroup / "cgroup.procs").read_text().split():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        starts.append(int(fields[19]) / TICKS)  # field 22: starttime
    return min(starts) if starts else None


def measure(cluster: Cluster, pods: int, poll: float) -> list[tuple[float, float]]:
    """[(created -> first process, created -> mapped)] in seconds, one per pod."""
    ns = cluster.namespace()
    results = []
    for i in range(pods):
        name = f"p{i}"
        created = boottime()
        cluster.pod(ns, name, {"app": "bench"}, wait=False)
        mapped = started = None
        cgroup: Path | None = None
        deadline = created + 120
        while mapped is None and boottime() < deadline:
            if cgroup is None:
                cgroup = cluster.cgroup_dir(ns, name)
            if cgroup is not None:
                if started is None:
                    started = first_process_start(cgroup)
                if cgroup.stat().st_ino in maps_on_host().get(KEY, frozenset()):
                    mapped = boottime()
            time.sleep(poll)
        if mapped is None or started is None:
            raise RuntimeError(f"pod {name}: not mapped within 120 s")
        results.append((started - created, mapped - created))
        if i >= LIVE_PODS:  # kubelet runs at most 110 pods: keep a window of live ones
            cluster.kubectl("delete", "pod", "-n", ns, f"p{i - LIVE_PODS}", "--wait=false")
        if i % 20 == 19:
            print(f"  {i + 1} pods", flush=True)
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    return results


def percentiles(values: list[float]) -> list[str]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return [f"{v * 1000:,.0f} ms" for v in (q[49], q[89], q[98], max(values))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--poll-ms", type=float, default=10.0)
    args = parser.parse_args()
    images = build_images()
    with RealNode(images=tuple(images.values())) as node:
        cluster = Cluster(node)
        try:
            cluster.helm_install()
            cluster.kubectl("apply", "-f", "-", stdin=POLICY)
            results = measure(cluster, args.pods, args.poll_ms / 1000)
        finally:
            cluster.kubectl("delete", "tracingpolicy", "bench-window", check=False)
            cluster.helm("uninstall", RELEASE, "-n", RELEASE_NS, "--wait")
    started = [s for s, _ in results]
    mapped = [m for _, m in results]
    window = [m - s for s, m in results]
    rows = [
        ("created -> first process (runtime)", percentiles(started)),
        ("created -> cgroup in map (agent)", percentiles(mapped)),
        ("unfiltered window: first process -> map", percentiles(window)),
    ]
    print(f"\n{args.pods} pods created one after another, one policy selecting each")
    print(f"{'':42} {'p50':>9} {'p90':>9} {'p99':>9} {'max':>9}")
    for label, cells in rows:
        print(f"{label:42} " + " ".join(f"{c:>9}" for c in cells))
    print(f"(maps polled every {args.poll_ms:g} ms; process start times in 1/{TICKS} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
