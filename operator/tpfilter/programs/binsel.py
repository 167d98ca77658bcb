"""matchBinaries compiled for every hook type: the operators, followChildren. Pure.

Tetragon's semantics (its selectors page and pkg/selectors): one ``matchBinaries`` entry
per selector (a second is refused, as Tetragon does), ANDed with the rest of it; operators
``In``, ``NotIn``, ``Prefix``, ``NotPrefix``, ``Postfix``, ``NotPostfix`` on the values,
which are ORed (``Not…``: none of them); ``followChildren: true``: the process's binary or
the binary of one of its ancestors.

What "the binary" is, per hook (bpf/programs/tpf_binary.c says how it is read):

* ``sched/sched_process_exec``: the exec'd filename (``bprm->filename``), as given to
  execve. ``In``/``NotIn`` without followChildren keep the exec hook's own per-selector
  set (:data:`BinOp`, unlimited), so nothing changes for existing exec policies;
* every other hook: the path of the task's executable, ``current->mm->exe_file``, read
  when the event happens, as the task's mount namespace sees it. It is the *resolved*
  file: ``/bin/sh`` run through a symlink is its target, and no relative path is seen
  (Tetragon compares the execve filename it kept in its process cache; tpfilter keeps no
  per-process record from exec).

Every other case becomes a task filter (tpf_task.h) testing one bit of a task fact:
:data:`F_BIN` (the task's binary) or :data:`F_BIN_FOLLOW` (it or an ancestor's). The bit
is a node-wide ID given when the entry is loaded (programs/binids.py: filters with the same
operator kind and values share one; at most 64 at once).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tpfilter.programs import btf, layout
from tpfilter.programs.layout import BinOp
from tpfilter.programs.pathwalk import path_offsets
from tpfilter.programs.taskbtf import task_offsets
from tpfilter.programs.tasksel import MAX_FILTERS, TFF_MASK, TFF_NOTIN, TaskFilter

F_BIN, F_BIN_FOLLOW = 16, 17  # tpf_task.h TPF_F_BIN, TPF_F_BIN_FOLLOW
BIN_EQ, BIN_PREFIX, BIN_POSTFIX = 1, 2, 3  # TaskFilter.binary: which set holds the values
BINM_OWN, BINM_FOLLOW, BINM_POSTFIX = 1, 2, 4  # tpf_hook.bin_mask (TPF_BINM_*)

# operator -> (set kind, negated)
OPERATORS: Mapping[str, tuple[int, bool]] = {
    "in": (BIN_EQ, False),
    "notin": (BIN_EQ, True),
    "prefix": (BIN_PREFIX, False),
    "notprefix": (BIN_PREFIX, True),
    "postfix": (BIN_POSTFIX, False),
    "notpostfix": (BIN_POSTFIX, True),
}
OPERATOR_NAMES = "In, NotIn, Prefix, NotPrefix, Postfix, NotPostfix"

# -D name -> (struct, member): where tpf_binary.c finds a task's executable
MEMBERS = {
    "TPF_OFF_TASK_MM": ("task_struct", "mm"),
    "TPF_OFF_MM_EXE_FILE": ("mm_struct", "exe_file"),
}


def binary_offsets(kernel: Any) -> dict[str, int] | str:
    """The executable's offsets by -D name, or why the binary stage cannot be compiled (it
    also needs the path walk's and the task walk's offsets)."""
    for needed in (path_offsets(kernel), task_offsets(kernel)):
        if isinstance(needed, str):
            return needed
    return btf.offsets(kernel, MEMBERS)


def binary_cflags(kernel: Any) -> list[str]:
    """-D flags that compile the binary stage (tpf_binary.c) in; none where it cannot be."""
    return btf.feature_cflags("TPF_WITH_BINARY", binary_offsets(kernel))


@dataclass(frozen=True, slots=True)
class Binaries:
    """A selector's matchBinaries: the exec hook's own set, or one task filter."""

    bin_op: BinOp = BinOp.NONE
    paths: tuple[bytes, ...] = ()  # bin_op's set (the exec hook's In/NotIn)
    task: tuple[TaskFilter, ...] = ()


def _value(raw: Any, limit: int) -> bytes:
    if not isinstance(raw, str):
        raise ValueError(f"{raw!r} is not a string")
    data = raw.encode()
    if b"\0" in data:
        raise ValueError(f"{raw!r} contains a NUL byte")
    if len(data) > limit:
        raise ValueError(f"{raw!r} is longer than {limit} bytes")
    return data


def compile_binaries(
    raw: Any, where: str, errors: Any, *, exec_hook: bool, kernel: Any
) -> Binaries | None:
    """A selector's ``matchBinaries`` (``where``: its path), or None after adding the
    reasons to ``errors`` (a ``argmatch.Errors``)."""
    if not isinstance(raw, list) or not raw:
        errors.add(where, "must be a non-empty list")
        return None
    if len(raw) > 1:
        errors.add(where, "one matchBinaries entry per selector (Tetragon's limit)")
        return None
    entry, at = raw[0], f"{where}[0]"
    if not isinstance(entry, Mapping):
        errors.add(at, "not a mapping")
        return None
    extra = sorted(set(entry) - {"operator", "values", "followChildren"})
    if extra:
        errors.add(at, f"{', '.join(extra)} not supported")
        return None
    op_name = str(entry.get("operator", ""))
    found = OPERATORS.get(op_name.lower())
    if found is None:
        errors.add(f"{at}.operator", f"{op_name!r} is not supported ({OPERATOR_NAMES})")
        return None
    kind, negated = found
    follow = entry.get("followChildren", False)
    if not isinstance(follow, bool):
        errors.add(f"{at}.followChildren", "must be true or false")
        return None
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        errors.add(f"{at}.values", "must be a non-empty list")
        return None
    limit = layout.EQ_STR_MAX if kind == BIN_EQ else layout.LPM_STR_MAX
    try:
        paths = tuple(sorted({_value(v, limit) for v in values}))
    except ValueError as exc:
        errors.add(f"{at}.values", str(exc))
        return None
    if exec_hook and kind == BIN_EQ and not follow:
        return Binaries(BinOp.NOT_IN if negated else BinOp.IN, paths)
    why = binary_offsets(kernel)
    if isinstance(why, str):
        errors.add(where, f"needs the executable's path from the node's BTF: {why}")
        return None
    flags = TFF_MASK | (TFF_NOTIN if negated else 0)
    first = F_BIN_FOLLOW if follow else F_BIN
    return Binaries(task=(TaskFilter(first, flags, binary=kind, strings=paths),))


def with_binaries(
    task: tuple[TaskFilter, ...] | None, bins: Binaries, where: str, errors: Any
) -> tuple[TaskFilter, ...] | None:
    """A selector's task filters with its matchBinaries filter (None stays None); the
    selector's task filters are bounded (tpf_task.h TPF_MAX_TFILTERS)."""
    if task is None:
        return None
    if len(task) + len(bins.task) > MAX_FILTERS:
        why = f"more than {MAX_FILTERS} matchPIDs/matchNamespaces/matchCapabilities entries"
        errors.add(where, why + " and matchBinaries")
        return None
    return task + bins.task


def bin_mask(filters: tuple[TaskFilter, ...]) -> int:
    """tpf_hook.bin_mask bits ``filters`` need (BINM_*)."""
    mask = 0
    for f in filters:
        if f.binary:
            mask |= BINM_OWN | (BINM_FOLLOW if f.first == F_BIN_FOLLOW else 0)
            mask |= BINM_POSTFIX if f.binary == BIN_POSTFIX else 0  # the name reversed
    return mask
