"""Prometheus metrics of the node agent (prometheus_client, own registry).

* ``tpfilter_policy_actions_total{policy,hook,action}``: what the programs did per policy:
  ``matched`` (a selector matched), ``post`` (an event was sent), ``sigkill``, ``signal``,
  ``dropped`` (ring buffer full), ``failed`` (an action's helper failed). Counted in the
  kernel (a per-CPU map), so NoPost matches and lost events are counted too.
* ``tpfilter_policy_map_cgroups{policy,policy_id}`` and
  ``tpfilter_policy_map_memlock_bytes{...}``: each policy's filter map, read from the
  kernel at scrape time.
* ``tpfilter_program_map_memlock_bytes{map}``: the programs' own maps.
* ``tpfilter_candidate_index_entries``, ``tpfilter_candidate_index_memlock_bytes``: the
  candidate index the programs look up first (cgroups indexed, kernel memory).
* ``tpfilter_reconcile_errors_total{policy}``, ``tpfilter_map_full_errors_total{policy}``:
  fed by the agent with :meth:`Metrics.observe_reconcile`.
* ``tpfilter_program_policies{state}``, ``tpfilter_programs_compile_seconds``,
  ``tpfilter_programs_load_seconds``, ``tpfilter_agent_rss_after_load_bytes``,
  ``tpfilter_agent_rss_peak_bytes``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tpfilter.engine import ReconcileResult

log = logging.getLogger(__name__)

# The wording of tpfilter's capacity errors (bpfmaps.MapFullError, the engine's per-policy
# cgroup limit): the engine reports them as strings in a policy's status.
_MAP_FULL_MARKERS = ("cannot take", "do not fit", "over the limit")


def is_map_full(error: str) -> bool:
    return any(marker in error for marker in _MAP_FULL_MARKERS)


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        try:
            yield from self._collect()
        except Exception:  # a scrape must not fail because one source did
            log.exception("metrics collection failed")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.reconcile_errors = Counter(
            "tpfilter_reconcile_errors", "Policy errors in reconcile passes", ["policy"], registry=r
        )
        self.map_full_errors = Counter(
            "tpfilter_map_full_errors",
            "Reconcile errors because a filter map was full",
            ["policy"],
            registry=r,
        )
        self.reconcile_failures = Counter(
            "tpfilter_reconcile_failures", "Reconcile passes that raised", registry=r
        )
        self.policies = Gauge(
            "tpfilter_program_policies", "Policies by program state", ["state"], registry=r
        )
        self.compile_seconds = Gauge(
            "tpfilter_programs_compile_seconds", "bcc compile time at start", registry=r
        )
        self.load_seconds = Gauge(
            "tpfilter_programs_load_seconds", "Program load (verifier) time at start", registry=r
        )
        self.rss_after_load = Gauge(
            "tpfilter_agent_rss_after_load_bytes",
            "Resident memory of the agent right after compiling and loading",
            registry=r,
        )
        self.rss_peak = Gauge(
            "tpfilter_agent_rss_peak_bytes",
            "Peak resident memory of the agent after compiling and loading (LLVM)",
            registry=r,
        )
        self._server: Any = None

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Callback(collect))

    def observe_reconcile(self, result: ReconcileResult) -> None:
        """Count a reconcile pass's errors (call once per pass)."""
        attributed = 0
        for status in result.statuses:
            if status.error:
                attributed += 1
                self.reconcile_errors.labels(str(status.key)).inc()
                if is_map_full(status.error):
                    self.map_full_errors.labels(str(status.key)).inc()
        for error in result.errors[attributed:]:
            self.reconcile_errors.labels("").inc()
            if is_map_full(error):
                self.map_full_errors.labels("").inc()

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics on ``addr:port`` from a daemon thread."""
        self._server = start_http_server(port, addr=addr, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", addr, port)

    def close(self) -> None:
        if self._server is not None:
            server, _thread = self._server
            server.shutdown()
            self._server = None


def index_metrics(pin_dir: Path) -> Iterable[Any]:
    """The candidate index's size and kernel memory (tpfilter.candidates)."""
    from prometheus_client.core import GaugeMetricFamily

    from tpfilter.indexmap import read_usage

    usage = read_usage(pin_dir)
    entries = GaugeMetricFamily(
        "tpfilter_candidate_index_entries", "cgroups (and the host key) in the candidate index"
    )
    memlock = GaugeMetricFamily(
        "tpfilter_candidate_index_memlock_bytes", "Kernel memory of the candidate index"
    )
    entries.add_metric([], usage.entries if usage else 0)
    memlock.add_metric([], usage.memlock if usage else 0)
    yield entries
    yield memlock


def filter_map_usage(pin_dir: Path) -> list[Any]:
    """MapUsage of every policy's inner map, read from the pinned maps (never creates)."""
    from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps

    if not (pin_dir / OUTER_PIN_NAME).exists():
        return []
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    try:
        return list(maps.usage())
    finally:
        maps.close()
