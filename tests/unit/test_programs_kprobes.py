"""spec.kprobes -> hook entries, without a kernel: the node's BTF is a fake."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tpfilter.models import parse_policy
from tpfilter.programs import layout
from tpfilter.programs.compiler import compile_spec, hooks_of
from tpfilter.programs.kprobes import FIRST_HOOK, KprobeHooks
from tpfilter.programs.layout import Action, IntType, Kind, Op
from tpfilter.programs.pathwalk import MEMBERS, path_cflags
from tpfilter.programs.plan import NodeEnv

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


class FakeKernel:
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        "security_bprm_creds_for_exec": ("struct linux_binprm *",),
        "security_file_open": ("struct file *",),
        "security_file_set_fowner": ("struct file *",),
        "security_path_mkdir": ("struct path *", "struct dentry *", "umode_t"),
        "do_sys_openat2": ("int", "char *", "struct open_how *"),
        "do_filp_open": ("int", "struct filename *", "const struct open_flags *"),
        "__x64_sys_openat": ("struct pt_regs *",),
        "bpf_lsm_bprm_creds_for_exec": ("struct linux_binprm *",),
        "bpf_lsm_file_open": ("struct file *",),
        "bpf_lsm_file_set_fowner": ("struct file *",),
        "bpf_lsm_path_mkdir": ("struct path *", "struct dentry *", "unsigned short"),
    }
    lsm_hooks = frozenset({"bprm_creds_for_exec", "file_open", "file_set_fowner", "path_mkdir"})

    def func_params(self, func: str) -> tuple[str, ...] | None:
        return self.funcs.get(func)

    def func_return(self, func: str) -> str | None:
        return None if func not in self.funcs else "void" if "fowner" in func else "int"

    def lsm_hook_params(self, hook: str) -> tuple[str, ...] | None:
        return self.funcs.get(f"bpf_lsm_{hook}")

    walkable = True  # the members of the path walk (tpfilter.programs.pathwalk) exist

    def member_offset(self, struct: str, member: str) -> int | None:
        if (struct, member) == ("linux_binprm", "filename"):
            return 96
        if (struct, member) == ("filename", "name"):
            return 0
        return 8 if self.walkable and (struct, member) in MEMBERS.values() else None

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


def test_override_on_any_lsm_hook_that_returns_an_error() -> None:
    override = [{"matchActions": [{"action": "Override", "argError": -1}]}]
    spec = kprobe("security_file_open", [], override)
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.override_lsm == "file_open"
    assert cfg.mechanism == "Override: BPF LSM file_open; kprobe"
    void = kprobe("security_file_set_fowner", [], override)
    (reason,) = compile_spec(void, ENV).unsupported
    assert "the LSM hook file_set_fowner returns no error (void)" in reason


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
    # argument i is values[1 + i] (values[0]: the return value)
    assert (arg.kind, arg.src, arg.int_type, arg.imm) == (Kind.INT, 1, IntType.S32, 2)
    assert cfg.str_reader == (layout.NO_READER, 0)
    assert (cfg.syscall, cfg.returns, cfg.kern_strs, cfg.override_lsm) == (False, False, 0, "")


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (kprobe("no_such_fn", [], []), "kernel function 'no_such_fn' does not exist"),
        (kprobe("security_file_open", [{"index": 0, "type": "linux_binprm"}], []),
         "parameter 0 is struct file *, not struct linux_binprm *"),
        (kprobe("security_bprm_creds_for_exec", [{"index": 0, "type": "file"}], []),
         "parameter 0 is struct linux_binprm *, not struct file *"),
        (kprobe("openat", [{"index": 0, "type": "path"}], [], syscall=True),
         "parameter 0 is a syscall argument, not struct path *"),
        (kprobe("security_file_open", [{"index": 3, "type": "int"}], []),
         "the function has 1 parameters"),
        (kprobe("do_sys_openat2", [{"index": 2, "type": "string"}], []),
         "parameter 2 is struct open_how *, not a char * (type string)"),
        (kprobe("do_sys_openat2", [{"index": 0, "type": "load_info"}], []),
         "argument type 'load_info' is not supported on kprobes"),
        (kprobe("__x64_sys_openat", [], []), "syscall wrapper: set syscall: true"),
        (kprobe("nosuchcall", [], [], syscall=True),
         "syscall 'nosuchcall': no function __x64_sys_nosuchcall on this node"),
        (kprobe("do_sys_openat2", [], [], returnArg={"index": 0, "type": "int"}),
         "returnArg: needs return: true"),
        (kprobe("do_sys_openat2", [], [], returnArg={"type": "file"}, **{"return": True}),
         "returnArg: type 'file' not supported"),
        (kprobe("do_sys_openat2", [], [{"matchBinaries": [{"operator": "In", "values": ["/x"]}]}]),
         "matchBinaries: needs the executable's path from the node's BTF: struct task_struct"),
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


@pytest.mark.parametrize("call", ["openat", "sys_openat", "__x64_sys_openat"])
def test_syscall_kprobe_resolves_the_arch_wrapper_and_reads_user_strings(call: str) -> None:
    spec = kprobe(
        call,
        [{"index": 0, "type": "int"}, {"index": 1, "type": "string"}],
        [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/etc/"]}]}],
        syscall=True,
    )
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.name == "kprobe/__x64_sys_openat"
    assert cfg.syscall and cfg.kern_strs == 0  # the user's memory
    (arg,) = cfg.selectors[0].args
    assert (arg.kind, arg.src) == (Kind.USER_STR, 2)  # argument 1 -> strs[2]
    assert cfg.str_mask == 1 << 2 and cfg.capture == 2
    arm = replace(ENV, syscall_prefix="__arm64_")
    assert "no function __arm64_sys_openat" in compile_spec(spec, arm).unsupported[0]


def test_kernel_string_argument_of_a_plain_kprobe() -> None:
    spec = kprobe(
        "do_sys_openat2",
        [{"index": 1, "type": "string"}],
        [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/etc/passwd"]}]}],
    )
    (cfg,) = compile_spec(spec, ENV).configs
    assert not cfg.syscall and cfg.kern_strs == 1 << 2  # strs[2] from kernel memory


def test_return_probe_reports_the_return_value() -> None:
    spec = kprobe(
        "do_sys_openat2",
        [{"index": 0, "type": "int"}],
        [],
        returnArg={"index": 0, "type": "int"},
        **{"return": True},
    )
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.returns and cfg.mechanism == "kprobe + kretprobe"
    assert [(a.label, a.src, a.int_type) for a in cfg.args] == [
        ("arg0", 1, IntType.S32),
        ("return", 0, IntType.S32),
    ]


def lsmhook(hook: str, args: list[Any], selectors: list[Any]) -> dict[str, Any]:
    return {"lsmhooks": [{"hook": hook, "args": args, "selectors": selectors}]}


def test_lsmhook_runs_at_its_security_function_with_override() -> None:
    spec = lsmhook(
        "bprm_creds_for_exec",
        [{"index": 0, "type": "linux_binprm"}],
        [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["/usr/bin/true"]}],
          "matchActions": [{"action": "Override", "argError": -13}]}],
    )  # fmt: skip
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.name == "kprobe/security_bprm_creds_for_exec"
    assert cfg.override_lsm == "bprm_creds_for_exec" and cfg.selectors[0].error == -13
    assert cfg.mechanism.startswith("lsmhook bprm_creds_for_exec at security_bprm_creds_for_exec")


@pytest.mark.parametrize(
    ("spec", "env", "reason"),
    [
        (lsmhook("no_such_hook", [], []), ENV, "the kernel has no LSM hook 'no_such_hook'"),
        (lsmhook("path_mkdir", [], []), ENV, "does not take the hook's parameters"),
        (lsmhook("file_open", [], []), replace(ENV, kprobes="no kprobes"),
         "LSM hooks are evaluated by a kprobe at security_<hook>: no kprobes"),
        ({"lsmhooks": [{"hook": "file_open", "sleepable": True}]}, ENV,
         "sleepable not supported on lsmhooks"),
    ],
)  # fmt: skip
def test_what_lsmhooks_refuse_is_said(spec: dict[str, Any], env: NodeEnv, reason: str) -> None:
    plan = compile_spec(spec, env)
    assert not plan.ok and any(reason in r for r in plan.unsupported), plan.unsupported


@pytest.mark.parametrize(
    ("call", "arg_type", "reader"),
    [("security_file_open", "file", layout.READ_FILE),
     ("security_path_mkdir", "path", layout.READ_PATH)],
)  # fmt: skip
def test_file_and_path_arguments_are_compared_as_their_path_name(
    call: str, arg_type: str, reader: int
) -> None:
    spec = kprobe(
        call,
        [{"index": 0, "type": arg_type}],
        [{"matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/shadow"]}]}],
    )
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert (cfg.str_reader, cfg.reader_kind) == ((0, 0), reader)
    (arg,) = cfg.selectors[0].args
    assert arg.kind is Kind.PATH and cfg.rev_mask == 1


def test_file_argument_where_the_walk_cannot_be_compiled() -> None:
    kernel = FakeKernel()
    kernel.walkable = False
    env = replace(ENV, kernel=kernel)
    spec = kprobe("security_file_open", [{"index": 0, "type": "file"}], [])
    (reason,) = compile_spec(spec, env).unsupported
    assert "type file: its path cannot be walked on this node: struct file has no member" in reason
    assert path_cflags(kernel) == []
    assert path_cflags(FakeKernel())[0] == "-DTPF_WITH_PATHS"


def test_nop_arguments_are_reported_never_compared() -> None:
    spec = kprobe("do_sys_openat2", [{"index": 0, "type": "nop"}], [])
    (cfg,) = compile_spec(spec, ENV).configs
    assert cfg.args[0].kind is Kind.NOP
    compared = kprobe(
        "do_sys_openat2",
        [{"index": 0, "type": "nop"}],
        [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["1"]}]}],
    )
    (reason,) = compile_spec(compared, ENV).unsupported
    assert "index 0 has type nop" in reason


def test_char_buf_reads_as_many_bytes_as_its_size_argument_says() -> None:
    spec = kprobe(
        "write",
        [{"index": 0, "type": "int"},
         {"index": 1, "type": "char_buf", "sizeArgIndex": 3},
         {"index": 2, "type": "size_t"}],
        [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["secret"]}]}],
        syscall=True,
    )  # fmt: skip
    plan = compile_spec(spec, replace(ENV, kernel=WithWrite()))
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.buf_sizes == ((2, 3),)  # strs[2] holds values[3] bytes (argument 2, count)
    assert cfg.str_mask == 1 << 2 and cfg.capture == 2


@pytest.mark.parametrize(
    ("arg", "reason"),
    [({"index": 1, "type": "char_buf"}, "char_buf needs sizeArgIndex"),
     ({"index": 1, "type": "char_buf", "sizeArgIndex": 2}, "char_buf needs sizeArgIndex"),
     ({"index": 1, "type": "char_buf", "sizeArgIndex": 3, "returnCopy": True},
      "char_buf with returnCopy is not supported")],
)  # fmt: skip
def test_char_buf_needs_another_argument_for_its_size(arg: dict[str, Any], reason: str) -> None:
    spec = kprobe("write", [arg], [], syscall=True)
    (got,) = compile_spec(spec, replace(ENV, kernel=WithWrite())).unsupported
    assert reason in got


class WithWrite(FakeKernel):
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        **FakeKernel.funcs,
        "__x64_sys_write": ("struct pt_regs *",),
    }


def test_a_struct_filename_is_read_as_its_name() -> None:
    spec = kprobe(
        "do_filp_open",
        [{"index": 1, "type": "filename"}],
        [{"matchArgs": [{"index": 1, "operator": "Postfix", "values": ["/shadow"]}]}],
    )
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.str_reader == (1, 0)  # argument 1, filename.name (offset from BTF)
    (arg,) = cfg.selectors[0].args
    assert (arg.kind, arg.op) == (Kind.PATH, Op.POSTFIX)
    wrong = compile_spec(kprobe("do_filp_open", [{"index": 0, "type": "filename"}], []), ENV)
    assert wrong.unsupported == (
        "spec.kprobes[0].args[0]: parameter 0 is int, not struct filename *",
    )
