"""Wiring of ``tpfilter controller``: the API client, kopf, the controller loop, the Lease."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass, field

import kopf

from tpfilter.controller import Controller, ControllerConfig
from tpfilter.controller_handlers import build_registry
from tpfilter.kube import load_api_client
from tpfilter.leader import LeaseElector
from tpfilter.statusapi import KubeStatusApi

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


async def run_controller(options: ControllerOptions, *, stop: asyncio.Event | None = None) -> None:
    api_client = load_api_client()
    api = KubeStatusApi(api_client, lease_namespace=options.lease_namespace)
    controller = Controller(api=api, config=options.config)
    tasks: set[asyncio.Task[None]] = set()
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
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
