"""``spec.lists`` and ``call: "list:NAME"``; the InMap/NotInMap operators. Pure.

Tetragon's semantics (docs/content/en/docs/concepts/tracing-policy/hooks.md, "Lists"): a
list is a named set of kernel functions; a kprobe whose ``call`` is ``list:NAME`` stands for
one kprobe per function of the list, each with the rest of the entry (args, selectors,
actions) unchanged. So expanding here, before :func:`kprobes.compile_kprobe`, gives every
function exactly what a hand-written entry would get, errors included, and the programs and
maps need nothing new.

List types, decided for what a node can run:

* none (no ``type``): kernel functions, probed as written; a syscall needs ``type:
  syscalls`` (Tetragon: syscall functions cannot be mixed with regular ones), so such a
  kprobe must say ``syscall: false`` (the CRD's default is true).
* ``syscalls``: syscall names (``dup``, ``sys_dup``, ``__x64_sys_dup``), probed with
  syscall semantics (the arch's wrapper, the user's registers), as ``syscall: true``.
  ``__ia32_``/``__x32_`` compat wrappers are refused: their arguments sit in other
  registers than the ones the kprobe program reads.
* ``generated_syscalls``, ``generated_ftrace``: refused. They expand to every syscall
  (~400) or to every traceable function a regex matches (unknown until the node is read),
  and each function takes one of the node's kprobe hook IDs for the agent's life
  (``layout.HOOK_EXEC - kprobes.FIRST_HOOK`` of them, ~420): one such policy could use
  them all up and leave no kprobe for any other policy.

InMap/NotInMap: in Tetragon the values sit in a BPF hash map and the argument is looked up
in it; they apply to integer arguments only (writeMatchValuesInMap). tpfilter's integer
Equal/NotEqual are already that (``tpf_ints``, one hash map entry per value), so InMap is
Equal and NotInMap is NotEqual, with Tetragon's extra value forms: ranges ``a:b`` (every
value in between, as Tetragon writes them). ``list:NAME`` values name syscall lists and need
Tetragon's ``syscall64`` argument of ``raw_syscalls/sys_enter``, a hook tpfilter does not
offer: refused with that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tpfilter.programs.argmatch import Errors, Source, normalise
from tpfilter.programs.layout import Kind, Op
from tpfilter.programs.plan import ArgMatch, NodeEnv
from tpfilter.programs.values import parse_int

LIST_PREFIX = "list:"
IN_MAP_OPS: Mapping[str, Op] = {"inmap": Op.EQ, "notinmap": Op.NE}
MAX_RANGE_VALUES = 4096  # per matchArgs entry: each value is an entry of the shared tpf_ints
_COMPAT_PREFIXES = ("__ia32_", "__x32_")
_LIST_KEYS = frozenset({"name", "type", "values", "pattern", "validated"})
_REFUSED_TYPES = {
    "generated_syscalls": (
        "generated lists are not supported: every syscall of the node (~400 functions) would "
        "each take one of the node's ~420 kprobe hook IDs for the agent's life; list the "
        "syscalls you need in a list of type syscalls"
    ),
    "generated_ftrace": (
        "generated lists are not supported: the functions a pattern matches are known only "
        "on the node and each would take one of its ~420 kprobe hook IDs for the agent's "
        "life; list the functions you need"
    ),
}


@dataclass(frozen=True, slots=True)
class FunctionList:
    """One usable entry of spec.lists: its kernel functions (or syscalls) as written."""

    name: str
    syscalls: bool  # type: syscalls (probe the arch's wrappers with syscall semantics)
    values: tuple[str, ...]


def parse_lists(value: Any, errors: Errors) -> dict[str, FunctionList]:
    """spec.lists by name. Every list is checked, used or not (as Tetragon validates them)."""
    if value in (None, [], {}):
        return {}
    if not isinstance(value, list):
        errors.add("spec.lists", "must be a list")
        return {}
    out: dict[str, FunctionList] = {}
    for i, raw in enumerate(value):
        got = _parse_list(raw, f"spec.lists[{i}]", errors)
        if got is None:
            continue
        if got.name in out:
            errors.add(f"spec.lists[{i}].name", f"list {got.name!r} is defined twice")
            continue
        out[got.name] = got
    return out


def _parse_list(raw: Any, where: str, errors: Errors) -> FunctionList | None:
    if not isinstance(raw, Mapping):
        errors.add(where, "not a mapping")
        return None
    extra = sorted(set(raw) - _LIST_KEYS)
    if extra:
        errors.add(where, f"{', '.join(extra)} not supported")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        errors.add(f"{where}.name", "a list needs a name")
        return None
    list_type = str(raw.get("type") or "").lower()
    if list_type in _REFUSED_TYPES:
        errors.add(f"{where}.type", f"{list_type}: {_REFUSED_TYPES[list_type]}")
        return None
    if list_type not in ("", "syscalls"):
        errors.add(f"{where}.type", f"unknown list type {raw.get('type')!r}")
        return None
    if raw.get("pattern"):
        errors.add(f"{where}.pattern", "a pattern is for generated_ftrace lists only")
        return None
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        errors.add(f"{where}.values", f"list {name!r} is empty: it would probe nothing")
        return None
    bad = [v for v in values if not isinstance(v, str) or not v.strip()]
    if bad:
        errors.add(f"{where}.values", f"not function names: {bad!r}")
        return None
    compat = [v for v in values if v.startswith(_COMPAT_PREFIXES)]
    if list_type == "syscalls" and compat:
        errors.add(
            f"{where}.values",
            f"32-bit compat syscalls are not supported ({', '.join(compat)}): their "
            "arguments are in other registers than the ones the kprobe program reads",
        )
        return None
    return FunctionList(name, list_type == "syscalls", tuple(v.strip() for v in values))


def expand_kprobe(
    kp: Any, where: str, lists: Mapping[str, FunctionList], env: NodeEnv, errors: Errors
) -> list[Any]:
    """The kprobe entries ``kp`` stands for: itself, or one per function of its list."""
    call = kp.get("call") if isinstance(kp, Mapping) else None
    if not isinstance(call, str) or not call.startswith(LIST_PREFIX):
        return [kp]
    name = call.removeprefix(LIST_PREFIX)
    found = lists.get(name)
    if found is None:
        errors.add(f"{where}.call", f"no list {name!r} in spec.lists (or it was refused)")
        return []
    syscall = kp.get("syscall", True)
    if found.syscalls and syscall is False:
        errors.add(
            f"{where}.syscall",
            f"false, but list {name!r} has type syscalls (its functions are syscalls)",
        )
        return []
    if not found.syscalls and syscall is not False:
        errors.add(
            f"{where}.syscall",
            f"list {name!r} has no type: its values are kernel functions, so the kprobe "
            "needs syscall: false (a list of syscalls needs type: syscalls)",
        )
        return []
    from tpfilter.programs.kprobes import resolve_call

    # One entry per function: "dup", "sys_dup" and "__x64_sys_dup" are the same wrapper.
    first: dict[str, str] = {}
    for value in found.values:
        first.setdefault(resolve_call(value, found.syscalls, env)[0], value)
    return [{**kp, "call": value, "syscall": found.syscalls} for value in first.values()]


def refuse_list_calls(spec: Mapping[str, Any], errors: Errors) -> None:
    """``list:`` where it means nothing: lists name kernel functions, for kprobes only."""
    for key, field in (("tracepoints", "event"), ("lsmhooks", "hook")):
        entries = spec.get(key)
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            value = entry.get(field) if isinstance(entry, Mapping) else None
            if isinstance(value, str) and value.startswith(LIST_PREFIX):
                errors.add(
                    f"spec.{key}[{i}].{field}",
                    f"{value}: lists apply to a kprobe's call only (Tetragon's)",
                )


def compile_in_map(
    entry: Mapping[str, Any], where: str, source: Source, values: Sequence[Any], errors: Errors
) -> ArgMatch | None:
    """InMap/NotInMap on an integer: its values (and ranges) as the Equal/NotEqual set."""
    name = str(entry.get("operator"))
    if source.kind is not Kind.INT:
        errors.add(
            where,
            f"operator {name} compares integer arguments only (Tetragon's); use "
            "Equal/NotEqual or Prefix/Postfix on a string",
        )
        return None
    nums: set[int] = set()
    for raw in values:
        text = str(raw).strip()
        if text.startswith(LIST_PREFIX):
            errors.add(
                where,
                f"{text}: values from a list are syscall numbers for Tetragon's syscall64 "
                "argument of raw_syscalls/sys_enter, a hook tpfilter does not offer",
            )
            return None
        try:
            lo, _, hi = text.partition(":")
            low, high = sorted((parse_int(lo), parse_int(hi or lo)))
        except ValueError:
            errors.add(where, f"bad integer value or range {raw!r} (a number or a:b)")
            return None
        if high - low >= MAX_RANGE_VALUES:
            errors.add(
                where,
                f"range {text} has {high - low + 1} values, at most {MAX_RANGE_VALUES} per "
                "entry (each is an entry of the node's integer set map)",
            )
            return None
        nums.update(normalise(n, source.int_type) for n in range(low, high + 1))
    if len(nums) > MAX_RANGE_VALUES:
        errors.add(where, f"{len(nums)} values, at most {MAX_RANGE_VALUES} per entry")
        return None
    op = IN_MAP_OPS[name.lower()]
    return ArgMatch(Kind.INT, source.src, op, source.int_type, ints=tuple(sorted(nums)))


__all__ = [
    "IN_MAP_OPS",
    "LIST_PREFIX",
    "FunctionList",
    "compile_in_map",
    "expand_kprobe",
    "parse_lists",
    "refuse_list_calls",
]
