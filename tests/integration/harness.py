"""Test harness: readers of what the agent left in the kernel."""

from __future__ import annotations

from pathlib import Path

from tpfilter import statefile
from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter_dev.agentproc import AgentProcess, eventually

__all__ = ["AgentProcess", "eventually", "kernel_view"]


def kernel_view(pin_dir: Path, state_dir: Path) -> dict[str, frozenset[int]]:
    """{policy name as "kind/ns/name" or "kind/name": cgroup IDs in its inner map}.

    Read straight from the pinned maps, named through the agent's state file; a map whose ID
    no record names shows up as "?<id>" (an orphan: a test would fail on it).
    """
    records = {r.policy_id: r for r in statefile.load(state_dir / statefile.STATE_FILE)}
    if not (pin_dir / "policy_filter_maps").exists():
        return {}
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    try:
        state = maps.read_all()
    finally:
        maps.close()
    view = {}
    for pid, inner in state.items():
        record = records.get(pid)
        name = str(record.key) if record else f"?{pid}"
        view[name] = inner.cgroup_ids
    return view
