"""What the policy programs did, counted, and the agent's metrics of it and of the maps.

Apart from the manager because it is bookkeeping of its own kind. The programs count per
config ID and CPU (``tpf_stats``); a config ID is reused once its policy is gone, so every
value read is turned into a delta against the last read of that ID, and the deltas are
added to totals per (policy, hook, action) that outlive the policy that made them (a
removed policy's kills still count in ``tpfilter_policy_actions``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tpfilter.programs.events import ConfigInfo
from tpfilter.programs.layout import Stat
from tpfilter.programs.metrics import filter_map_usage, index_metrics

STAT_NAMES = {
    Stat.MATCH: "matched",
    Stat.POST: "post",
    Stat.SIGKILL: "sigkill",
    Stat.DROP: "dropped",
    Stat.ERROR: "failed",
    Stat.SIGNAL: "signal",
}
_NAME_OF = {int(stat): name for stat, name in STAT_NAMES.items()}
Totals = dict[tuple[str, str, str], int]  # (policy, hook, action) -> count


class ActionTotals:
    """Running totals from successive reads of the programs' counters. Not thread-safe:
    the manager holds its lock."""

    def __init__(self) -> None:
        self._seen: dict[tuple[int, int], int] = {}  # (config ID, stat) -> last value read
        self._totals: Totals = {}
        self.records_lost = 0  # new processes the full process-record map could not take

    def refresh(
        self, stats: Mapping[tuple[int, int], int], infos: Mapping[int, ConfigInfo]
    ) -> None:
        """Add what ``stats`` (a read of tpf_stats) counted since the last read."""
        for (config_id, stat), value in stats.items():
            if (config_id, stat) == (0, Stat.RECORD_LOST):  # config 0 is never a policy's
                self.records_lost = value
                continue
            info = infos.get(config_id)
            name = _NAME_OF.get(stat)
            if info is None or name is None:
                continue
            delta = value - self._seen.get((config_id, stat), 0)
            self._seen[(config_id, stat)] = value
            if delta > 0:
                key = (info.policy, info.config.name, name)
                self._totals[key] = self._totals.get(key, 0) + delta

    def forget(self, config_id: int) -> None:
        """The config's counters were deleted: its next use starts from zero."""
        for stat in Stat:
            self._seen.pop((config_id, int(stat)), None)

    def totals(self) -> Totals:
        return dict(self._totals)


def metric_families(
    *,
    totals: Totals,
    records_lost: int,
    policy_names: Mapping[int, str],
    pin_dir: Path,
    program_memlock: Mapping[str, int],
) -> Iterable[Any]:
    """The Prometheus families of the programs: actions, the filter maps, the programs' maps."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    actions = CounterMetricFamily(
        "tpfilter_policy_actions",
        "What the policy programs did, per policy, hook and action",
        labels=["policy", "hook", "action"],
    )
    for (policy, hook, action), n in sorted(totals.items()):
        actions.add_metric([policy, hook, action], n)
    yield actions
    yield CounterMetricFamily(
        "tpfilter_process_records_lost",
        "New processes without a process record (the map was full): their"
        " matchNamespaceChanges/matchCapabilityChanges selectors cannot match",
        value=records_lost,
    )

    cgroups = GaugeMetricFamily(
        "tpfilter_policy_map_cgroups",
        "cgroup IDs in a policy's filter map",
        labels=["policy", "policy_id"],
    )
    memlock = GaugeMetricFamily(
        "tpfilter_policy_map_memlock_bytes",
        "Kernel memory of a policy's filter map",
        labels=["policy", "policy_id"],
    )
    for usage in filter_map_usage(pin_dir):
        labels = [policy_names.get(usage.policy_id, ""), str(usage.policy_id)]
        cgroups.add_metric(labels, usage.entries)
        memlock.add_metric(labels, usage.memlock)
    yield cgroups
    yield memlock
    yield from index_metrics(pin_dir)

    own = GaugeMetricFamily(
        "tpfilter_program_map_memlock_bytes",
        "Kernel memory of the programs' maps",
        labels=["map"],
    )
    for name, n in sorted(program_memlock.items()):
        own.add_metric([name], n)
    yield own
