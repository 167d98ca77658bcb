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
    CAP_NUMBERS,
    CAP_SETS,
    F_NS,
    NAMESPACES,
    TFF_MASK,
    TFF_NOTIN,
    TaskFilter,
)

F_NS_CHANGED = 18  # tpf_task.h TPF_F_NS_CHANGED
F_CAPS_CHANGED = 19  # TPF_F_CAPS_CHANGED + TPF_CAPS_*
ALL_NAMESPACES = (1 << len(NAMESPACES)) - 1
ALL_CAPS = (1 << 64) - 1


def _entries(raw: Any, where: str, errors: Any) -> list[tuple[str, Mapping[str, Any]]] | None:
    if not isinstance(raw, list) or not raw:
        errors.add(where, "must be a non-empty list")
        return None
    bad = [i for i, e in enumerate(raw) if not isinstance(e, Mapping)]
    if bad:
        errors.add(f"{where}[{bad[0]}]", "not a mapping")
        return None
    return [(f"{where}[{i}]", e) for i, e in enumerate(raw)]


def _notin(entry: Mapping[str, Any], at: str, errors: Any) -> bool | None:
    op = str(entry.get("operator", ""))
    if op.lower() not in ("in", "notin"):
        errors.add(f"{at}.operator", f"{op!r} is not supported (In, NotIn)")
        return None
    return op.lower() == "notin"


def _values(entry: Mapping[str, Any], at: str, errors: Any) -> list[Any] | None:
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        errors.add(f"{at}.values", "must be a non-empty list")
        return None
    return values


def namespace_changes(raw: Any, where: str, errors: Any) -> list[TaskFilter] | None:
    entries = _entries(raw, where, errors)
    if entries is None:
        return None
    out = []
    for at, entry in entries:
        extra = sorted(set(entry) - {"operator", "values"})
        if extra:
            errors.add(at, f"{', '.join(extra)} not supported")
            return None
        notin, values = _notin(entry, at, errors), _values(entry, at, errors)
        if notin is None or values is None:
            return None
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
    entries = _entries(raw, where, errors)
    if entries is None:
        return None
    out = []
    for at, entry in entries:
        extra = sorted(set(entry) - {"type", "operator", "values", "isNamespaceCapability"})
        if extra:
            errors.add(at, f"{', '.join(extra)} not supported")
            return None
        ctype = str(entry.get("type") or "Effective")
        cap_set = CAP_SETS.get(ctype.lower())
        if cap_set is None:
            errors.add(
                f"{at}.type", f"{ctype!r} is not supported (Effective, Inheritable, Permitted)"
            )
            return None
        notin, values = _notin(entry, at, errors), _values(entry, at, errors)
        if notin is None or values is None:
            return None
        mask = 0
        for v in values:
            bit = CAP_NUMBERS.get(str(v).upper())
            if bit is None:
                errors.add(
                    f"{at}.values",
                    f"{v!r} is not a capability (CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)",
                )
                return None
            mask |= 1 << bit
        nscap = entry.get("isNamespaceCapability", False)
        if not isinstance(nscap, bool):
            errors.add(f"{at}.isNamespaceCapability", "must be true or false")
            return None
        if nscap:
            host = host_ns.get("User")
            if not isinstance(host, int):
                errors.add(
                    f"{at}.isNamespaceCapability", f"needs the node's user namespace: {host}"
                )
                return None
            out.append(TaskFilter(F_NS + NAMESPACES.index("User"), TFF_NOTIN, (host,)))
        fact = F_CAPS_CHANGED + cap_set
        if notin:  # none of them changed (the mask test fails) and another did
            out.append(TaskFilter(fact, TFF_MASK | TFF_NOTIN, (mask,), changes=True))
            out.append(TaskFilter(fact, TFF_MASK, (ALL_CAPS & ~mask,), changes=True))
        else:
            out.append(TaskFilter(fact, TFF_MASK, (mask,), changes=True))
    return out
