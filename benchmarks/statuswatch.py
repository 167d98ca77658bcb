"""The time from a change on a node to a policy's status showing it, seen by a watch.

A thread watches the cluster's TracingPolicies (a list, then a watch from its
resourceVersion, relisting when the watch ends or expires). The benchmark registers an
expectation before it changes a node ("policy P lists node N as Error", or "no longer
lists N") and gets a future that resolves to the seconds between the registration and
the first policy event that satisfies it, measured on arrival of that event (and that
arrival's time, ``time.monotonic()``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tpfilter.models import GROUP, VERSION


@dataclass(slots=True)
class _Expect:
    policy: str
    node: str
    state: str | None  # None: the node must not be listed
    started: float
    future: asyncio.Future[tuple[float, float]]
    loop: asyncio.AbstractEventLoop


class StatusWatch:
    def __init__(self, api_client: Any) -> None:
        import kubernetes

        self._kubernetes = kubernetes
        self._custom = kubernetes.client.CustomObjectsApi(api_client)
        self._lock = threading.Lock()
        self._expects: list[_Expect] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def expect(
        self, policy: str, node: str, state: str | None
    ) -> asyncio.Future[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[float, float]] = loop.create_future()
        with self._lock:
            self._expects.append(_Expect(policy, node, state, time.monotonic(), future, loop))
        return future

    def _seen(self, body: Mapping[str, Any]) -> None:
        arrived = time.monotonic()
        name = str(body["metadata"]["name"])
        listed = {
            str(n.get("node")): str(n.get("state"))
            for n in (body.get("status") or {}).get("nodes") or ()
        }
        with self._lock:
            done = [
                e
                for e in self._expects
                if e.policy == name
                and (listed.get(e.node) == e.state if e.state else e.node not in listed)
            ]
            self._expects = [e for e in self._expects if e not in done]
        for e in done:
            e.loop.call_soon_threadsafe(_resolve, e.future, (arrived - e.started, arrived))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = self._custom.list_cluster_custom_object(GROUP, VERSION, "tracingpolicies")
                stream = self._kubernetes.watch.Watch().stream(
                    self._custom.list_cluster_custom_object,
                    GROUP,
                    VERSION,
                    "tracingpolicies",
                    resource_version=listed["metadata"]["resourceVersion"],
                    timeout_seconds=300,
                )
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._seen(event["object"])
                    if self._stop.is_set():
                        return
            except Exception:  # an expired watch (410) or a dropped connection: relist
                time.sleep(0.2)


def _resolve(future: asyncio.Future[tuple[float, float]], result: tuple[float, float]) -> None:
    if not future.done():
        future.set_result(result)
