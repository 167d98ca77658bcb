"""A TracingPolicy spec -> what the generic BPF programs need in their maps. Pure.

Nothing here touches the kernel: the node's capabilities and tracepoint formats come in
through :class:`NodeEnv`, so every decision is unit-tested (tests/unit/test_programs_*).

Semantics (Tetragon's, for the subset implemented; docs/policies.md has the table):

* selectors of a hook entry are ORed, in order: the first that matches decides;
* inside a selector, matchBinaries (binsel.py) and every matchArgs entry are ANDed;
* the values of one entry are ORed (Equal, In, Prefix, Postfix, Mask, GT, LT), except
  NotEqual and NotIn, which mean "none of the values";
* a hook entry without selectors posts every call; a selector without matchActions posts;
  NoPost suppresses the event, Sigkill kills the task (bpf_send_signal(SIGKILL)), Signal
  sends it ``argSig`` (tpfilter.programs.actions).

Anything outside the subset makes the whole policy *unsupported* (with every reason): a
policy is never loaded with a part of it dropped, since a dropped filter could widen an
enforcing selector (kill more than its author meant).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tpfilter.programs import layout, unbuilt
from tpfilter.programs.actions import compile_actions
from tpfilter.programs.binsel import Binaries, bin_mask, compile_binaries, with_binaries
from tpfilter.programs.layout import Action, BinOp, IntType, Kind, Op
from tpfilter.programs.tasksel import (
    FILTER_KEYS,
    REFUSED_KEYS,
    TASK_BIT,
    TaskFilter,
    compile_task_filters,
)
from tpfilter.programs.tracefs import Field, TracepointFormat
from tpfilter.programs.values import parse_int

__all__ = [
    "STRING_TYPES",
    "ArgMatch",
    "ArgSpec",
    "HookConfig",
    "NodeEnv",
    "PolicyPlan",
    "Selector",
    "compile_spec",
    "parse_int",
]

EXEC_HOOK_NAME = "sched/sched_process_exec"
TASK_KEYS = FILTER_KEYS | set(REFUSED_KEYS)  # tasksel.py compiles (or refuses) them
SPEC_HANDLED_ELSEWHERE = frozenset({"podSelector", "containerSelector"})
# Keys that only describe or label; they change no decision.
_TP_INFO_KEYS = frozenset({"subsystem", "event", "args", "selectors", "message", "tags"})
_ARG_KEYS = frozenset({"index", "type", "label"})
# What the API server fills in from the CRD's defaults: present with these values, a key
# asks for nothing, so it is no unsupported feature.
_ARG_DEFAULTS: Mapping[str, object] = {"maxData": False, "returnCopy": False, "resolve": ""}
_SELECTOR_KEYS = frozenset({"matchBinaries", "matchArgs", "matchActions"}) | TASK_KEYS

_INT_TYPES: Mapping[str, IntType] = {
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
_FIELD_INT_TYPES = {
    (size, signed): next(t for t in IntType if t.bits == 8 * size and t.signed == signed)
    for size in (1, 2, 4, 8)
    for signed in (False, True)
}
_STRING_TYPES = frozenset({"string", "data_loc"})
STRING_TYPES = _STRING_TYPES  # argument types read as strings (tpfilter.accept needs them)
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


@dataclass(frozen=True, slots=True)
class NodeEnv:
    """What the node offers, as the compiler needs it."""

    tracepoint_format: Callable[[str, str], TracepointFormat | None]
    syscall_numbers: Mapping[str, int]
    kprobes: str | None = "kprobes are not available"  # None = available, else why not
    lsm: str | None = "BPF LSM programs are not available"
    tracepoints: str | None = None  # None = tracefs and the programs are there
    kernel: Any = None  # programs.btf.KernelBtf of the node (kprobes: functions, offsets)
    kprobe_hook: Callable[[str], int | None] | None = None  # a kernel function's hook ID
    syscall_prefix: str = "__x64_"  # the arch's syscall wrapper prefix (syscall: true)
    host_ns: Mapping[str, int | str] | None = None  # host_ns: the node's namespaces (hostns.py)


@dataclass(frozen=True, slots=True)
class ArgMatch:
    """One matchArgs entry, ready for the map."""

    kind: Kind
    src: int  # values[] index (INT) or strs[] index (USER_STR); 0 for PATH
    op: Op
    int_type: IntType = IntType.U64
    imm: int = 0  # GT/LT bound, Mask bits (already normalised, as u64)
    ints: tuple[int, ...] = ()  # Equal/NotEqual sets (normalised u64)
    strings: tuple[bytes, ...] = ()  # Equal/NotEqual/Prefix sets, Postfix: as written
    net: tuple[tuple[int, int, bytes], ...] = ()  # Kind.NET: LPM entries (netargs)


@dataclass(frozen=True, slots=True)
class Selector:
    bin_op: BinOp = BinOp.NONE
    binaries: tuple[bytes, ...] = ()
    args: tuple[ArgMatch, ...] = ()
    actions: Action = Action.POST
    error: int = 0  # Override's argError
    signal: int = 0  # Signal's argSig
    task: tuple[TaskFilter, ...] = ()  # matchPIDs/matchNamespaces/matchCapabilities (tasksel)
    ret_args: tuple[ArgMatch, ...] = ()  # matchReturnArgs, on values[0] (retsel)


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """A declared argument, for the events: where its value is and what to call it."""

    index: int
    label: str
    kind: Kind
    src: int
    int_type: IntType = IntType.U64
    obj: str = ""  # Kind.OBJ: the kernel-object type (programs.objargs decodes it)


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One hook entry (tracepoint) of a policy (programs/hooktable.py: where it goes)."""

    hook: int  # layout.HOOK_EXEC or a syscall number
    name: str  # "sched/sched_process_exec", "syscalls/sys_enter_openat"
    selectors: tuple[Selector, ...]
    args: tuple[ArgSpec, ...] = ()
    capture: int = layout.NO_CAPTURE  # strs[] index of a user string put in events
    message: str = ""
    tags: tuple[str, ...] = ()
    mechanism: str = ""  # how the node runs it, when not obvious from the name
    str_reader: tuple[int, int] = (layout.NO_READER, 0)  # kprobes: (arg, member offset)
    reader_kind: int = layout.READ_MEMBER  # what str_reader's argument is (layout.READ_*)
    buf_sizes: tuple[tuple[int, int], ...] = ()  # kprobes: char_buf (strs[] k, its size's values[])
    syscall: bool = False  # kprobe on the arch's syscall wrapper: the user's arguments
    returns: bool = False  # kprobe with return: true (a kretprobe sends the return value)
    kern_strs: int = 0  # kprobes: bit k, strs[k] is read from kernel memory
    override_lsm: str = ""  # the BPF LSM hook whose program returns this entry's Override
    net_readers: tuple[tuple[int, int, int], ...] = ()  # kprobes: (tuple, arg, netargs kind)
    obj_readers: tuple[tuple[int, int, tuple[tuple[int, ...], ...]], ...] = ()  # objargs
    str_add: tuple[tuple[int, int], ...] = ()  # kprobes: strs[k] at values[k] + offset

    @property
    def attach(self) -> str | None:
        """The tracepoint to attach the sys_enter program to; None for the exec hook."""
        return None if self.hook == layout.HOOK_EXEC else self.name

    @property
    def str_mask(self) -> int:
        """Bit k: strs[k] is compared by a selector (0: the binary)."""
        mask = 0
        for sel in self.selectors:
            if sel.bin_op is not BinOp.NONE:
                mask |= 1
            for arg in sel.args:
                if arg.kind is Kind.PATH:
                    mask |= 1
                elif arg.kind is Kind.USER_STR:
                    mask |= 1 << arg.src
            # the task's facts (tpf_task.h); matchBinaries' come from the BINARY stage
            mask |= TASK_BIT if any(not f.binary for f in sel.task) else 0
        return mask

    @property
    def rev_mask(self) -> int:
        mask = 0
        for sel in self.selectors:
            for arg in sel.args:
                if arg.op.postfix_set:
                    mask |= 1 << (0 if arg.kind is Kind.PATH else arg.src)
            mask |= TASK_BIT if any(f.follow for f in sel.task) else 0  # followForks' walk
        return mask

    @property
    def bin_mask(self) -> int:
        """tpf_hook.bin_mask: the binary stage's work for this entry (binsel.py)."""
        mask = 0
        for sel in self.selectors:
            mask |= bin_mask(sel.task)
        return mask

    @property
    def capture_mask(self) -> int:
        return 0 if self.capture == layout.NO_CAPTURE else 1 << self.capture


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    configs: tuple[HookConfig, ...] = ()
    unsupported: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.unsupported


