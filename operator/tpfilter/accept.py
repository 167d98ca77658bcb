"""Whether tpfilter can run a policy at all, decided without a kernel (the Accepted condition).

The CRD's schema and CEL rules check a policy's shape; they cannot say whether tpfilter's
programs implement what it asks for (a kprobe, an Override action, a Mask on a string...).
The program compiler (``tpfilter.programs.compiler``) can, but it compiles against a
node: tracepoint formats and syscall numbers come from the node's kernel. The controller
has no such node, so it compiles against a made-up node that offers everything: every hook
kind, every syscall, the supported tracepoints with the fields a kernel has, and syscall
arguments whose C type is what the policy declares (``const char *`` where it says string,
``unsigned long`` elsewhere), and likewise every kernel function and LSM hook a kprobe
or lsmhook names, with the parameters its arguments declare (``_AnyKernel``). Whatever
that node refuses, every node refuses: the policy is not Accepted. What depends on a real
kernel (a tracepoint, syscall or function it lacks, an argument that is not the type the
policy says, kprobes or BPF LSM missing) is left to the nodes, which report it as
Unsupported where the policy applies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tpfilter.programs.argmatch import STRING_TYPES
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.netargs import NET_TYPES
from tpfilter.programs.objargs import OBJ_TYPES
from tpfilter.programs.plan import NodeEnv
from tpfilter.programs.tasksel import NAMESPACES
from tpfilter.programs.tracefs import Field, TracepointFormat

# The selectors are the filter's (tpfilter.models), not the programs'.
SELECTORS = frozenset({"podSelector", "containerSelector", "hostSelector", "nodeSelector"})
_COMMON = (
    Field("unsigned short common_type", "common_type", 0, 2, False),
    Field("unsigned char common_flags", "common_flags", 2, 1, False),
    Field("unsigned char common_preempt_count", "common_preempt_count", 3, 1, False),
    Field("int common_pid", "common_pid", 4, 4, True),
)
_EXEC = (
    Field("__data_loc char[] filename", "filename", 8, 4, False),
    Field("pid_t pid", "pid", 12, 4, True),
    Field("pid_t old_pid", "old_pid", 16, 4, True),
)


class _EverySyscall(Mapping[str, int]):
    """Every syscall name has a number (1): which ones exist is the node's business."""

    def __getitem__(self, name: str) -> int:
        return 1

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _string_args(spec: Mapping[str, Any]) -> dict[tuple[str, str], set[int]]:
    """(subsystem, event) -> indexes the policy declares as strings."""
    found: dict[tuple[str, str], set[int]] = {}
    tracepoints = spec.get("tracepoints")
    for tp in tracepoints if isinstance(tracepoints, list) else ():
        if not isinstance(tp, Mapping) or not isinstance(tp.get("args"), list):
            continue
        key = (str(tp.get("subsystem", "")), str(tp.get("event", "")))
        for arg in tp["args"]:
            if isinstance(arg, Mapping) and arg.get("type") in STRING_TYPES:
                with contextlib.suppress(TypeError, ValueError):
                    found.setdefault(key, set()).add(int(arg["index"]))
    return found


def _env(spec: Mapping[str, Any]) -> NodeEnv:
    strings = _string_args(spec)

    def tracepoint_format(subsystem: str, event: str) -> TracepointFormat | None:
        if (subsystem, event) == ("sched", "sched_process_exec"):
            return TracepointFormat(subsystem, event, 1, _COMMON + _EXEC)
        if subsystem == "syscalls" and event.startswith("sys_enter_"):
            nr = Field("int __syscall_nr", "__syscall_nr", 8, 4, True)
            wanted = strings.get((subsystem, event), set())
            args = tuple(
                Field(
                    f"{'const char *' if 5 + i in wanted else 'unsigned long'} arg{i}",
                    f"arg{i}",
                    16 + 8 * i,
                    8,
                    False,
                )
                for i in range(6)
            )
            return TracepointFormat(subsystem, event, 1, (*_COMMON, nr, *args))
        return None

    return NodeEnv(
        tracepoint_format=tracepoint_format,
        syscall_numbers=_EverySyscall(),
        kprobes=None,
        lsm=None,
        tracepoints=None,
        kernel=_AnyKernel(spec),
        kprobe_hook=lambda _function: 0,
        host_ns=dict.fromkeys(NAMESPACES, 1),  # host_ns: every node knows its own
    )


_PARAM_OF_TYPE = {
    "string": "char *",
    "char_buf": "char *",
    "linux_binprm": "struct linux_binprm *",
    "filename": "struct filename *",
    "file": "struct file *",
    "path": "struct path *",
    "dentry": "struct dentry *",  # fd: an integer parameter, the default
    **{name: ctype for name, (ctype, _) in NET_TYPES.items()},  # sock, socket, sockaddr, skb
    **{name: t.ctype for name, t in OBJ_TYPES.items()},  # cred, module, net_device, ...
    "kiocb": "struct kiocb *",
}


class _AnyKernel:
    """The made-up node's BTF (the part tpfilter.programs.kprobes asks): every function
    exists, returns int and takes six parameters, of the C types the policy's kprobe and
    lsmhook arguments declare (``unsigned long`` for the others)."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._params: dict[str, tuple[str, ...]] = {}
        hooks = [(str(kp.get("call", "")), kp) for kp in _entries(spec, "kprobes")]
        hooks += [(f"security_{h.get('hook', '')}", h) for h in _entries(spec, "lsmhooks")]
        for function, entry in hooks:
            params = ["unsigned long"] * 6
            for arg in entry.get("args") or []:
                index = arg.get("index") if isinstance(arg, Mapping) else None
                if isinstance(index, int) and 0 <= index < 6:
                    params[index] = _PARAM_OF_TYPE.get(str(arg.get("type")), "unsigned long")
            self._params[function] = tuple(params)

    def func_params(self, func: str) -> tuple[str, ...]:
        if func.startswith("bpf_lsm_"):
            func = "security_" + func.removeprefix("bpf_lsm_")
        return self._params.get(func, ("unsigned long",) * 6)

    def lsm_hook_params(self, hook: str) -> tuple[str, ...]:
        return self.func_params(f"security_{hook}")

    def func_return(self, func: str) -> str:
        return "int"

    def has_lsm_hook(self, hook: str) -> bool:
        return True

    def member_offset(self, struct_name: str, member: str) -> int:
        return 0

    def struct_size(self, struct_name: str) -> int:
        return 8


def _entries(spec: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    value = spec.get(key)
    return [e for e in value if isinstance(e, Mapping)] if isinstance(value, list) else []


@dataclass(frozen=True, slots=True)
class Verdict:
    accepted: bool
    reason: str  # Accepted, Unsupported
    message: str


def accept(spec: Mapping[str, Any]) -> Verdict:
    """The Accepted condition of a policy with this ``spec`` (as the API server sends it)."""
    hooks = {k: v for k, v in spec.items() if k not in SELECTORS}
    reasons = compile_spec(hooks, _env(hooks)).unsupported
    if reasons:
        return Verdict(False, "Unsupported", "; ".join(reasons))
    return Verdict(True, "Accepted", "tpfilter's programs implement every part of the spec")
