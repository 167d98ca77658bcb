"""Wiring of ``tpfilter controller``: the API client, kopf, the report source, the controller
loop, the Lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from dataclasses import dataclass, field

import kopf

from tpfilter.controller import Controller, ControllerConfig
from tpfilter.controller_handlers import build_registry
from tpfilter.kube import load_api_client
from tpfilter.leader import LeaseElector
from tpfilter.reportsource import PAGE_SIZE, ReportSource, on_loop
from tpfilter.statusapi import KubeReportWatch, KubeStatusApi

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ControllerOptions:
    config: ControllerConfig = field(default_factory=ControllerConfig)
    liveness: str | None = "http://0.0.0.0:8080/healthz"
    leader_elect: bool = False
    lease_namespace: str = "default"
    lease_name: str = "tpfilter-controller"
    lease_seconds: float = 15.0
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    report_page_size: int = PAGE_SIZE
    report_watch_timeout: int = 300


async def run_controller(options: ControllerOptions, *, stop: asyncio.Event | None = None) -> None:
    api_client = load_api_client()
    api = KubeStatusApi(api_client, lease_namespace=options.lease_namespace)
    controller = Controller(api=api, config=options.config)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    source = ReportSource(
        KubeReportWatch(api_client),
        on_loop(loop, controller.report_event),
        page_size=options.report_page_size,
        watch_timeout=options.report_watch_timeout,
        on_synced=lambda: loop.call_soon_threadsafe(controller.reports_synced.set),
    )
    source_stop = threading.Event()
    threading.Thread(
        target=source.run, args=(source_stop,), name="report-source", daemon=True
    ).start()
    if options.leader_elect:
        elector = LeaseElector(
            api_client=api_client,
            namespace=options.lease_namespace,
            name=options.lease_name,
            identity=options.identity,
            duration=options.lease_seconds,
        )
        controller.leading = elector.leading
        elector.on_change = controller.leadership_changed
        tasks.add(asyncio.create_task(elector.run()))
    stop_flag: asyncio.Event = stop or asyncio.Event()
    tasks.add(
        asyncio.create_task(
            kopf.operator(
                registry=build_registry(controller),
                clusterwide=True,
                standalone=True,
                liveness_endpoint=options.liveness,
                stop_flag=stop_flag,
            )
        )
    )
    tasks.add(asyncio.create_task(controller.run()))
    log.info("tpfilter controller %s started", options.identity)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()
    finally:
        stop_flag.set()
        source_stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