@dataclass(slots=True)
class _Errors:
    reasons: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        if f"{where}: {what}" not in self.reasons:  # a list's functions repeat its entry's
            self.reasons.append(f"{where}: {what}")


def _normalise(value: int, int_type: IntType) -> int:
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
class _Source:
    """Where a tracepoint field's value is found by the program."""

    kind: Kind
    src: int
    int_type: IntType


def _exec_source(f: Field, user_type: str | None) -> _Source | str:
    if f.name == "filename":
        if user_type not in (None, "auto", *_STRING_TYPES):
            return f"field {f.name} is a string, not {user_type}"
        return _Source(Kind.PATH, layout.PATH_STR, IntType.U64)
    if f.name in ("pid", "old_pid"):
        int_type = _INT_TYPES.get(user_type or "int32")
        if int_type is None:
            return f"field {f.name} is an integer, not {user_type}"
        src = layout.EXEC_PID if f.name == "pid" else layout.EXEC_OLD_PID
        return _Source(Kind.INT, src, int_type)
    return f"field {f.name} of sched_process_exec is not available to the programs"


def _syscall_source(index: int, f: Field, user_type: str | None) -> _Source | str:
    if index == 4:  # __syscall_nr
        return _Source(Kind.INT, 0, _INT_TYPES.get(user_type or "int32", IntType.S32))
    src = index - 4  # args[0] is values[1]
    if not 1 <= src <= 6:
        return f"index {index} is not a syscall argument"
    if user_type in _STRING_TYPES:
        if not f.is_char_pointer:
            return f"field {f.name} ({f.decl}) is not a char pointer: type string needs one"
        return _Source(Kind.USER_STR, src, IntType.U64)
    if user_type in (None, "auto"):
        if f.is_char_pointer:
            return f"field {f.name} is a char pointer: give it type string to compare it"
        wide = IntType.S64 if f.signed else IntType.U64
        return _Source(Kind.INT, src, _FIELD_INT_TYPES.get((f.size, f.signed), wide))
    chosen = _INT_TYPES.get(user_type)
    if chosen is None:
        return f"argument type {user_type!r} is not supported (int and string types are)"
    return _Source(Kind.INT, src, chosen)


