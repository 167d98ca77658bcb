"""Policy status at scale: 1,000 simulated nodes x 100 policies on a real API server.

Run as ``.venv/bin/python benchmarks/bench_status.py`` (the binaries of
scripts/build-k8s-bins.sh on PATH; no root; 16 min at the defaults on a loaded 2-core
machine; ``--quick``, 200 x 20, 2.5 min). Prints what it measured; asserts nothing.

A simulated node (``simnodes``) is a Node object plus the agent's own report writer
(``tpfilter.reporter.Reporter``, with its coalescing at the agent's default rates) and its
own node Lease (renewed every 10 s), all in this process; only the engine's state per
policy is simulated. ``tpfilter controller`` runs as its own process, with its defaults
(``--interval 2``, Events on). Writes and bytes written are counted by the API server
(``apimetrics``: its request and request-body-size metrics), split by writer, per phase:

* agents start: every node reads its report (none), writes it, starts its Lease;
* controller start, until every policy shows every node Ready;
* steady state: nothing changes (``--steady`` seconds);
* a policy change: one policy's spec changes, every node applies the new generation;
  until its status is Ready at that generation;
* breaks and repairs (``--changes``): one policy's entry on one node goes to Error, and
  back once the status shows it; the time from the change on the node to the policy's
  status showing it, as seen by a watch of the policies (``statuswatch``);
* a controller restart (nothing changed): until it has recomputed every policy;
* pod churn (``--pod-events`` per second over the cluster, two windows of
  ``--churn-window`` seconds): pods created and deleted on the nodes.

Beside each measured count, the naive baseline of the same run: an agent writing its
report on every change of its state (one write per pod), and a controller writing a
policy's status on every report write that changes that policy's entry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apimetrics
from simnodes import SimNode, Tally
from statuswatch import StatusWatch
from tpfilter.accept import Verdict
from tpfilter.aggregate import NodeReport, PolicyFacts, aggregate, seen
from tpfilter.coalesce import WriteRates
from tpfilter.models import GROUP, VERSION
from tpfilter.reporter import report_body
from tpfilter_dev.agentproc import eventually
from tpfilter_dev.controllerproc import ControllerProcess
from tpfilter_dev.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]
POLICIES = "tracingpolicies"


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
    return (int(fields[11]) + int(fields[12])) / ticks, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


def pure_figures() -> None:
    for count in (100, 1000):
        body = report_body(
            "ip-10-0-12-34.ec2.internal",
            [entry(str(uuid.uuid4()), f"policy-{i:04d}-audit-exec", 3) for i in range(count)],
            0.0,
        )
        size = len(json.dumps(body, separators=(",", ":")))
        print(f"report size, {count} policies: {size:,} B")
    facts = PolicyFacts("u", 1, Verdict(True, "Accepted", ""))
    reports = [NodeReport(f"n{i}", 1e9, {"u": seen(entry("u", "p", 1))}) for i in range(1000)]
    started = time.perf_counter()
    for _ in range(20):
        aggregate(facts, reports, previous=None, now=1e9, now_text="T", stale_after=60)
    print(f"aggregate one policy over 1,000 nodes: {(time.perf_counter() - started) * 50:.1f} ms")


@dataclass
class Phase:
    name: str
    seconds: float
    writes: dict[str, tuple[int, int]]
    cpu: float  # the controller's CPU seconds in the phase
    naive_reports: int | None  # one report write per change on a node
    naive_status: int | None  # one status write per changed entry in a report write


class Bench:
    def __init__(self, args: argparse.Namespace, plane: ControlPlane, client: Any) -> None:
        import kubernetes

        self.args, self.plane, self.client = args, plane, client
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.phases: list[Phase] = []
        self.tally = Tally()
        self.nodes: list[SimNode] = []
        self.policies: list[tuple[str, str]] = []
        self.controller: ControllerProcess | None = None
        self._mark: tuple[float, apimetrics.Snapshot, float, int, int] | None = None
        self._own = ThreadPoolExecutor(4)
        self.after_write: list[float] = []

    async def off(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """A blocking call of the benchmark's own (metrics, polls, the controller process)
        on threads of its own: the simulated agents' calls queue on the loop's default
        executor, and a measurement must not wait behind them."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._own, lambda: call(*args, **kwargs))

    def _cpu(self) -> float:
        c = self.controller
        return proc_stats(c.process.pid)[0] if c and c.process and c.process.poll() is None else 0

    async def mark(self) -> None:
        snap = await self.off(apimetrics.scrape, self.plane.url, self.plane.token)
        changes = sum(n.changes for n in self.nodes)
        self._mark = (time.monotonic(), snap, self._cpu(), changes, self.tally.entry_changes)

    async def phase(self, name: str, naive_reports: bool = False, controller: bool = True) -> None:
        """Close the phase opened by the last mark() and open the next one."""
        assert self._mark is not None
        started, before, cpu, changes, entry_changes = self._mark
        cpu_now = self._cpu()
        await self.mark()
        assert self._mark is not None
        writes = apimetrics.by_writer(before, self._mark[1])
        self.phases.append(
            Phase(
                name,
                self._mark[0] - started,
                writes,
                max(0.0, cpu_now - cpu),
                self._mark[3] - changes if naive_reports else None,
                self._mark[4] - entry_changes if controller else None,
            )
        )

    def all_ready(self, generation: int = 1, only: str | None = None) -> bool:
        items = self.custom.list_cluster_custom_object(GROUP, VERSION, POLICIES)["items"]
        return all(
            (p.get("status") or {}).get("readyNodes") == len(self.nodes)
            and (p.get("status") or {}).get("observedGeneration", 0) >= generation
            for p in items
            if only is None or p["metadata"]["name"] == only
        )

    async def until(self, what: str, check: Any, interval: float = 0.5) -> float:
        started = time.monotonic()
        await self.off(eventually, check, timeout=900, interval=interval, what=what)
        return time.monotonic() - started

    def start_controller(self, log: Path) -> ControllerProcess:
        return ControllerProcess(
            kubeconfig=self.plane.kubeconfig, log_path=log, interval=2.0, stale_after=180
        )

    async def run(self, tmp: Path) -> None:
        import kubernetes

        args = self.args
        core = kubernetes.client.CoreV1Api(self.client)
        with ThreadPoolExecutor(8) as pool:
            made = pool.map(
                lambda i: self.custom.create_cluster_custom_object(
                    GROUP,
                    VERSION,
                    POLICIES,
                    {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": "TracingPolicy",
                        "metadata": {"name": f"policy-{i:04d}"},
                        "spec": {"podSelector": {"matchLabels": {"app": f"a{i}"}}},
                    },
                ),
                range(args.policies),
            )
            self.policies = [(m["metadata"]["uid"], m["metadata"]["name"]) for m in made]
            names = [f"sim-{i:04d}" for i in range(args.nodes)]
            list(pool.map(lambda n: core.create_node({"metadata": {"name": n}}), names))
        self.nodes = [
            SimNode(
                n,
                self.policies,
                api_client=self.client,
                rates=WriteRates(),
                heartbeat=10.0,
                tally=self.tally,
            )
            for n in names
        ]
        await self.mark()
        tasks = [asyncio.create_task(n.run(random.uniform(0, 10.0))) for n in self.nodes]
        await self.until("reports written", lambda: self.tally.writes >= len(self.nodes))
        await self.phase("agents start (first report, Leases begin)", controller=False)

        self.controller = self.start_controller(tmp / "controller.log")
        started = time.monotonic()
        await self.off(self.controller.start)
        await self.until("all policies Ready", self.all_ready, interval=1.0)
        took = time.monotonic() - started
        assert self.controller.process is not None
        cpu, rss = proc_stats(self.controller.process.pid)
        await self.phase("controller start to all Ready")
        print(
            f"controller start to {args.policies} policies Ready on {args.nodes} nodes: "
            f"{took:.1f} s; CPU {cpu:.1f} s; RSS {rss >> 20} MiB"
        )

        await asyncio.sleep(args.steady)
        await self.phase("steady state")

        uid, name = self.policies[0]
        current = self.custom.get_cluster_custom_object(GROUP, VERSION, POLICIES, name)
        current["spec"]["containerSelector"] = {}
        changed = await self.off(
            self.custom.replace_cluster_custom_object, GROUP, VERSION, POLICIES, name, current
        )
        generation = changed["metadata"]["generation"]
        for node in self.nodes:
            node.set_generation(uid, generation)
        took = await self.until("rollout", lambda: self.all_ready(generation, name))
        await self.phase("a policy change (1 policy, every node)", naive_reports=True)
        print(
            f"policy change: every node applies generation {generation}; "
            f"status Ready at it {took:.1f} s after the change"
        )

        breaks, repairs = await self.breaks()
        await self.phase(f"{args.changes} breaks + {args.changes} repairs", naive_reports=True)

        await self.off(self.controller.stop)
        await self.mark()
        self.controller = self.start_controller(tmp / "controller2.log")
        await self.off(self.controller.start)
        await self.until("recomputation", lambda: "recomputed" in self.controller_log())
        await asyncio.sleep(15.0)  # and a while after: a window of rates, not an instant
        await self.phase("controller restart (nothing changed), +15 s")
        print("\n".join(x for x in self.controller_log().splitlines() if "recomputed" in x))

        await self.churn()
        assert self.controller.process is not None
        cpu, rss = proc_stats(self.controller.process.pid)
        print(f"restarted controller after the churn: CPU {cpu:.1f} s; RSS {rss >> 20} MiB")
        await self.off(self.controller.stop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.print_tables(breaks, repairs)

    def controller_log(self) -> str:
        return self.controller.log(50) if self.controller else ""

    async def breaks(self) -> tuple[list[float], list[float]]:
        """``--changes`` (node, policy) pairs: each goes to Error, then back to Ready once
        the status shows it; started ``--change-rate`` per second, distinct nodes."""
        watch = StatusWatch(self.client)
        watch.start()
        await asyncio.sleep(2.0)  # its first list
        breaks: list[float] = []
        repairs: list[float] = []
        after_write: list[float] = []  # the report write's return -> the status event

        async def timed(node: SimNode, policy: str, state: str | None, uid: str) -> float:
            shown = watch.expect(policy, node.name, state)
            node.set_error(uid, "simulated: a map write failed" if state else None)
            seconds, arrived = await asyncio.wait_for(shown, 300)
            after_write.append(arrived - self.tally.written_at[node.name])
            return seconds

        async def one(node: SimNode, uid: str, policy: str) -> None:
            breaks.append(await timed(node, policy, "Error", uid))
            repairs.append(await timed(node, policy, None, uid))

        chosen = random.sample(self.nodes, self.args.changes)
        tasks = []
        for node in chosen:
            uid, policy = random.choice(self.policies)
            tasks.append(asyncio.create_task(one(node, uid, policy)))
            await asyncio.sleep(1.0 / self.args.change_rate)
        await asyncio.gather(*tasks)
        watch.stop()
        self.after_write = after_write
        return breaks, repairs

    async def churn(self) -> None:
        """Pods created and deleted: ``--pod-events`` per second over the cluster."""
        rate = self.args.pod_events
        for window in (1, 2):
            ends = time.monotonic() + self.args.churn_window
            owed = 0.0
            while (now := time.monotonic()) < ends:
                owed += rate * 0.1
                while owed >= 1:
                    owed -= 1
                    node = random.choice(self.nodes)
                    uid, _ = random.choice(self.policies)
                    node.pod(uid, random.choice((1, -1)))
                await asyncio.sleep(max(0.0, 0.1 - (time.monotonic() - now)))
            await self.phase(f"pod churn {rate}/s, window {window}", naive_reports=True)

    def print_tables(self, breaks: list[float], repairs: list[float]) -> None:
        writers = list(apimetrics.WRITERS)
        print(
            "\nAPI writes per second and request bytes per second, by writer "
            "(counted by the API server):\n"
        )
        head = " | ".join(f"{w} /s | KB/s" for w in writers)
        print(f"| phase | s | {head} | controller CPU |")
        print("|---|---:|" + "---:|---:|" * len(writers) + "---:|")
        for p in self.phases:
            cells = " | ".join(
                f"{p.writes[w][0] / p.seconds:,.1f} | {p.writes[w][1] / p.seconds / 1e3:,.1f}"
                for w in writers
            )
            print(f"| {p.name} | {p.seconds:.0f} | {cells} | {p.cpu:.1f} s |")
        print("\nTotals in each phase, beside the naive baseline of the same run:\n")
        print(
            "| phase | report writes | naive: one per change on a node | report MB | "
            "status writes | naive: one per changed entry written | Events |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for p in self.phases:
            reports, sent = p.writes["agents: reports"]
            naive = "" if p.naive_reports is None else f"{p.naive_reports:,}"
            print(
                f"| {p.name} | {reports:,} | {naive} | {sent / 1e6:,.1f} | "
                f"{p.writes['controller: status'][0]:,} | "
                f"{'' if p.naive_status is None else f'{p.naive_status:,}'} | "
                f"{p.writes['controller: Events'][0]:,} |"
            )
        print("\nA change on a node -> the policy's status shows it (watch of the policies):\n")
        print("| change | n | p50 | p90 | p99 | max |")
        print("|---|---:|---:|---:|---:|---:|")
        for label, values in (
            ("break (Ready -> Error)", breaks),
            ("repair (Error -> Ready)", repairs),
            ("all", breaks + repairs),
            ("of which: report write returned -> status event", self.after_write),
        ):
            q = statistics.quantiles(values, n=100, method="inclusive")
            print(
                f"| {label} | {len(values)} | {q[49]:.2f} s | {q[89]:.2f} s | "
                f"{q[98]:.2f} s | {max(values):.2f} s |"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--steady", type=float, default=30.0, help="seconds")
    parser.add_argument("--changes", type=int, default=100, help="breaks (each repaired)")
    parser.add_argument("--change-rate", type=float, default=2.0, help="breaks per second")
    parser.add_argument("--pod-events", type=float, default=100.0, help="per second, cluster")
    parser.add_argument("--churn-window", type=float, default=60.0, help="seconds (x2)")
    parser.add_argument("--quick", action="store_true", help="200 nodes x 20 policies, short")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.policies, args.steady, args.changes = 200, 20, 10.0, 20
        args.pod_events, args.churn_window = 20.0, 30.0
    import kubernetes
    import urllib3

    urllib3.disable_warnings()  # the local API server's self-signed certificate
    pure_figures()
    with ControlPlane(extra_apiserver_args=apimetrics.APISERVER_ARGS) as plane:
        plane.install_crds(ROOT / "crds")
        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(str(plane.kubeconfig), client_configuration=config)
        config.connection_pool_maxsize = 32
        client = kubernetes.client.ApiClient(config)
        with tempfile.TemporaryDirectory() as tmp:
            loop = asyncio.new_event_loop()
            loop.set_default_executor(ThreadPoolExecutor(24))
            try:
                loop.run_until_complete(Bench(args, plane, client).run(Path(tmp)))
            finally:
                loop.close()
    print(
        f"\nmachine: {os.cpu_count()} CPUs, {os.uname().release}; nodes {args.nodes}, "
        f"policies {args.policies}"
    )


if __name__ == "__main__":
    main()
