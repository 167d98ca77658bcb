"""``spec.kprobes`` -> hook entries of the generic kprobe program (bpf/programs/tpf_kprobe.c).

Pure, like the rest of the compiler: the node comes in through :class:`NodeEnv` (its BTF
as ``env.kernel``, a hook ID per kernel function as ``env.kprobe_hook``, the arch's
syscall wrapper prefix as ``env.syscall_prefix``).

What runs (docs/policies.md): one kprobe program, attached to each function a policy
names, reads argument i into ``values[1 + i]``: from the registers, or for ``syscall:
true`` (the function is the arch's wrapper, ``__x64_sys_<name>``) from the user's
registers it was called with. Integers as declared; ``string`` is a ``char *``, read from
kernel memory, or user memory for a syscall; a ``linux_binprm`` argument is read as its
``filename`` (the member's offset comes from the node's BTF and is written into a map, so
nothing is compiled per policy). ``return: true`` adds a return probe: posted events carry
the return value (``returnArg``). Candidates, ``policy_filter_check`` and selectors are the
tracepoints' (the same stages). ``Override`` on ``security_<hook>``: the selector records
``argError`` for the task and the BPF LSM program of ``<hook>`` (bpf/programs/
tpf_lsm_override.c, compiled for that hook), which the kernel calls inside
``security_<hook>``, returns it. Debian's kernels have no ``bpf_override_return`` (no
CONFIG_FUNCTION_ERROR_INJECTION), so where no LSM hook exists for the function the policy
is refused as a whole, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tpfilter.programs import fileargs, layout, netargs, objargs, unbuilt
from tpfilter.programs.actions import compile_actions
from tpfilter.programs.argmatch import (
    ARG_DEFAULTS,
    ARG_KEYS,
    INT_TYPES,
    TASK_KEYS,
    Errors,
    Source,
    selector_keys_ok,
)
from tpfilter.programs.binsel import compile_binaries, with_binaries
from tpfilter.programs.events import RETURN_ARG
from tpfilter.programs.layout import Action, IntType, Kind
from tpfilter.programs.lists import FunctionList, expand_kprobe
from tpfilter.programs.plan import ArgMatch, ArgSpec, HookConfig, NodeEnv, Selector
from tpfilter.programs.retsel import compile_return_arg_action, compile_return_selector
from tpfilter.programs.tasksel import compile_task_filters
from tpfilter.programs.values import parse_int

# The arch's syscall wrappers (CONFIG_ARCH_HAS_SYSCALL_WRAPPER), by os.uname().machine.
SYSCALL_PREFIXES = {"x86_64": "__x64_", "aarch64": "__arm64_", "s390x": "__s390x_"}
FIRST_HOOK = 600  # kprobe hook IDs: above any syscall number, below HOOK_EXEC
_KPROBE_KEYS = frozenset(
    {"call", "syscall", "return", "returnArg", "returnArgAction", "args", "selectors"}
    | {"message", "tags"}
)
_STRING_PARAMS = frozenset({"char *", "unsigned char *", "signed char *"})
_BUFFER_PARAMS = {"string": _STRING_PARAMS, "char_buf": _STRING_PARAMS | {"void *"}}
SELECTOR_KEYS = (
    frozenset({"matchBinaries", "matchArgs", "matchActions", "matchReturnArgs"}) | TASK_KEYS
)
# type -> (struct, member): a struct whose char * member is the string compared and reported
_STRUCT_STRINGS = {
    "linux_binprm": ("linux_binprm", "filename"),
    "filename": ("filename", "name"),  # getname()'s kernel copy of a user path
}
_IGNORED_OPTIONS = frozenset({"disable-kprobe-multi"})  # one kprobe per function anyway


class KprobeHooks:
    """Hook IDs for kernel functions, stable for the agent's life (the ``kprobe_hook`` of
    NodeEnv); None when all are taken."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def __call__(self, func: str) -> int | None:
        if func not in self._ids:
            hook = FIRST_HOOK + len(self._ids)
            if hook >= layout.HOOK_EXEC:
                return None
            self._ids[func] = hook
        return self._ids[func]


def compile_options(options: Any, errors: Errors) -> None:
    if not isinstance(options, list):
        errors.add("spec.options", "must be a list")
        return
    for i, opt in enumerate(options):
        name = opt.get("name") if isinstance(opt, Mapping) else None
        if name not in _IGNORED_OPTIONS:
            errors.add(f"spec.options[{i}]", f"option {name!r} is not supported")


