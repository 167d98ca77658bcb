"""``tpfilter``: the node agent and the commands that inspect a node.

* ``tpfilter agent``: the DaemonSet's process (kopf, standalone, cluster-wide).
* ``tpfilter controller``: the cluster's one writer of policy status (a Deployment): sums
  up the agents' TracingPolicyNodeReports into each policy's ``status``.
* ``tpfilter status``: per policy on this node, its ID, kind, name, cgroups held, inner
  map size and kernel memory, as a table or ``--json``. It reads the pinned maps and the
  agent's state files directly, so it works without API access (e.g. ``kubectl exec``).
  ``tpfilter status --cluster``: the cluster's view instead, every policy's status as the
  controller wrote it, read through the API (``tpfilter.clusterstatus``).
* ``tpfilter probe``: what this node's kernel supports.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tpfilter import statefile
from tpfilter.engine import DEFAULT_MAX_CGROUPS, DEFAULT_MAX_POLICIES, Limits
from tpfilter.reportshards import REPORT_MAX_BYTES

DEFAULT_STATE_DIR = Path("/run/tpfilter")
DEFAULT_PIN_DIR = Path("/sys/fs/bpf/tpfilter")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    result: int = args.func(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tpfilter", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    agent = sub.add_parser("agent", help="run the node agent")
    agent.add_argument(
        "--node-name",
        default=os.environ.get("NODE_NAME"),
        help="this node's name (default: $NODE_NAME, as a DaemonSet passes it)",
    )
    _paths(agent)
    agent.add_argument(
        "--cgroup-root",
        type=Path,
        default=None,
        help="cgroup v2 mount (default: found in /proc/self/mountinfo)",
    )
    agent.add_argument(
        "--kubepods-root",
        action="append",
        type=Path,
        default=None,
        help="kubelet's kubepods cgroup, repeatable (default: discovered)",
    )
    agent.add_argument("--max-policies", type=int, default=DEFAULT_MAX_POLICIES)
    agent.add_argument("--max-cgroups-per-policy", type=int, default=DEFAULT_MAX_CGROUPS)
    agent.add_argument("--resync-seconds", type=float, default=300.0)
    agent.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="kopf liveness endpoint URL ('' to disable)",
    )
    agent.add_argument(
        "--events-file",
        type=Path,
        default=None,
        help="append policy events (JSON lines) here (default: stdout)",
    )
    agent.add_argument(
        "--metrics-port", type=int, default=9090, help="Prometheus /metrics port, 0 disables"
    )
    agent.add_argument(
        "--no-programs", action="store_true", help="filter maps only, no policy programs"
    )
    agent.add_argument("--no-report", action="store_true", help="write no TracingPolicyNodeReport")
    agent.add_argument(
        "--report-interval",
        type=float,
        default=5.0,
        help="seconds between two report writes for a state change (coalesced)",
    )
    agent.add_argument(
        "--report-counts-interval",
        type=float,
        default=60.0,
        help="seconds between two report writes when only cgroup/pod counts changed",
    )
    agent.add_argument(
        "--report-refresh-seconds",
        type=float,
        default=3600.0,
        help="the report is rewritten at least this often, even unchanged",
    )
    agent.add_argument(
        "--report-max-bytes",
        type=int,
        default=REPORT_MAX_BYTES,
        help="the largest report object (JSON bytes); past it the report is split in shards",
    )
    agent.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=10.0,
        help="how often this node's Lease is renewed (the controller's liveness signal)",
    )
    agent.add_argument(
        "--lease-namespace",
        default=os.environ.get("POD_NAMESPACE", "default"),
        help="namespace of the node Leases (default: $POD_NAMESPACE, else default)",
    )
    agent.add_argument("-v", "--verbose", action="store_true")
    agent.set_defaults(func=_agent)

    controller = sub.add_parser(
        "controller", help="run the controller: node reports -> every policy's status"
    )
    controller.add_argument(
        "--interval", type=float, default=2.0, help="seconds between two status recomputations"
    )
    controller.add_argument(
        "--stale-after",
        type=float,
        default=180.0,
        help="a node whose report is older than this is shown Stale",
    )
    controller.add_argument(
        "--max-listed-nodes", type=int, default=20, help="not-Ready nodes listed per policy"
    )
    controller.add_argument(
        "--sweep-seconds",
        type=float,
        default=300.0,
        help="how often reports of deleted nodes are looked for",
    )
    controller.add_argument("--no-events", action="store_true", help="post no Events")
    controller.add_argument(
        "--liveness", default="http://0.0.0.0:8080/healthz", help="'' to disable"
    )
    controller.add_argument(
        "--leader-elect", action="store_true", help="hold a Lease to write (replicas > 1)"
    )
    controller.add_argument("--lease-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    controller.add_argument("--lease-name", default="tpfilter-controller")
    controller.add_argument("--lease-seconds", type=float, default=15.0)
    controller.add_argument(
        "--report-page-size",
        type=int,
        default=50,
        help="reports per page of the controller's list of node reports",
    )
    controller.add_argument(
        "--report-watch-seconds",
        type=int,
        default=300,
        help="how long one watch of the node reports lasts before it is renewed",
    )
    controller.add_argument("-v", "--verbose", action="store_true")
    controller.set_defaults(func=_controller)

    status = sub.add_parser(
        "status", help="show this node's policies and their maps, or (--cluster) every policy's"
    )
    _paths(status)
    status.add_argument("--json", action="store_true", help="JSON instead of a table")
    status.add_argument(
        "--cluster",
        action="store_true",
        help="every policy's status in the cluster (Ready, nodes, pods), through the API",
    )
    status.add_argument(
        "--kubeconfig",
        default=None,
        help="with --cluster: kubeconfig file (default: in-cluster, else $KUBECONFIG)",
    )
    status.set_defaults(func=_status)

    probe = sub.add_parser("probe", help="show what this node's kernel supports")
    probe.add_argument("--json", action="store_true")
    probe.set_defaults(func=_probe)
    return parser


def _paths(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pin-dir", type=Path, default=DEFAULT_PIN_DIR, help="bpffs directory of the pinned maps"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="host directory of the agent's bookkeeping",
    )


def _agent(args: argparse.Namespace) -> int:
    if not args.node_name:
        print("tpfilter agent: --node-name or $NODE_NAME is required", file=sys.stderr)
        return 2
    from tpfilter.coalesce import WriteRates
    from tpfilter.runner import AgentConfig, run_agent

    config = AgentConfig(
        node_name=args.node_name,
        pin_dir=args.pin_dir,
        state_dir=args.state_dir,
        cgroup_root=args.cgroup_root,
        kubepods_roots=args.kubepods_root,
        limits=Limits(args.max_policies, args.max_cgroups_per_policy),
        resync_seconds=args.resync_seconds,
        liveness=args.liveness or None,
        programs=not args.no_programs,
        events_file=args.events_file,
        metrics_port=args.metrics_port or None,
        report=not args.no_report,
        report_rates=WriteRates(
            args.report_interval, args.report_counts_interval, args.report_refresh_seconds
        ),
        report_max_bytes=args.report_max_bytes,
        heartbeat_seconds=args.heartbeat_seconds,
        lease_namespace=args.lease_namespace,
    )
    asyncio.run(run_agent(config))
    return 0


def _controller(args: argparse.Namespace) -> int:
    from tpfilter.controller import ControllerConfig
    from tpfilter.controller_runner import ControllerOptions, run_controller

    options = ControllerOptions(
        config=ControllerConfig(
            interval=args.interval,
            stale_after=args.stale_after,
            max_listed=args.max_listed_nodes,
            sweep_seconds=args.sweep_seconds,
            events=not args.no_events,
        ),
        liveness=args.liveness or None,
        leader_elect=args.leader_elect,
        lease_namespace=args.lease_namespace,
        lease_name=args.lease_name,
        lease_seconds=args.lease_seconds,
        report_page_size=args.report_page_size,
        report_watch_timeout=args.report_watch_seconds,
    )
    asyncio.run(run_controller(options))
    return 0


ALL_PODS_NAME = "(every pod container: for hostSelector)"
HOST_PID_PODS_NAME = "(containers of hostPID pods)"


def collect_status(*, pin_dir: Path, state_dir: Path) -> dict[str, Any]:
    """Join the agent's last result, its ID records and the kernel's own map accounting."""
    from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps
    from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID
    from tpfilter.interfaces import HOST_MARKER

    records = {r.policy_id: r for r in statefile.load(state_dir / statefile.STATE_FILE)}
    try:
        last = json.loads((state_dir / statefile.STATUS_FILE).read_text())
    except FileNotFoundError:
        last = {}
    by_id = {p["policy_id"]: p for p in last.get("policies", []) if p["policy_id"]}
    programs = {p["policy_id"]: p for p in last.get("programs", []) if p.get("policy_id")}
    usage, held = {}, {}
    if (pin_dir / OUTER_PIN_NAME).exists():
        with PinnedFilterMaps(pin_dir=pin_dir) as maps:
            usage = {u.policy_id: u for u in maps.usage()}
            held = {pid: sorted(inner.cgroup_ids) for pid, inner in maps.read_all().items()}
    reserved = {ALL_PODS_ID: ALL_PODS_NAME, HOST_PID_PODS_ID: HOST_PID_PODS_NAME}
    rows = []
    for pid in sorted(records.keys() | usage.keys()):
        record, reported, used = records.get(pid), by_id.get(pid, {}), usage.get(pid)
        cgroup_ids = [c for c in held.get(pid, []) if c != HOST_MARKER]
        rows.append(
            {
                "policy_id": pid,
                "kind": record.kind if record else None,
                "namespace": record.namespace if record else None,
                "name": record.name if record else reserved.get(pid),
                "cgroups": len(cgroup_ids) if used else 0,
                "cgroup_ids": cgroup_ids,
                "host": HOST_MARKER in held.get(pid, []),
                "pending": reported.get("pending", 0),
                "max_entries": used.max_entries if used else None,
                "memlock": used.memlock if used else None,
                "map_id": used.map_id if used else None,
                "error": reported.get("error") or (None if used else "no map in the kernel"),
                "program": programs.get(pid, {}).get("state"),
                "program_reasons": programs.get(pid, {}).get("reasons", []),
            }
        )
    unfiltered = [
        p for p in last.get("policies", []) if not p["policy_id"] and not p.get("skipped")
    ]
    skipped = [p for p in last.get("policies", []) if p.get("skipped")]
    return {
        "node": last.get("node"),
        "synced": last.get("synced", False),
        "policies": rows,
        "unfiltered": unfiltered,
        "skipped": skipped,
        "programs": last.get("programs", []),
        "invalid": last.get("invalid", []),
        "total_memlock": sum(u.memlock for u in usage.values()),
        "index": _index_usage(pin_dir),
    }


def _index_usage(pin_dir: Path) -> dict[str, int] | None:
    """The candidate index the programs look up first (tpfilter.candidates)."""
    from tpfilter.indexmap import read_usage

    usage = read_usage(pin_dir)
    if usage is None:
        return None
    return {"entries": usage.entries, "max_entries": usage.max_entries, "memlock": usage.memlock}


def _status(args: argparse.Namespace) -> int:
    if args.cluster:
        from tpfilter.clusterstatus import show

        return show(kubeconfig=args.kubeconfig, as_json=args.json)
    status = collect_status(pin_dir=args.pin_dir, state_dir=args.state_dir)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    header = (
        "ID",
        "KIND",
        "NAMESPACE/NAME",
        "CGROUPS",
        "PENDING",
        "MAX_ENTRIES",
        "MEMLOCK",
        "PROGRAM",
        "ERROR",
    )
    rows = [header]
    for p in status["policies"]:
        name = f"{p['namespace']}/{p['name']}" if p["namespace"] else (p["name"] or "?")
        rows.append(
            (
                str(p["policy_id"]),
                p["kind"] or "?",
                name,
                f"{p['cgroups']}{'+host' if p.get('host') else ''}",
                str(p["pending"]),
                str(p["max_entries"] or "-"),
                _bytes(p["memlock"]),
                p.get("program") or "-",
                p["error"] or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"total kernel memory of inner maps: {_bytes(status['total_memlock'])}")
    if index := status.get("index"):
        lines.append(
            f"candidate index: {index['entries']} cgroups (and host) indexed, max_entries "
            f"{index['max_entries']}, kernel memory {_bytes(index['memlock'])}"
        )
    for p in status["unfiltered"]:
        lines.append(f"unfiltered (every process, no map): {p['kind']}/{p['name']}")
    for p in status.get("skipped", []):
        name = f"{p['namespace']}/{p['name']}" if p.get("namespace") else p["name"]
        lines.append(f"skipped on this node (no map): {p['kind']}/{name}: {p['skipped']}")
    for program in status.get("programs", []):
        if program.get("reasons"):
            lines.append(
                f"{program['state']}: {program['policy']}: {'; '.join(program['reasons'])}"
            )
    for p in status["invalid"]:
        lines.append(f"invalid, not loaded: {p['kind']}/{p['name']}: {p['error']}")
    return "\n".join(lines)


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB"


def _probe(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from tpfilter import mapcost, sizing
    from tpfilter.bpfmaps import probe

    support = probe()
    report: dict[str, Any] = asdict(support)
    if support.ok:
        # What a policy map costs here, measured: the accounting differs between machines.
        cost = mapcost.measure(sizing.MIN_ENTRIES)
        report["inner_map_cost"] = {"empty_min_map": cost.empty, "per_cgroup": cost.per_entry}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        for key, value in report.items():
            print(f"{key:32} {value}")
    return 0 if support.ok else 1


if __name__ == "__main__":
    sys.exit(main())
