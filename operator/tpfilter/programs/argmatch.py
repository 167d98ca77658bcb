"""A hook's declared arguments and its matchArgs entries, compiled. Pure.

Apart from the compiler (:mod:`tpfilter.programs.compiler`) because every hook type's
compiler uses it: tracepoints, kprobes (kprobes.py), and the readers that add argument
kinds (netargs, objargs, retsel, lists). :class:`Source` is where the program finds an
argument's value; :func:`compile_match_arg` turns one matchArgs entry on it into an
:class:`~tpfilter.programs.plan.ArgMatch`; :class:`Errors` collects why a policy cannot run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tpfilter.programs import layout, unbuilt
from tpfilter.programs.layout import IntType, Kind, Op
from tpfilter.programs.plan import ArgMatch
from tpfilter.programs.tasksel import FILTER_KEYS
from tpfilter.programs.values import parse_int

TASK_KEYS = FILTER_KEYS  # tasksel.py compiles them
ARG_KEYS = frozenset({"index", "type", "label"})
# What the API server fills in from the CRD's defaults: present with these values, a key
# asks for nothing, so it is no unsupported feature.
ARG_DEFAULTS: Mapping[str, object] = {"maxData": False, "returnCopy": False, "resolve": ""}
SELECTOR_KEYS = frozenset({"matchBinaries", "matchArgs", "matchActions"}) | TASK_KEYS

INT_TYPES: Mapping[str, IntType] = {
    "int8": IntType.S8,
    "sint8": IntType.S8,
    "uint8": IntType.U8,
    "int16": IntType.S16,
    "sint16": IntType.S16,
    "uint16": IntType.U16,
    "int": IntType.S32,
    "int32": IntType.S32,
    "sint32": IntType.S32,
    "uint32": IntType.U32,
    "int64": IntType.S64,
    "sint64": IntType.S64,
    "long": IntType.S64,
    "uint64": IntType.U64,
    "size_t": IntType.U64,
    "ulong": IntType.U64,
}
# a tracepoint field's size and sign -> its type where the policy names none (or auto)
FIELD_INT_TYPES = {
    (size, signed): next(t for t in IntType if t.bits == 8 * size and t.signed == signed)
    for size in (1, 2, 4, 8)
    for signed in (False, True)
}
STRING_TYPES = frozenset({"string", "data_loc"})  # argument types read as strings
_STRING_OPS: Mapping[str, Op] = {
    "equal": Op.EQ,
    "notequal": Op.NE,
    "prefix": Op.PREFIX,
    "postfix": Op.POSTFIX,
    "notprefix": Op.NOTPREFIX,
    "notpostfix": Op.NOTPOSTFIX,
}
_INT_OPS: Mapping[str, Op] = {
    "equal": Op.EQ,
    "notequal": Op.NE,
    "gt": Op.GT,
    "greaterthan": Op.GT,
    "lt": Op.LT,
    "lessthan": Op.LT,
    "mask": Op.MASK,
}


@dataclass(slots=True)
class Errors:
    reasons: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        if f"{where}: {what}" not in self.reasons:  # a list's functions repeat its entry's
            self.reasons.append(f"{where}: {what}")


def normalise(value: int, int_type: IntType) -> int:
    """The u64 the program compares: the value as the type sees it, sign-extended."""
    return int_type.u64(value)


def _as_signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _values(entry: Mapping[str, Any]) -> list[Any] | None:
    values = entry.get("values")
    if values is None:
        return []
    return list(values) if isinstance(values, list | tuple) else None


def _string_value(raw: Any, op: Op) -> bytes:
    data = str(raw).encode()
    if b"\0" in data:
        raise ValueError(f"{raw!r} contains a NUL byte")
    limit = layout.EQ_STR_MAX if op in (Op.EQ, Op.NE) else layout.LPM_STR_MAX
    if len(data) > limit:
        raise ValueError(f"{raw!r} is longer than {limit} bytes")
    return data


@dataclass(frozen=True, slots=True)
class Source:
    """Where a tracepoint field's value is found by the program."""

    kind: Kind
    src: int
    int_type: IntType


def selector_keys_ok(
    raw: Any, at: str, errors: Errors, allowed: frozenset[str], refusal: str
) -> bool:
    """A selector is a mapping of ``allowed`` keys (others present but empty are fine)."""
    if not isinstance(raw, Mapping):
        errors.add(at, "not a mapping")
        return False
    extra = sorted(k for k, v in raw.items() if k not in allowed and v not in (None, [], {}))
    for key in extra:
        why = unbuilt.SELECTOR_FIELDS.get(key)
        errors.add(at, f"{key} {refusal}" + (f": {why}" if why else ""))
    return not extra


def _op_refusal(entry: Mapping[str, Any], on: str) -> str:
    name = str(entry.get("operator"))
    why = unbuilt.reason(unbuilt.OPERATORS, name, "")
    return f"operator {name!r} is not supported on {on}" + (f": {why}" if why else "")


def compile_match_arg(
    entry: Any, where: str, sources: Mapping[int, Source], errors: Errors
) -> ArgMatch | None:
    if not isinstance(entry, Mapping):
        errors.add(where, "not a mapping")
        return None
    extra = set(entry) - {"index", "operator", "values"}
    if extra:
        errors.add(where, f"{', '.join(sorted(extra))} not supported")
        return None
    try:
        index = int(entry.get("index", 0))
    except (TypeError, ValueError):
        errors.add(where, f"index {entry.get('index')!r} is not an integer")
        return None
    source = sources.get(index)
    if source is None:
        errors.add(where, f"index {index} is not one of the hook's declared args")
        return None
    if source.kind is Kind.NOP:
        errors.add(where, f"index {index} has type nop: nothing is read to compare")
        return None
    op_name = str(entry.get("operator", "")).lower()
    values = _values(entry)
    if values is None or not values:
        errors.add(where, "values must be a non-empty list")
        return None
    if op_name in ("inmap", "notinmap"):  # integer sets, as Equal/NotEqual (lists.py)
        from tpfilter.programs.lists import compile_in_map

        return compile_in_map(entry, where, source, values, errors)
    if source.kind is Kind.INT:
        op = _INT_OPS.get(op_name)
        if op is None:
            errors.add(where, _op_refusal(entry, "integers"))
            return None
        try:
            nums = [normalise(parse_int(v), source.int_type) for v in values]
        except ValueError as exc:
            errors.add(where, f"bad integer value: {exc}")
            return None
        if op in (Op.EQ, Op.NE):
            return ArgMatch(
                Kind.INT, source.src, op, source.int_type, ints=tuple(sorted(set(nums)))
            )
        if op is Op.MASK:
            mask = 0
            for n in nums:
                mask |= n
            return ArgMatch(Kind.INT, source.src, op, source.int_type, imm=mask)
        # GT / LT with several values: ORed, i.e. beyond the weakest bound.
        key = _as_signed if source.int_type.signed else (lambda u: u)
        bound = min(nums, key=key) if op is Op.GT else max(nums, key=key)
        return ArgMatch(Kind.INT, source.src, op, source.int_type, imm=bound)
    op = _STRING_OPS.get(op_name)
    if op is None:
        errors.add(where, _op_refusal(entry, "strings"))
        return None
    try:
        strings = tuple(sorted({_string_value(v, op) for v in values}))
    except ValueError as exc:
        errors.add(where, str(exc))
        return None
    return ArgMatch(source.kind, source.src, op, strings=strings)
