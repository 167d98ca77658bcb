"""When a node writes its report: the coalescing decision, pure.

A node's report is one object holding every policy (docs/status.md says why), so each
write costs the whole object in etcd and in every watcher's stream. Writes are therefore:

* **only on change**: the report is compared with what was last written (or, after a
  restart, with what the API server holds), never rewritten identical;
* **at most once per** ``min_interval`` for a *significant* change (a policy's state,
  reason, generation, hooks; a policy added or removed): a burst of events is one write;
* **at most once per** ``counts_interval`` (longer) when only counts changed (cgroups and
  pods held): pod churn on a busy node is then one write a minute, not one per pod;
* **at least once per** ``refresh_interval`` (an hour by default), a safety net only.

Liveness is not the report's business: a write of the whole report to say "still here"
would cost its full size per node and interval (docs/status.md). The agent renews a small
Lease per node instead (``tpfilter.nodelease``), as the kubelet does for its Node.

Every decision is a function of the times and contents handed in, so it is unit-tested
without clocks; the agent's reporter only sleeps until the time this returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tpfilter.nodereport import Entry, without_counts


@dataclass(frozen=True, slots=True)
class WriteRates:
    min_interval: float = 5.0  # seconds between two writes for a significant change
    counts_interval: float = 60.0  # seconds between two writes when only counts changed
    refresh_interval: float = 3600.0  # a write at least this often, changed or not

    def __post_init__(self) -> None:
        if not 0 <= self.min_interval <= self.counts_interval:
            raise ValueError("need 0 <= min_interval <= counts_interval")
        if self.refresh_interval <= 0:
            raise ValueError("refresh_interval must be positive")


@dataclass(frozen=True, slots=True)
class Written:
    """What the API server holds: the entries and when they were written (wall clock)."""

    entries: Sequence[Entry]
    at: float


def next_write(current: Sequence[Entry], written: Written | None, rates: WriteRates) -> float:
    """The wall-clock time at which ``current`` should be written (may be in the past).

    Without a previous write: at once (``0.0``). Otherwise the earliest of the times the
    change (if any) and the refresh allow.
    """
    if written is None:
        return 0.0
    due = written.at + rates.refresh_interval
    if list(current) == list(written.entries):
        return due
    if without_counts(current) != without_counts(written.entries):
        return min(due, written.at + rates.min_interval)
    return min(due, written.at + rates.counts_interval)
