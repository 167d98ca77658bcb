"""A hook's entries in the programs' maps, and how to change them without a gap.

Per hook the programs see two things (bpf/programs/tpf_programs.h):

* the hook's *unfiltered* entries (policies without a selector, every process) as a short
  list, ``tpf_slots{hook, 0..n-1}``, at most :data:`~tpfilter.programs.layout.MAX_ANY`;
* each *filtered* policy's entries under ``tpf_pcfg{hook, policy ID}``, found from the
  candidate index by policy, never by position, so a hook holds as many filtered
  policies as the map does (10,000 and more) and an event looks only at those the index
  lists for its task.

:func:`write_hook` goes from the old entries to the new ones so that a program reading
at any moment sees every entry that is loaded both before and after: the unfiltered list
is rewritten in place (survivors keep their relative order and move left over removed
ones; a survivor may appear twice for a moment, never not at all) with the count and the
string masks widened first and narrowed last; a filtered policy's value is replaced whole
by one update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tpfilter.programs import layout
from tpfilter.programs.plan import HookConfig


@dataclass(frozen=True, slots=True)
class Entry:
    config_id: int
    policy_id: int  # 0: unfiltered
    cfg: HookConfig


def _masks(entries: Iterable[Entry]) -> tuple[int, int, int, int]:
    s = r = c = b = 0
    for e in entries:
        s, r, c = s | e.cfg.str_mask, r | e.cfg.rev_mask, c | e.cfg.capture_mask
        b |= e.cfg.bin_mask
    return s, r, c, b


def by_policy(entries: Iterable[Entry]) -> dict[int, tuple[Entry, ...]]:
    """The filtered entries grouped by policy ID, in their order."""
    out: dict[int, list[Entry]] = {}
    for e in entries:
        if e.policy_id:
            out.setdefault(e.policy_id, []).append(e)
    return {pid: tuple(es) for pid, es in out.items()}


def over_capacity(
    configs: Sequence[HookConfig], policy_id: int, loaded: dict[int, list[Entry]]
) -> tuple[str, ...]:
    """Why a policy's ``configs`` cannot join the ``loaded`` hooks (empty: they can)."""
    counts: dict[int, int] = {}
    for cfg in configs:
        counts[cfg.hook] = counts.get(cfg.hook, 0) + 1
    reasons = []
    for hook, n in counts.items():
        name = next(c.name for c in configs if c.hook == hook)
        if policy_id and n > layout.MAX_PER_HOOK:
            reasons.append(
                f"{name}: {n} entries in one policy, at most {layout.MAX_PER_HOOK} per hook"
            )
        elif not policy_id:
            unfiltered = sum(1 for e in loaded.get(hook, ()) if not e.policy_id)
            if unfiltered + n > layout.MAX_ANY:
                reasons.append(
                    f"{name}: {layout.MAX_ANY} policy hooks without a selector already loaded"
                    " (they run for every process)"
                )
    return tuple(reasons)


def write_hook(programs: Any, hook: int, old: Sequence[Entry], new: Sequence[Entry]) -> None:
    """Make ``programs``' maps go from ``old`` to ``new`` for ``hook`` (see above)."""
    if list(old) == list(new):
        return
    old_any = [e for e in old if not e.policy_id]
    new_any = [e for e in new if not e.policy_id]
    old_pol, new_pol = by_policy(old), by_policy(new)
    old_m, new_m = _masks(old), _masks(new)
    union = tuple(o | n for o, n in zip(old_m, new_m, strict=True))
    programs.write_hook(hook, len(old_any), len(old_pol.keys() | new_pol.keys()), *union)
    for slot, entry in enumerate(new_any):
        if slot >= len(old_any) or old_any[slot] != entry:
            programs.write_slot(hook, slot, entry.config_id, 0, entry.cfg)
    for pid, entries in new_pol.items():
        if old_pol.get(pid) != entries:
            programs.write_policy_hook(hook, pid, [(e.config_id, e.cfg) for e in entries])
    programs.write_hook(hook, len(new_any), len(new_pol), *new_m)
    for slot in range(len(new_any), len(old_any)):
        programs.delete_slot(hook, slot)
    for pid in old_pol.keys() - new_pol.keys():
        programs.delete_policy_hook(hook, pid)
