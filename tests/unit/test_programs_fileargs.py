"""fd and dentry arguments of kprobes, and FollowFD/UnfollowFD/CopyFD, without a kernel:
the node's BTF is a fake (pure compiler). What runs is tests/vm/test_fd_args.py's."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import pytest

from tpfilter.programs import layout
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.fileargs import FD_MEMBERS, fd_cflags
from tpfilter.programs.kprobes import KprobeHooks
from tpfilter.programs.layout import Kind, Op
from tpfilter.programs.pathwalk import MEMBERS
from tpfilter.programs.plan import NodeEnv


class FakeKernel:
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        "__x64_sys_write": ("struct pt_regs *",),
        "__x64_sys_read": ("struct pt_regs *",),
        "ksys_write": ("unsigned int", "const char *", "size_t"),
        "close_fd": ("unsigned int",),
        "security_inode_unlink": ("struct inode *", "struct dentry *"),
        "vfs_mkdir": ("struct mnt_idmap *", "struct inode *", "struct dentry *", "umode_t"),
        "security_file_open": ("struct file *",),
    }
    missing: tuple[str, str] | None = None  # a member this kernel's BTF lacks

    def func_params(self, func: str) -> tuple[str, ...] | None:
        return self.funcs.get(func)

    def member_offset(self, struct: str, member: str) -> int | None:
        known = (struct, member) in MEMBERS.values() or (struct, member) in FD_MEMBERS.values()
        return 16 if known and (struct, member) != self.missing else None


ENV = NodeEnv(
    tracepoint_format=lambda s, e: None,
    syscall_numbers={},
    kprobes=None,
    lsm=None,
    kernel=FakeKernel(),
    kprobe_hook=KprobeHooks(),
)


def kprobe(call: str, args: list[Any], selectors: list[Any], **extra: Any) -> dict[str, Any]:
    return {"kprobes": [{"call": call, "args": args, "selectors": selectors, **extra}]}


def match(op: str, *values: str, index: int = 0) -> dict[str, Any]:
    return {"index": index, "operator": op, "values": list(values)}


@pytest.mark.parametrize("call", ["write", "sys_read", "__x64_sys_write"])
def test_fd_of_a_syscall_is_compared_as_its_files_path(call: str) -> None:
    spec = kprobe(
        call,
        [{"index": 0, "type": "fd", "label": "file"}, {"index": 2, "type": "size_t"}],
        [{"matchArgs": [match("Prefix", "/etc/"), match("Postfix", ".conf")],
          "matchActions": [{"action": "Sigkill"}]}],
        syscall=True,
    )  # fmt: skip
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    # argument 0 is read into values[1] (from the user's registers) and walked as a file
    assert (cfg.str_reader, cfg.reader_kind, cfg.syscall) == ((0, 0), layout.READ_FD, True)
    prefix, postfix = cfg.selectors[0].args
    assert (prefix.kind, prefix.op, prefix.strings) == (Kind.PATH, Op.PREFIX, (b"/etc/",))
    assert (postfix.kind, postfix.op) == (Kind.PATH, Op.POSTFIX)
    assert (cfg.str_mask, cfg.rev_mask) == (1, 1)  # strs[0], and its reverse for Postfix
    assert cfg.kern_strs == 0  # nothing read from a user pointer: the table is the kernel's
    assert [(a.label, a.kind) for a in cfg.args] == [("file", Kind.PATH), ("arg2", Kind.INT)]


@pytest.mark.parametrize(
    "op", ["Equal", "NotEqual", "Prefix", "Postfix", "NotPrefix", "NotPostfix"]
)
def test_fd_and_dentry_take_the_string_operators(op: str) -> None:
    for call, index, arg_type in (("ksys_write", 0, "fd"), ("security_inode_unlink", 1, "dentry")):
        spec = kprobe(call, [{"index": index, "type": arg_type}],
                      [{"matchArgs": [match(op, "/tmp/x", index=index)]}])  # fmt: skip
        plan = compile_spec(spec, ENV)
        assert plan.ok, plan.unsupported
        (arg,) = plan.configs[0].selectors[0].args
        assert (arg.kind, arg.op) == (Kind.PATH, Op[_OP_NAMES[op]])


_OP_NAMES = {"Equal": "EQ", "NotEqual": "NE", "Prefix": "PREFIX", "Postfix": "POSTFIX",
             "NotPrefix": "NOTPREFIX", "NotPostfix": "NOTPOSTFIX"}  # fmt: skip


def test_fd_of_a_kernel_function_and_a_dentry() -> None:
    spec = kprobe("close_fd", [{"index": 0, "type": "fd"}], [{"matchArgs": [match("Equal", "/x")]}])
    (cfg,) = compile_spec(spec, ENV).configs
    assert (cfg.str_reader, cfg.reader_kind, cfg.syscall) == ((0, 0), layout.READ_FD, False)
    spec = kprobe("vfs_mkdir", [{"index": 2, "type": "dentry"}],
                  [{"matchArgs": [match("Postfix", "/tpf-d", index=2)]}])  # fmt: skip
    (cfg,) = compile_spec(spec, ENV).configs
    assert (cfg.str_reader, cfg.reader_kind) == ((2, 0), layout.READ_DENTRY)
    assert cfg.selectors[0].args[0].kind is Kind.PATH


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (kprobe("ksys_write", [{"index": 1, "type": "fd"}], []),
         "spec.kprobes[0].args[0]: parameter 1 is const char *, not an integer (int, unsigned "
         "int, ...) (type fd)"),
        (kprobe("security_file_open", [{"index": 0, "type": "fd"}], []),
         "parameter 0 is struct file *, not an integer"),
        (kprobe("security_inode_unlink", [{"index": 0, "type": "dentry"}], []),
         "spec.kprobes[0].args[0]: parameter 0 is struct inode *, not struct dentry * (type "
         "dentry)"),
        (kprobe("write", [{"index": 0, "type": "dentry"}], [], syscall=True),
         "spec.kprobes[0].args[0]: parameter 0 is a syscall argument, not struct dentry *"),
        (kprobe("security_inode_unlink",
                [{"index": 1, "type": "dentry"}, {"index": 1, "type": "dentry"}], []),
         "spec.kprobes[0].args[1]: one linux_binprm, filename, file, path, fd, dentry or kiocb "
         "argument"),
        (kprobe("ksys_write", [{"index": 0, "type": "fd"}],
                [{"matchArgs": [match("GT", "3")]}]),
         "spec.kprobes[0].selectors[0].matchArgs[0]: operator 'GT' is not supported on strings"),
    ],
)  # fmt: skip
def test_what_fd_and_dentry_refuse_is_said(spec: dict[str, Any], reason: str) -> None:
    plan = compile_spec(spec, ENV)
    assert not plan.ok and not plan.configs
    assert any(reason in r for r in plan.unsupported), plan.unsupported


def test_fd_where_the_file_table_cannot_be_read() -> None:
    kernel = FakeKernel()
    kernel.missing = ("files_struct", "fdt")
    env = replace(ENV, kernel=kernel)
    (reason,) = compile_spec(
        kprobe("ksys_write", [{"index": 0, "type": "fd"}], []), env
    ).unsupported
    assert reason == (
        "spec.kprobes[0].args[0]: type fd: the task's file table cannot be read on this node: "
        "struct files_struct has no member fdt in this kernel's BTF"
    )
    assert fd_cflags(kernel) == []
    assert "-DTPF_WITH_FD" in fd_cflags(FakeKernel())
    # a dentry needs only the walk's members
    spec = kprobe("security_inode_unlink", [{"index": 1, "type": "dentry"}], [])
    assert compile_spec(spec, env).ok
    kernel.missing = ("dentry", "d_parent")
    (reason,) = compile_spec(spec, env).unsupported
    assert "type dentry: its path cannot be walked on this node" in reason


@pytest.mark.parametrize("action", ["FollowFD", "UnfollowFD", "CopyFD", "followfd"])
def test_fd_tracking_actions_are_refused_as_not_needed(action: str) -> None:
    spec = kprobe(
        "fd_install" if action != "UnfollowFD" else "close_fd",
        [{"index": 0, "type": "int"}],
        [{"matchActions": [{"action": action, "argFd": 0, "argName": 1}]}],
    )
    env = replace(ENV, kernel=FakeKernel())
    env.kernel.funcs = {**FakeKernel.funcs, "fd_install": ("unsigned int", "struct file *")}
    plan = compile_spec(spec, env)
    assert not plan.ok and not plan.configs
    assert plan.unsupported == (
        f"spec.kprobes[0].selectors[0].matchActions[0]: action {action}: not needed: an fd "
        "argument (type fd) is resolved to its file's path from the calling task's own file "
        "table when the hook runs, so tpfilter's programs keep no table of followed file "
        "descriptors (Tetragon's fdinstall map) to follow, unfollow or copy; remove the action",
    )