def compile_kprobes(
    value: Any, env: NodeEnv, errors: Errors, lists: Mapping[str, FunctionList] | None = None
) -> list[HookConfig]:
    if not isinstance(value, list):
        errors.add("spec.kprobes", "must be a list")
        return []
    if env.kprobes is not None:
        errors.add("spec.kprobes", env.kprobes)
        return []
    out = []
    for i, entry in enumerate(value):
        for kp in expand_kprobe(entry, f"spec.kprobes[{i}]", lists or {}, env, errors):
            cfg = compile_kprobe(kp, f"spec.kprobes[{i}]", env, errors)
            if cfg is not None:
                out.append(cfg)
    return out


def override_mechanism(call: str, env: NodeEnv) -> tuple[str | None, str]:
    """(why Override cannot run on ``call`` or None, the mechanism that runs it)."""
    hook = call.removeprefix("security_")
    if hook == call:
        return (
            f"Override on {call}: this node has no mechanism (tpfilter overrides "
            "security_* functions through their BPF LSM hook; bpf_override_return, which "
            "Debian kernels lack, is not used)",
            "",
        )
    if env.lsm is not None:
        return f"Override on {call} needs a BPF LSM program: {env.lsm}", ""
    if env.kernel is None or not env.kernel.has_lsm_hook(hook):
        return f"Override on {call}: the kernel has no BPF LSM hook {hook}", ""
    if env.kernel.func_return(f"bpf_lsm_{hook}") != "int":
        return f"Override on {call}: the LSM hook {hook} returns no error (void)", ""
    return None, f"Override: BPF LSM {hook}"


def resolve_call(call: str, syscall: bool, env: NodeEnv) -> tuple[str, str | None]:
    """(the kernel function to probe, why it cannot be or None). For a syscall, the arch's
    wrapper: ``openat``, ``sys_openat``, ``__x64_sys_openat`` and ``__arm64_sys_openat`` all
    name ``__x64_sys_openat`` on x86-64 (``__arm64_sys_openat`` on arm64)."""
    prefix = env.syscall_prefix
    if not syscall:
        if call.startswith(f"{prefix}sys_"):
            return call, f"{call} is a syscall wrapper: set syscall: true to read its arguments"
        return call, None
    name = call
    for other in SYSCALL_PREFIXES.values():  # a policy written on another arch still runs
        name = name.removeprefix(other)
    name = name if name.startswith("sys_") else f"sys_{name}"
    func = f"{prefix}{name}"
    if env.kernel is not None and env.kernel.func_params(func) is None:
        return func, f"syscall {call!r}: no function {func} on this node (not in BTF)"
    return func, None


def _arg_source(
    arg: Mapping[str, Any], params: tuple[str, ...] | None, env: NodeEnv
) -> tuple[Source, tuple[int, int, int] | None] | str:
    """Where argument ``index`` is (values[1 + index]) and, for a struct read as a string,
    the reader (index, member offset, layout.READ_*). ``params`` is None for a syscall (the
    wrapper's one parameter is pt_regs: the syscall's own six are read from it)."""
    index = int(arg["index"])
    nparams = 6 if params is None else min(len(params), 6)
    if not 0 <= index < nparams:
        return f"index {index}: the function has {nparams} parameters (at most 6 read)"
    user_type = str(arg["type"]) if arg.get("type") is not None else None
    if user_type in _STRUCT_STRINGS:
        struct_name, member = _STRUCT_STRINGS[user_type]
        if params is None or params[index] != f"struct {struct_name} *":
            got = "a syscall argument" if params is None else params[index]
            return f"parameter {index} is {got}, not struct {struct_name} *"
        offset = env.kernel.member_offset(struct_name, member)
        if offset is None:
            return f"struct {struct_name} has no member {member} in this kernel's BTF"
        return Source(Kind.PATH, layout.PATH_STR, IntType.U64), (index, offset, layout.READ_MEMBER)
    if user_type is not None and user_type in fileargs.PATH_TYPES:
        reader = fileargs.path_reader(user_type, params, index, env.kernel)
        if isinstance(reader, str):
            return reader
        filp = env.kernel.member_offset("kiocb", "ki_filp") if user_type == "kiocb" else 0
        if filp is None:
            return "type kiocb: struct kiocb has no member ki_filp in this kernel's BTF"
        return Source(Kind.PATH, layout.PATH_STR, IntType.U64), (index, filp, reader)
    if user_type == "nop":
        return Source(Kind.NOP, index + 1, IntType.U64), None
    if user_type is not None and user_type in objargs.OBJ_TYPES:
        obj = objargs.obj_source(user_type, params, index, env.kernel)
        return obj if isinstance(obj, str) else (obj, None)
    if user_type is not None and user_type in netargs.NET_TYPES:
        net = netargs.net_source(user_type, params, index, env.kernel)
        return net if isinstance(net, str) else (net, None)
    if user_type in ("string", "char_buf"):
        if params is not None and params[index] not in _BUFFER_PARAMS[user_type]:
            return f"parameter {index} is {params[index]}, not a char * (type {user_type})"
        if user_type == "char_buf":
            size = arg.get("sizeArgIndex")
            if arg.get("returnCopy"):
                return "char_buf with returnCopy is not supported (read at the entry only)"
            if not isinstance(size, int) or not 1 <= size <= nparams or size == index + 1:
                return (
                    f"char_buf needs sizeArgIndex, the 1-based index of another of the "
                    f"{nparams} arguments holding its size (got {size!r})"
                )
        return Source(Kind.USER_STR, index + 1, IntType.U64), None
    int_type = INT_TYPES.get(user_type or "")
    if user_type is not None and user_type in unbuilt.ARG_TYPES:
        return f"argument type {user_type!r} is not supported: {unbuilt.ARG_TYPES[user_type]}"
    if int_type is None:
        return (
            f"argument type {user_type!r} is not supported on kprobes "
            "(integers, string, char_buf, file, path, fd, dentry, kiocb, linux_binprm, "
            f"filename, sock, socket, sockaddr, skb, {', '.join(objargs.OBJ_TYPES)}, nop)"
        )
    return Source(Kind.INT, index + 1, int_type), None


