"""matchNamespaceChanges and matchCapabilityChanges: the task against its process record. Pure.

Tetragon's semantics (bpf/process/pfilter.h ``process_filter_namespace_change``,
``process_filter_capability_change``): each process has a record of its namespaces and
capability sets, taken when it was created (the clone of a new process, not of a thread;
an exec does not renew it) or, for a process older than the record keeping, when the
keeping started; a selector compares the task with it, and a selector that matched on a
change renews the record, so one change is reported once.

* ``matchNamespaceChanges`` ``In [Mnt, Net]``: one of the listed namespaces differs from
  the record; ``NotIn [Mnt]``: one of the *other* namespaces does.
* ``matchCapabilityChanges`` (``type`` Effective, Inheritable or Permitted) ``In``: one of
  the listed capabilities changed in that set; ``NotIn``: none of them changed, and
  another did. ``isNamespaceCapability``: only outside the node's user namespace.
* a process without a record (the map full, or started before the agent could see its
  clone and not in /proc) matches neither operator.

What runs: the programs compare facts (``bpf/programs/tpf_task.h``): bit i of
``F_NS_CHANGED`` is namespace i changed, ``F_CAPS_CHANGED + set`` is the set's bits that
changed (record XOR now); every filter here is a mask test of one of them. The records
live in a map the agent makes only while a loaded policy has one of these selectors
(:mod:`tpfilter.programs.procrecords`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tpfilter.programs.tasksel import (
    NAMESPACES,
    TFF_MASK,
    TFF_NOTIN,
    TaskFilter,
    capability_mask,
    capability_set,
    entries,
    extra_keys,
    namespace_capability,
    op_flag,
)

F_NS_CHANGED = 18  # tpf_task.h TPF_F_NS_CHANGED
F_CAPS_CHANGED = 19  # TPF_F_CAPS_CHANGED + TPF_CAPS_*
ALL_NAMESPACES = (1 << len(NAMESPACES)) - 1
ALL_CAPS = (1 << 64) - 1


def namespace_changes(raw: Any, where: str, errors: Any) -> list[TaskFilter] | None:
    found = entries(raw, where, errors)
    if found is None:
        return None
    out = []
    for at, entry in found:
        if extra_keys(entry, at, {"operator", "values"}, errors):
            return None
        flag = op_flag(entry, at, errors)
        values = entry.get("values")
        if flag is None:
            return None
        if not isinstance(values, list) or not values:
            errors.add(f"{at}.values", "must be a non-empty list")
            return None
        notin = flag == TFF_NOTIN
        canon = {n.lower(): n for n in NAMESPACES}
        mask = 0
        for v in values:
            name = canon.get(str(v).lower())
            if name is None:
                errors.add(f"{at}.values", f"{v!r} is not a namespace ({', '.join(NAMESPACES)})")
                return None
            mask |= 1 << NAMESPACES.index(name)
        if notin:
            mask = ALL_NAMESPACES & ~mask
        if not mask:
            errors.add(f"{at}.values", "NotIn every namespace: nothing is left to change")
            return None
        out.append(TaskFilter(F_NS_CHANGED, TFF_MASK, (mask,), changes=True))
    return out


def capability_changes(
    raw: Any, where: str, errors: Any, host_ns: Mapping[str, Any]
) -> list[TaskFilter] | None:
    found = entries(raw, where, errors)
    if found is None:
        return None
    out = []
    for at, entry in found:
        if extra_keys(entry, at, {"type", "operator", "values", "isNamespaceCapability"}, errors):
            return None
        cap_set = capability_set(entry, at, errors)
        if cap_set is None:
            return None
        flag = op_flag(entry, at, errors)
        if flag is None:
            return None
        mask = capability_mask(entry, at, errors)
        if mask is None:
            return None
        nscap = namespace_capability(entry, at, errors, host_ns)
        if nscap is None:
            return None
        out += nscap
        notin = flag == TFF_NOTIN
        fact = F_CAPS_CHANGED + cap_set
        if notin:  # none of them changed (the mask test fails) and another did
            out.append(TaskFilter(fact, TFF_MASK | TFF_NOTIN, (mask,), changes=True))
            out.append(TaskFilter(fact, TFF_MASK, (ALL_CAPS & ~mask,), changes=True))
        else:
            out.append(TaskFilter(fact, TFF_MASK, (mask,), changes=True))
    return out
