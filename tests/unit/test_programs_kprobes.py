"""spec.kprobes -> hook entries, without a kernel: the node's BTF is a fake."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tpfilter.models import parse_policy
from tpfilter.programs import layout
from tpfilter.programs.compiler import NodeEnv, compile_spec, hooks_of
from tpfilter.programs.kprobes import FIRST_HOOK, KprobeHooks
from tpfilter.programs.layout import Action, IntType, Kind, Op

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class FakeKernel:
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        "security_bprm_creds_for_exec": ("struct linux_binprm *",),
        "security_file_open": ("struct file *",),
        "do_sys_openat2": ("int", "const char *", "struct open_how *"),
    }
    lsm_hooks = frozenset({"bprm_creds_for_exec", "file_open"})

    def func_params(self, func: str) -> tuple[str, ...] | None:
        return self.funcs.get(func)

    def member_offset(self, struct: str, member: str) -> int | None:
        return 96 if (struct, member) == ("linux_binprm", "filename") else None

    def has_lsm_hook(self, hook: str) -> bool:
        return hook in self.lsm_hooks


ENV = NodeEnv(
    tracepoint_format=lambda s, e: None,
    syscall_numbers={},
    kprobes=None,
    lsm=None,
    kernel=FakeKernel(),
    kprobe_hook=KprobeHooks(),
)


def seed_spec() -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text())
    return dict(parse_policy(body).spec.model_extra or {})


def test_seed_policy_compiles_to_a_kprobe_with_lsm_override() -> None:
    plan = compile_spec(seed_spec(), ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.name == "kprobe/security_bprm_creds_for_exec"
    assert FIRST_HOOK <= cfg.hook < layout.HOOK_EXEC
    assert cfg.attach == cfg.name
    assert cfg.str_reader == (0, 96)  # argument 0, linux_binprm.filename from BTF
    (sel,) = cfg.selectors
    (arg,) = sel.args
    assert (arg.kind, arg.op) == (Kind.PATH, Op.NE)
    assert arg.strings == (b"/usr/bin/cat", b"/usr/bin/my-server-1", b"/usr/bin/sleep")
    assert sel.actions == Action.POST | Action.OVERRIDE
    assert sel.error == -1
    assert cfg.str_mask == 1
    assert hooks_of(plan.configs) == (
        "kprobe/security_bprm_creds_for_exec (Override: BPF LSM bprm_creds_for_exec; kprobe)",
    )


def test_seed_policy_is_refused_whole_without_bpf_lsm() -> None:
    env = replace(ENV, lsm="BPF LSM programs do not load on this node (EPERM)")
    plan = compile_spec(seed_spec(), env)
    assert not plan.ok and not plan.configs
    assert plan.unsupported == (
        "spec.kprobes[0].selectors[0].matchActions: Override on security_bprm_creds_for_exec "
        "needs a BPF LSM program: BPF LSM programs do not load on this node (EPERM)",
    )


def kprobe(call: str, args: list[Any], selectors: list[Any], **extra: Any) -> dict[str, Any]:
    return {"kprobes": [{"call": call, "args": args, "selectors": selectors, **extra}]}


def test_override_on_a_function_without_an_lsm_hook_is_refused() -> None:
    spec = kprobe(
        "do_sys_openat2",
        [{"index": 0, "type": "int"}],
        [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["3"]}],
          "matchActions": [{"action": "Override", "argError": -2}]}],
    )  # fmt: skip
    plan = compile_spec(spec, ENV)
    assert not plan.ok
    assert "no mechanism" in plan.unsupported[0] and "bpf_override_return" in plan.unsupported[0]


def test_override_on_an_lsm_hook_without_an_override_program_is_refused() -> None:
    spec = kprobe("security_file_open", [], [{"matchActions": [{"action": "Override"}]}])
    (reason,) = compile_spec(spec, ENV).unsupported
    assert "LSM Override program for bprm_creds_for_exec only" in reason


@pytest.mark.parametrize("err", [0, 1, -5000])
def test_arg_error_must_be_a_negative_errno(err: int) -> None:
    spec = seed_spec()
    spec["kprobes"][0]["selectors"][0]["matchActions"][0]["argError"] = err
    (reason,) = compile_spec(spec, ENV).unsupported
    assert "not a negative errno" in reason


def test_post_only_kprobe_with_int_and_string_filters() -> None:
    spec = kprobe(
        "security_bprm_creds_for_exec",
        [{"index": 0, "type": "linux_binprm"}],
        [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/tmp/"]}]},
         {"matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/sh"]}]}],
    )  # fmt: skip
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert [s.args[0].op for s in cfg.selectors] == [Op.PREFIX, Op.POSTFIX]
    assert cfg.rev_mask == 1
    assert all(s.actions == Action.POST for s in cfg.selectors)
    assert cfg.mechanism == "kprobe"

    ints = kprobe("do_sys_openat2", [{"index": 0, "type": "int"}],
                  [{"matchArgs": [{"index": 0, "operator": "GT", "values": ["2"]}]}])  # fmt: skip
    (cfg,) = compile_spec(ints, ENV).configs
    (arg,) = cfg.selectors[0].args
    assert (arg.kind, arg.src, arg.int_type, arg.imm) == (Kind.INT, 0, IntType.S32, 2)
    assert cfg.str_reader == (layout.NO_READER, 0)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (kprobe("no_such_fn", [], []), "kernel function 'no_such_fn' does not exist"),
        (kprobe("security_file_open", [{"index": 0, "type": "linux_binprm"}], []),
         "parameter 0 is struct file *, not struct linux_binprm *"),
        (kprobe("security_file_open", [{"index": 3, "type": "int"}], []),
         "the function has 1 parameters"),
        (kprobe("do_sys_openat2", [{"index": 1, "type": "string"}], []),
         "argument type 'string' is not supported on kprobes"),
        (kprobe("do_sys_openat2", [], [], syscall=True), "syscall: true not supported"),
        (kprobe("do_sys_openat2", [], [], **{"return": True}), "return: true not supported"),
        (kprobe("do_sys_openat2", [], [{"matchBinaries": [{"operator": "In", "values": ["/x"]}]}]),
         "matchBinaries not supported on kprobes"),
        ({"options": [{"name": "something-else", "value": "1"}]}, "option 'something-else'"),
    ],
)  # fmt: skip
def test_what_kprobes_do_not_support_is_said(spec: dict[str, Any], reason: str) -> None:
    plan = compile_spec(spec, ENV)
    assert not plan.ok and not plan.configs
    assert any(reason in r for r in plan.unsupported), plan.unsupported


def test_hook_ids_are_stable_per_function() -> None:
    hooks = KprobeHooks()
    a, b = hooks("f"), hooks("g")
    assert a == FIRST_HOOK and b == FIRST_HOOK + 1 and hooks("f") == a


def test_the_probe_table_names_the_override_mechanism() -> None:
    from tpfilter.programs.probe import NodeFeatures

    stock = NodeFeatures(
        tracepoints=None, kprobes=None, kprobe_override="no", lsm=None, tracefs=None
    )
    assert dict(stock.table())["Override"].startswith("BPF LSM program")
    no_lsm = replace(stock, lsm="EPERM")
    assert dict(no_lsm.table())["Override"] == (
        "none (bpf_override_return is not used; BPF LSM: EPERM)"
    )
    no_kprobes = replace(stock, kprobes="no kprobes")
    assert dict(no_kprobes.table())["Override"] == "none: no kprobes"