def selector_keys_ok(
    raw: Any, at: str, errors: _Errors, allowed: frozenset[str], refusal: str
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


def _compile_match_arg(
    entry: Any, where: str, sources: Mapping[int, _Source], errors: _Errors
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
            nums = [_normalise(parse_int(v), source.int_type) for v in values]
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


def _compile_tracepoint(tp: Any, where: str, env: NodeEnv, errors: _Errors) -> HookConfig | None:
    if not isinstance(tp, Mapping):
        errors.add(where, "not a mapping")
        return None
    subsystem, event = str(tp.get("subsystem", "")), str(tp.get("event", ""))
    name = f"{subsystem}/{event}"
    extra = set(tp) - _TP_INFO_KEYS
    if extra - {"raw"} or tp.get("raw"):
        errors.add(where, f"{', '.join(sorted(extra))} not supported")
        return None
    if env.tracepoints is not None:
        errors.add(where, env.tracepoints)
        return None
    is_exec = name == EXEC_HOOK_NAME
    is_sys_enter = subsystem == "syscalls" and event.startswith("sys_enter_")
    if not (is_exec or is_sys_enter):
        errors.add(
            where,
            f"tracepoint {name} is not supported (sched/sched_process_exec and "
            "syscalls/sys_enter_* are)",
        )
        return None
    fmt = env.tracepoint_format(subsystem, event)
    if fmt is None:
        errors.add(where, f"tracepoint {name} does not exist on this node")
        return None
    if is_exec:
        hook = layout.HOOK_EXEC
    else:
        nr = env.syscall_numbers.get(event.removeprefix("sys_enter_"))
        if nr is None or not 0 <= nr < layout.HOOK_EXEC:
            errors.add(where, f"no syscall number known for {event}")
            return None
        hook = nr

    # Declared args: where each value is.
    sources: dict[int, _Source] = {}
    specs: list[ArgSpec] = []
    capture = layout.NO_CAPTURE
    raw_args = tp.get("args") or []
    if not isinstance(raw_args, list):
        errors.add(f"{where}.args", "must be a list")
        return None
    for i, arg in enumerate(raw_args):
        at = f"{where}.args[{i}]"
        if not isinstance(arg, Mapping) or "index" not in arg:
            errors.add(at, "needs an index")
            continue
        extra = {k for k in set(arg) - _ARG_KEYS if _ARG_DEFAULTS.get(k, ...) != arg[k]}
        if extra:
            errors.add(at, f"{', '.join(sorted(extra))} not supported")
            continue
        try:
            index = int(arg["index"])
        except (TypeError, ValueError):
            errors.add(at, f"index {arg['index']!r} is not an integer")
            continue
        f = fmt.field(index)
        if f is None:
            errors.add(at, f"{name} has {len(fmt.fields)} fields, no index {index}")
            continue
        user_type = str(arg["type"]) if arg.get("type") is not None else None
        source = _exec_source(f, user_type) if is_exec else _syscall_source(index, f, user_type)
        if isinstance(source, str):
            errors.add(at, source)
            continue
        sources[index] = source
        specs.append(
            ArgSpec(
                index, str(arg.get("label") or f.name), source.kind, source.src, source.int_type
            )
        )
        if source.kind is Kind.USER_STR and capture == layout.NO_CAPTURE:
            capture = source.src

    raw_selectors = tp.get("selectors") or []
    if not isinstance(raw_selectors, list):
        errors.add(f"{where}.selectors", "must be a list")
        return None
    if len(raw_selectors) > layout.MAX_SELECTORS:
        errors.add(f"{where}.selectors", f"more than {layout.MAX_SELECTORS} selectors")
        return None
    selectors: list[Selector] = []
    for s, raw in enumerate(raw_selectors):
        at = f"{where}.selectors[{s}]"
        if not selector_keys_ok(raw, at, errors, _SELECTOR_KEYS, "not supported"):
            continue
        bins = Binaries()
        if raw.get("matchBinaries"):  # binsel.py: the binary of every hook type
            got = compile_binaries(
                raw["matchBinaries"],
                f"{at}.matchBinaries",
                errors,
                exec_hook=is_exec,
                kernel=env.kernel,
            )
            if got is None:
                continue
            bins = got
        raw_args_m = raw.get("matchArgs") or []
        if not isinstance(raw_args_m, list):
            errors.add(f"{at}.matchArgs", "must be a list")
            continue
        if len(raw_args_m) > layout.MAX_ARGS:
            errors.add(f"{at}.matchArgs", f"more than {layout.MAX_ARGS} entries")
            continue
        matches = [
            _compile_match_arg(m, f"{at}.matchArgs[{j}]", sources, errors)
            for j, m in enumerate(raw_args_m)
        ]
        actions = compile_actions(
            raw.get("matchActions"),
            f"{at}.matchActions",
            errors,
            can_override=False,
            hook_kind="tracepoint",
        )
        task = with_binaries(
            compile_task_filters(raw, at, env.kernel, env.host_ns, errors), bins, at, errors
        )
        if any(m is None for m in matches) or task is None:
            continue
        selectors.append(
            Selector(
                bins.bin_op,
                bins.paths,
                tuple(m for m in matches if m is not None),
                actions.flags,
                signal=actions.signal,
                task=task,
            )
        )
    tags = tp.get("tags") or []
    return HookConfig(
        hook=hook,
        name=name,
        selectors=tuple(selectors),
        args=tuple(specs),
        capture=capture,
        message=str(tp.get("message") or ""),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
    )


def compile_spec(spec: Mapping[str, Any], env: NodeEnv) -> PolicyPlan:
    """Compile a policy's spec (selectors excluded: the engine handles them).

    ``spec`` is the spec as the API server sent it (camelCase keys), e.g.
    ``policy.spec.model_extra`` plus the selectors.
    """
    from tpfilter.programs.lists import parse_lists, refuse_list_calls

    errors = _Errors()
    configs: list[HookConfig] = []
    lists = parse_lists(spec.get("lists"), errors)  # kprobes' call: "list:NAME"
    refuse_list_calls(spec, errors)
    for key, value in spec.items():
        if key in SPEC_HANDLED_ELSEWHERE or key == "lists" or value in (None, [], {}):
            continue
        if key == "tracepoints":
            if not isinstance(value, list):
                errors.add("spec.tracepoints", "must be a list")
                continue
            for i, tp in enumerate(value):
                cfg = _compile_tracepoint(tp, f"spec.tracepoints[{i}]", env, errors)
                if cfg is not None:
                    configs.append(cfg)
        elif key == "kprobes":
            from tpfilter.programs.kprobes import compile_kprobes

            configs += compile_kprobes(value, env, errors, lists)
        elif key == "options":
            from tpfilter.programs.kprobes import compile_options

            compile_options(value, errors)
        elif key == "lsmhooks":
            from tpfilter.programs.lsmhooks import compile_lsmhooks

            configs += compile_lsmhooks(value, env, errors)
        else:
            why = unbuilt.SPEC_FIELDS.get(key)
            errors.add(
                f"spec.{key}", "not supported by tpfilter's programs" + (f": {why}" if why else "")
            )
    if errors.reasons:
        return PolicyPlan(configs=(), unsupported=tuple(errors.reasons))
    return PolicyPlan(configs=tuple(configs))


def spec_dict(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """The non-selector part of a parsed policy's spec (``spec.model_extra``)."""
    return dict(extra or {})


def hooks_of(configs: Sequence[HookConfig]) -> tuple[str, ...]:
    return tuple(
        dict.fromkeys(f"{c.name} ({c.mechanism})" if c.mechanism else c.name for c in configs)
    )
