"""followForks filters' node-wide IDs and the tpf_follow map's content. Pure.

A followForks filter asks whether the task or one of its ancestors has one of a few PIDs.
The program cannot compare every ancestor against every filter in the selector stage (its
verifier budget), so it looks each ancestor up once per event in ``tpf_follow{kind, pid}``
and ORs the values: a bit per followForks filter whose set holds that PID
(bpf/programs/tpf_task.h). A filter's bit is its ID here, node-wide, at most
:data:`MAX_IDS` at once; past that a policy fails to load with that reason (its status is
``error``), never silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tpfilter.programs.tasksel import TaskFilter

MAX_IDS = 64  # bits of the u64 fact TPF_F_FOLLOW

Key = tuple[int, int]  # (tpf_follow_key.kind, pid)


class FollowIds:
    """Which followForks filter has which ID, by hook entry (config ID)."""

    def __init__(self) -> None:
        self._by_config: dict[int, list[tuple[int, TaskFilter]]] = {}

    def assign(self, config_id: int, filters: Sequence[TaskFilter]) -> list[int]:
        """IDs for ``filters``' followForks filters (in order), added to ``config_id``'s."""
        used = {i for entries in self._by_config.values() for i, _ in entries}
        wanted = [f for f in filters if f.follow]
        free = [i for i in range(MAX_IDS) if i not in used][: len(wanted)]
        if len(free) < len(wanted):
            raise RuntimeError(
                f"no followForks ID left: at most {MAX_IDS} followForks filters are loaded "
                "on a node at once"
            )
        self._by_config.setdefault(config_id, []).extend(zip(free, wanted, strict=True))
        return free

    def release(self, config_id: int) -> None:
        self._by_config.pop(config_id, None)

    def content(self) -> dict[Key, int]:
        """What tpf_follow holds: (kind, pid) -> the bits of the filters with that PID."""
        out: dict[Key, int] = {}
        for entries in self._by_config.values():
            for bit, f in entries:
                for pid in f.values:
                    out[(f.follow, pid)] = out.get((f.follow, pid), 0) | 1 << bit
        return out


def changes(old: Mapping[Key, int], new: Mapping[Key, int]) -> tuple[dict[Key, int], list[Key]]:
    """(entries to write, keys to delete) to go from ``old`` to ``new``: written before
    the selectors that use them, deleted after the ones that did are gone."""
    puts = {k: v for k, v in new.items() if old.get(k) != v}
    return puts, [k for k in old if k not in new]