def _return_arg(kp: Mapping[str, Any], where: str, errors: Errors) -> ArgSpec | None:
    ret = kp.get("returnArg")
    if ret in (None, {}):
        return None
    if not kp.get("return"):
        errors.add(f"{where}.returnArg", "needs return: true")
        return None
    user_type = str(ret.get("type")) if isinstance(ret, Mapping) else None
    int_type = INT_TYPES.get(user_type or "")
    if int_type is None:
        errors.add(f"{where}.returnArg", f"type {user_type!r} not supported (integers)")
        return None
    return ArgSpec(RETURN_ARG, "return", Kind.INT, 0, int_type)


def compile_kprobe(kp: Any, where: str, env: NodeEnv, errors: Errors) -> HookConfig | None:
    if not isinstance(kp, Mapping):
        errors.add(where, "not a mapping")
        return None
    extra = sorted(k for k, v in kp.items() if k not in _KPROBE_KEYS and v not in (None, [], {}))
    for key in extra:
        why = unbuilt.KPROBE_FIELDS.get(key)
        errors.add(f"{where}.{key}", "not supported on kprobes" + (f": {why}" if why else ""))
    if extra:
        return None
    if env.kernel is None:
        errors.add(where, "the node's BTF (/sys/kernel/btf/vmlinux) could not be read")
        return None
    syscall = bool(kp.get("syscall"))
    call, why = resolve_call(str(kp.get("call", "")), syscall, env)
    if why is not None:
        errors.add(where, why)
        return None
    params = env.kernel.func_params(call)
    if params is None:
        errors.add(where, f"kernel function {call!r} does not exist on this node (not in BTF)")
        return None
    hook = env.kprobe_hook(call) if env.kprobe_hook is not None else None
    if hook is None:
        errors.add(where, "no kprobe hook ID left on this node")
        return None

    sources: dict[int, Source] = {}
    specs: list[ArgSpec] = []
    reader: tuple[int, int, int] | None = None
    capture = layout.NO_CAPTURE
    buffers: list[tuple[int, int]] = []
    for i, arg in enumerate(kp.get("args") or []):
        at = f"{where}.args[{i}]"
        if not isinstance(arg, Mapping) or "index" not in arg:
            errors.add(at, "needs an index")
            continue
        bad = {
            k
            for k in set(arg) - ARG_KEYS - {"sizeArgIndex", "returnCopy"}
            if ARG_DEFAULTS.get(k, ...) != arg[k]
        }
        got = (
            f"{', '.join(sorted(bad))} not supported"
            if bad
            else _arg_source(arg, None if syscall else params, env)
        )
        if isinstance(got, str):
            errors.add(at, got)
            continue
        source, string = got
        if string is not None:
            if reader is not None:
                errors.add(
                    at,
                    "one linux_binprm, filename, file, path, fd, dentry or kiocb argument "
                    "per kprobe is supported",
                )
                continue
            reader = string
        if source.kind is Kind.USER_STR and capture == layout.NO_CAPTURE:
            capture = source.src
        if arg.get("type") == "char_buf":
            buffers.append((source.src, int(arg["sizeArgIndex"])))  # values[1 + i] = arg i
        sources[int(arg["index"])] = source
        label = str(arg.get("label") or f"arg{arg['index']}")
        obj = objargs.type_of(params, int(arg["index"])) if source.kind is Kind.OBJ else ""
        specs.append(
            ArgSpec(int(arg["index"]), label, source.kind, source.src, source.int_type, obj)
        )
    ret = _return_arg(kp, where, errors)
    if ret is not None:
        specs.append(ret)
    compile_return_arg_action(kp, where, errors)

    selectors: list[Selector] = []
    mechanisms = {"kprobe" + (" + kretprobe" if kp.get("return") else "")}
    override_lsm = ""
    for s, raw in enumerate(kp.get("selectors") or []):
        at = f"{where}.selectors[{s}]"
        if not selector_keys_ok(raw, at, errors, SELECTOR_KEYS, "not supported on kprobes"):
            continue
        matches: list[ArgMatch | None] = [
            objargs.compile_match(
                m,
                f"{at}.matchArgs[{j}]",
                sources,
                None if syscall else params,
                errors,
                netargs.compile_match,
            )
            for j, m in enumerate(raw.get("matchArgs") or [])
        ]
        raw_actions = raw.get("matchActions")
        compiled = compile_actions(
            raw_actions, f"{at}.matchActions", errors, can_override=True, hook_kind="kprobe"
        )
        actions = compiled.flags
        error = 0
        for act in raw_actions if isinstance(raw_actions, list) else []:
            if not isinstance(act, Mapping) or str(act.get("action", "")).lower() != "override":
                continue
            why, mechanism = override_mechanism(call, env)
            try:
                error = parse_int(act.get("argError", 0))
            except ValueError:
                why = why or f"argError {act.get('argError')!r} is not an integer"
            if why is None and not -4095 <= error <= -1:
                why = f"argError {error} is not a negative errno (-4095 .. -1)"
            if why is not None:
                errors.add(f"{at}.matchActions", why)
            actions |= Action.OVERRIDE
            mechanisms.add(mechanism)
            override_lsm = call.removeprefix("security_")
        on_return = compile_return_selector(raw, at, kp, ret, actions, errors)
        task = compile_task_filters(raw, at, env.kernel, env.host_ns, errors)
        if raw.get("matchBinaries"):  # the task's executable (binsel.py)
            bins = compile_binaries(
                raw["matchBinaries"],
                f"{at}.matchBinaries",
                errors,
                exec_hook=False,
                kernel=env.kernel,
            )
            task = None if bins is None else with_binaries(task, bins, at, errors)
        if task is None or on_return is None:
            continue
        ret_args, actions = on_return
        if len(matches) > layout.MAX_ARGS or any(m is None for m in matches):
            if len(matches) > layout.MAX_ARGS:
                errors.add(f"{at}.matchArgs", f"more than {layout.MAX_ARGS} entries")
            continue
        selectors.append(
            Selector(
                args=tuple(m for m in matches if m is not None),
                actions=actions,
                error=error,
                signal=compiled.signal,
                task=task,
                ret_args=ret_args,
            )
        )
    if len(selectors) > layout.MAX_SELECTORS:
        errors.add(f"{where}.selectors", f"more than {layout.MAX_SELECTORS} selectors")
    tags = kp.get("tags") or []
    strings = {a.src for a in sources.values() if a.kind is Kind.USER_STR}
    str_add = objargs.string_adds(sources, None if syscall else params, env.kernel)
    strings |= {k for k, _ in str_add}  # a net_device's name: a kernel string
    return HookConfig(
        hook=hook,
        name=f"kprobe/{call}",
        selectors=tuple(selectors),
        args=tuple(specs),
        capture=capture,
        message=str(kp.get("message") or ""),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
        mechanism="; ".join(sorted(m for m in mechanisms if m)),
        str_reader=reader[:2] if reader else (layout.NO_READER, 0),
        reader_kind=reader[2] if reader else layout.READ_MEMBER,
        buf_sizes=tuple(buffers),
        syscall=syscall,
        returns=bool(kp.get("return")),
        kern_strs=0 if syscall else sum(1 << k for k in strings),
        override_lsm=override_lsm,
        net_readers=netargs.readers(sources, None if syscall else params),
        obj_readers=objargs.readers(sources, None if syscall else params, env.kernel),
        str_add=str_add,
    )
