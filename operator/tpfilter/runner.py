"""Wiring: the real cgroup finder, the real maps, the API lister and kopf, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import kopf

from tpfilter import statefile
from tpfilter.agent import Agent
from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.cgroups import CgroupFsFinder
from tpfilter.coalesce import WriteRates
from tpfilter.engine import Engine, Limits
from tpfilter.handlers import build_registry
from tpfilter.indexmap import PinnedCandidateIndex
from tpfilter.kube import load_api_client, make_lister
from tpfilter.nodelease import NodeLease
from tpfilter.programs import Metrics, ProgramManager
from tpfilter.programs.podindex import PodIndex
from tpfilter.reporter import KubeReportApi, Reporter
from tpfilter.reportshards import REPORT_MAX_BYTES

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    node_name: str
    pin_dir: Path = Path("/sys/fs/bpf/tpfilter")
    state_dir: Path = Path("/run/tpfilter")
    cgroup_root: Path | None = None
    kubepods_roots: list[Path] | None = None
    limits: Limits = field(default_factory=Limits)
    resync_seconds: float = 300.0
    liveness: str | None = "http://0.0.0.0:8080/healthz"
    programs: bool = True  # False: filter maps only (for programs loaded by someone else)
    events_file: Path | None = None  # None: JSON lines on stdout
    metrics_port: int | None = 9090
    metrics_addr: str = "0.0.0.0"
    report: bool = True  # write this node's TracingPolicyNodeReport
    report_rates: WriteRates = field(default_factory=WriteRates)
    report_max_bytes: int = REPORT_MAX_BYTES  # past this, the report is sharded
    heartbeat_seconds: float = 10.0  # node Lease renewal (the controller's liveness signal)
    lease_namespace: str = "default"


def build_agent(config: AgentConfig, api_client: object) -> Agent:
    maps = PinnedFilterMaps(pin_dir=config.pin_dir, max_policies=config.limits.max_policies)
    finder = CgroupFsFinder(cgroup_root=config.cgroup_root, kubepods_roots=config.kubepods_roots)
    engine = Engine(
        finder=finder,
        maps=maps,
        state_path=config.state_dir / statefile.STATE_FILE,
        limits=config.limits,
        # What the programs look up first: which policies can apply to a task at all.
        index=PinnedCandidateIndex(pin_dir=config.pin_dir),
    )
    lister = make_lister(api_client=api_client, node_name=config.node_name)
    metrics = Metrics()
    pod_index = PodIndex(finder) if config.programs else None
    programs = None
    if pod_index is not None:
        programs = ProgramManager(
            pin_dir=config.pin_dir,
            node_name=config.node_name,
            resolve=pod_index,
            events_out=config.events_file,
            metrics=metrics,
        )
    return Agent(
        node_name=config.node_name,
        engine=engine,
        lister=lister,
        state_dir=config.state_dir,
        resync_seconds=config.resync_seconds,
        programs=programs,
        pod_index=pod_index,
        metrics=metrics,
    )


async def run_agent(config: AgentConfig, *, stop: asyncio.Event | None = None) -> None:
    """Run until kopf stops (SIGTERM/SIGINT) or ``stop`` is set; the maps stay pinned."""
    api_client = load_api_client()
    agent = build_agent(config, api_client)
    reporter = None
    if config.report:
        reporter = Reporter(
            node_name=config.node_name,
            api=KubeReportApi(api_client),
            rates=config.report_rates,
            max_bytes=config.report_max_bytes,
            source=lambda: agent.report_entries,
        )
        agent.on_report = reporter.changed
    lease = None
    if config.report:
        lease = NodeLease(
            api_client=api_client,
            node_name=config.node_name,
            namespace=config.lease_namespace,
            interval=config.heartbeat_seconds,
        )
    if agent.programs is not None:
        await asyncio.to_thread(agent.programs.start)  # probe + compile once (~2-3 s)
    if agent.metrics is not None and config.metrics_port:
        agent.metrics.serve(config.metrics_port, config.metrics_addr)
    log.info("tpfilter agent on node %s, maps pinned in %s", config.node_name, config.pin_dir)
    stop_flag: asyncio.Event = stop or asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            registry=build_registry(agent),
            clusterwide=True,
            standalone=True,
            liveness_endpoint=config.liveness,
            stop_flag=stop_flag,
        )
    )
    loop = asyncio.create_task(agent.run())
    tasks = {operator, loop}
    if reporter is not None:
        tasks.add(asyncio.create_task(reporter.run()))
    if lease is not None:
        tasks.add(asyncio.create_task(lease.run()))
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # surface a crash of any side
    finally:
        stop_flag.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if agent.programs is not None:
            agent.programs.close()  # detach; the pinned filter maps stay
        if agent.metrics is not None:
            agent.metrics.close()
