"""Leader election over a coordination.k8s.io Lease, for the controller's replicas.

Every replica watches and keeps its caches warm; only the holder of the Lease writes
(policy status, Events, report deletions), so a standby takes over within one lease
duration of the leader's death, with nothing to relist.

:func:`decide` is the pure rule (the client-go rule): take the lease when nobody holds it,
when we hold it, or when its holder has not renewed it for ``leaseDurationSeconds``.
Writes carry the resourceVersion that was read, so of two replicas that decide to take
an expired lease at once, the API server lets one win (the other gets a conflict).
A leader that cannot renew stops writing before its lease can have expired elsewhere:
:meth:`LeaseElector.leading` is true only until ``renewed + duration * SAFETY``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

log = logging.getLogger(__name__)

SAFETY: Final = 0.75  # of the lease duration a leader trusts an old renewal


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    holder: str
    renewed: float  # epoch seconds
    duration: float
    transitions: int = 0
    acquired: float = 0.0


def decide(current: LeaseRecord | None, me: str, now: float, duration: float) -> LeaseRecord | None:
    """The record to write to hold the lease now, or None if another replica holds it."""
    if current is None or not current.holder:
        previous = current.transitions if current else 0
        return LeaseRecord(me, now, duration, previous, now)
    if current.holder == me:
        return LeaseRecord(me, now, duration, current.transitions, current.acquired or now)
    if now > current.renewed + current.duration:
        return LeaseRecord(me, now, duration, current.transitions + 1, now)
    return None


def micro_time(epoch: float) -> str:
    """A Lease's MicroTime. Never a whole second: the client turns the body into its models
    and back, and writes a whole second without the fraction the API server requires."""
    moment = datetime.fromtimestamp(epoch, UTC)
    moment = moment.replace(microsecond=max(1, moment.microsecond))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _epoch(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def record_of(lease: Mapping[str, Any]) -> LeaseRecord:
    spec = lease.get("spec") or {}
    return LeaseRecord(
        holder=str(spec.get("holderIdentity") or ""),
        renewed=_epoch(spec.get("renewTime")),
        duration=float(spec.get("leaseDurationSeconds") or 0),
        transitions=int(spec.get("leaseTransitions") or 0),
        acquired=_epoch(spec.get("acquireTime")),
    )


def lease_spec(record: LeaseRecord) -> dict[str, Any]:
    return {
        "holderIdentity": record.holder,
        "leaseDurationSeconds": max(1, round(record.duration)),
        "acquireTime": micro_time(record.acquired),
        "renewTime": micro_time(record.renewed),
        "leaseTransitions": record.transitions,
    }


class LeaseElector:
    def __init__(
        self,
        *,
        api_client: Any,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import kubernetes

        self._api: Any = kubernetes.client.CoordinationV1Api(api_client)
        self._namespace, self._name, self.identity = namespace, name, identity
        self._duration = duration
        self._clock = clock
        self._renewed = 0.0
        self.on_change: Callable[[bool], None] = lambda leading: None

    def leading(self) -> bool:
        return self._clock() < self._renewed + self._duration * SAFETY

    async def run(self) -> None:
        was = False
        while True:
            try:
                await asyncio.to_thread(self._try_once)
            except Exception as exc:
                log.warning("lease %s/%s: %s", self._namespace, self._name, exc)
            now = self.leading()
            if now != was:
                log.info("%s is %s", self.identity, "the leader" if now else "a standby")
                self.on_change(now)
                was = now
            await asyncio.sleep(self._duration / 5)

    def _try_once(self) -> None:
        now = self._clock()
        try:
            response = self._api.read_namespaced_lease(
                self._name, self._namespace, _preload_content=False
            )
            lease: dict[str, Any] | None = json.loads(response.data)
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
            lease = None
        record = decide(record_of(lease) if lease else None, self.identity, now, self._duration)
        if record is None:
            return
        metadata: dict[str, str] = {"name": self._name, "namespace": self._namespace}
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": lease_spec(record),
        }
        if lease is None:
            self._api.create_namespaced_lease(self._namespace, body)
        else:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
            self._api.replace_namespaced_lease(self._name, self._namespace, body)
        self._renewed = now
