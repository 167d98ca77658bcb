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

from collections.abc import Mapping, Sequence
from typing import Any

from tpfilter.programs import layout, unbuilt
from tpfilter.programs.actions import compile_actions
from tpfilter.programs.argmatch import (
    ARG_DEFAULTS,
    ARG_KEYS,
    FIELD_INT_TYPES,
    INT_TYPES,
    SELECTOR_KEYS,
    STRING_TYPES,
    Errors,
    Source,
    compile_match_arg,
    selector_keys_ok,
)
from tpfilter.programs.binsel import Binaries, compile_binaries, with_binaries
from tpfilter.programs.layout import IntType, Kind
from tpfilter.programs.plan import ArgSpec, HookConfig, NodeEnv, PolicyPlan, Selector
from tpfilter.programs.tasksel import compile_task_filters
from tpfilter.programs.tracefs import Field

EXEC_HOOK_NAME = "sched/sched_process_exec"
SPEC_HANDLED_ELSEWHERE = frozenset({"podSelector", "containerSelector"})
# Keys that only describe or label; they change no decision.
_TP_INFO_KEYS = frozenset({"subsystem", "event", "args", "selectors", "message", "tags"})


def _exec_source(f: Field, user_type: str | None) -> Source | str:
    if f.name == "filename":
        if user_type not in (None, "auto", *STRING_TYPES):
            return f"field {f.name} is a string, not {user_type}"
        return Source(Kind.PATH, layout.PATH_STR, IntType.U64)
    if f.name in ("pid", "old_pid"):
        int_type = INT_TYPES.get(user_type or "int32")
        if int_type is None:
            return f"field {f.name} is an integer, not {user_type}"
        src = layout.EXEC_PID if f.name == "pid" else layout.EXEC_OLD_PID
        return Source(Kind.INT, src, int_type)
    return f"field {f.name} of sched_process_exec is not available to the programs"


def _syscall_source(index: int, f: Field, user_type: str | None) -> Source | str:
    if index == 4:  # __syscall_nr
        return Source(Kind.INT, 0, INT_TYPES.get(user_type or "int32", IntType.S32))
    src = index - 4  # args[0] is values[1]
    if not 1 <= src <= 6:
        return f"index {index} is not a syscall argument"
    if user_type in STRING_TYPES:
        if not f.is_char_pointer:
            return f"field {f.name} ({f.decl}) is not a char pointer: type string needs one"
        return Source(Kind.USER_STR, src, IntType.U64)
    if user_type in (None, "auto"):
        if f.is_char_pointer:
            return f"field {f.name} is a char pointer: give it type string to compare it"
        wide = IntType.S64 if f.signed else IntType.U64
        return Source(Kind.INT, src, FIELD_INT_TYPES.get((f.size, f.signed), wide))
    chosen = INT_TYPES.get(user_type)
    if chosen is None:
        return f"argument type {user_type!r} is not supported (int and string types are)"
    return Source(Kind.INT, src, chosen)


def _compile_tracepoint(tp: Any, where: str, env: NodeEnv, errors: Errors) -> HookConfig | None:
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
    sources: dict[int, Source] = {}
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
        extra = {k for k in set(arg) - ARG_KEYS if ARG_DEFAULTS.get(k, ...) != arg[k]}
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
        if not selector_keys_ok(raw, at, errors, SELECTOR_KEYS, "not supported"):
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
            compile_match_arg(m, f"{at}.matchArgs[{j}]", sources, errors)
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

    errors = Errors()
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
