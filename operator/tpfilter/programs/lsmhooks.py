"""``spec.lsmhooks`` -> hook entries of the kprobe program, at the LSM hook's own call site.

Pure, like the rest of the compiler. Where it runs, and why there: the kernel calls the BPF
LSM program of hook ``<h>`` from ``security_<h>()``, with ``security_<h>``'s arguments.
tpfilter evaluates an ``lsmhooks`` entry in its generic kprobe program at the entry of
``security_<h>`` (the candidate index, ``policy_filter_check`` and the selector stages are
the ones every hook uses) and, for ``Override``, the BPF LSM program of ``<h>``
(bpf/programs/tpf_lsm_override.c) returns the selector's ``argError`` to the kernel,
which denies the operation. So one generic program still serves every hook, where a
program per LSM hook would be compiled and verified per hook (bcc loads every LSM program
of a module at once), and the decision is made by the same code as a kprobe's.

Requires kprobes (for the evaluation) and, for Override, BPF LSM programs; the hook must
exist in the node's BTF (``bpf_lsm_<h>``) with ``security_<h>`` taking the same
parameters, so an argument ``index`` means what it means to a BPF LSM program.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from tpfilter.programs.argmatch import Errors
from tpfilter.programs.kprobes import compile_kprobe
from tpfilter.programs.plan import HookConfig, NodeEnv

_LSM_KEYS = frozenset({"hook", "args", "selectors", "message", "tags"})


def compile_lsmhooks(value: Any, env: NodeEnv, errors: Errors) -> list[HookConfig]:
    if not isinstance(value, list):
        errors.add("spec.lsmhooks", "must be a list")
        return []
    if env.kprobes is not None:
        errors.add(
            "spec.lsmhooks",
            f"LSM hooks are evaluated by a kprobe at security_<hook>: {env.kprobes}",
        )
        return []
    out = []
    for i, entry in enumerate(value):
        cfg = _compile_lsmhook(entry, f"spec.lsmhooks[{i}]", env, errors)
        if cfg is not None:
            out.append(cfg)
    return out


def _compile_lsmhook(entry: Any, where: str, env: NodeEnv, errors: Errors) -> HookConfig | None:
    if not isinstance(entry, Mapping):
        errors.add(where, "not a mapping")
        return None
    extra = {k for k, v in entry.items() if k not in _LSM_KEYS and v not in (None, [], {})}
    if extra:
        errors.add(where, f"{', '.join(sorted(extra))} not supported on lsmhooks")
        return None
    hook = str(entry.get("hook", ""))
    if env.kernel is None:
        errors.add(where, "the node's BTF (/sys/kernel/btf/vmlinux) could not be read")
        return None
    lsm_params = env.kernel.lsm_hook_params(hook)
    if lsm_params is None:
        errors.add(where, f"the kernel has no LSM hook {hook!r} (no bpf_lsm_{hook} in BTF)")
        return None
    call = f"security_{hook}"
    params = env.kernel.func_params(call)
    if params is None:
        errors.add(where, f"LSM hook {hook}: no function {call} on this node to evaluate it at")
        return None
    if params != lsm_params:
        errors.add(
            where,
            f"LSM hook {hook}: {call}{params} does not take the hook's parameters {lsm_params}",
        )
        return None
    kp = {k: v for k, v in entry.items() if k != "hook"} | {"call": call}
    cfg = compile_kprobe(kp, where, env, errors)
    if cfg is None:
        return None
    return _relabel(cfg, hook)


def _relabel(cfg: HookConfig, hook: str) -> HookConfig:
    return replace(cfg, mechanism=f"lsmhook {hook} at security_{hook}; {cfg.mechanism}")
