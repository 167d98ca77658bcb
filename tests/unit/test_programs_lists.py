"""spec.lists (``call: "list:NAME"``) and InMap/NotInMap in the compiler (programs/lists.py).

The kernel's side of these is what a hand-written kprobe per function gets; it runs in the
QEMU guest (tests/vm/test_lists.py).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.kprobes import KprobeHooks
from tpfilter.programs.layout import Action, IntType, Kind, Op
from tpfilter.programs.plan import NodeEnv
from tpfilter.programs.tracefs import Field, TracepointFormat
from unit.test_programs_kprobes import FakeKernel


class ListKernel(FakeKernel):
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        **FakeKernel.funcs,
        "__x64_sys_dup": ("struct pt_regs *",),
        "__x64_sys_dup2": ("struct pt_regs *",),
        "__x64_sys_dup3": ("struct pt_regs *",),
        "ksys_dup3": ("unsigned int", "unsigned int", "int"),
        "fd_install": ("unsigned int", "struct file *"),
    }


def env() -> NodeEnv:
    return NodeEnv(
        tracepoint_format=lambda s, e: None,
        syscall_numbers={},
        kprobes=None,
        lsm=None,
        kernel=ListKernel(),
        kprobe_hook=KprobeHooks(),
    )


DUPS = {"name": "dups", "type": "syscalls", "values": ["sys_dup", "dup2", "__x64_sys_dup3"]}


def test_a_syscalls_list_is_one_syscall_kprobe_per_value_sharing_the_entry() -> None:
    spec = {
        "lists": [DUPS],
        "kprobes": [{
            "call": "list:dups",
            "args": [{"index": 0, "type": "int"}],
            "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["9999"]}],
                           "matchActions": [{"action": "Sigkill"}]}],
        }],
    }  # fmt: skip
    plan = compile_spec(spec, env())
    assert plan.ok, plan.unsupported
    assert [c.name for c in plan.configs] == [
        "kprobe/__x64_sys_dup",
        "kprobe/__x64_sys_dup2",
        "kprobe/__x64_sys_dup3",
    ]
    assert len({c.hook for c in plan.configs}) == 3
    for cfg in plan.configs:
        assert cfg.syscall  # the user's registers, as syscall: true
        (sel,) = cfg.selectors
        assert sel.actions == Action.POST | Action.SIGKILL
        assert sel.args[0].ints == (9999,)


def test_values_naming_the_same_syscall_probe_it_once() -> None:
    spec = {
        "lists": [{"name": "d", "type": "syscalls", "values": ["dup", "sys_dup", "__x64_sys_dup"]}],
        "kprobes": [{"call": "list:d"}],
    }
    assert [c.name for c in compile_spec(spec, env()).configs] == ["kprobe/__x64_sys_dup"]


def test_an_untyped_list_is_kernel_functions_with_syscall_false() -> None:
    spec = {
        "lists": [{"name": "k", "values": ["ksys_dup3", "fd_install"]}],
        "kprobes": [{"call": "list:k", "syscall": False, "args": [{"index": 0, "type": "uint32"}]}],
    }
    plan = compile_spec(spec, env())
    assert plan.ok, plan.unsupported
    assert [(c.name, c.syscall) for c in plan.configs] == [
        ("kprobe/ksys_dup3", False),
        ("kprobe/fd_install", False),
    ]
    assert [c.args[0].int_type for c in plan.configs] == [IntType.U32, IntType.U32]


def test_other_kprobes_and_lists_beside_a_list_call() -> None:
    spec = {
        "lists": [DUPS, {"name": "unused", "type": "syscalls", "values": ["dup"]}],
        "kprobes": [{"call": "list:dups"}, {"call": "fd_install", "syscall": False}],
    }
    assert len(compile_spec(spec, env()).configs) == 4


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"kprobes": [{"call": "list:nope"}]},
         "spec.kprobes[0].call: no list 'nope' in spec.lists"),
        ({"lists": [{"name": "e", "type": "syscalls", "values": []}],
          "kprobes": [{"call": "list:e"}]},
         "spec.lists[0].values: list 'e' is empty"),
        ({"lists": [{"name": "e", "type": "syscalls"}]}, "spec.lists[0].values: list 'e' is empty"),
        ({"lists": [{"type": "syscalls", "values": ["dup"]}]}, "spec.lists[0].name: a list needs"),
        ({"lists": [DUPS, DUPS]}, "spec.lists[1].name: list 'dups' is defined twice"),
        ({"lists": [{"name": "x", "type": "functions", "values": ["dup"]}]},
         "spec.lists[0].type: unknown list type 'functions'"),
        ({"lists": [{"name": "g", "type": "generated_syscalls"}]},
         "spec.lists[0].type: generated_syscalls: generated lists are not supported"),
        ({"lists": [{"name": "g", "type": "generated_ftrace", "pattern": "^ksys_*"}]},
         "spec.lists[0].type: generated_ftrace: generated lists are not supported"),
        ({"lists": [{"name": "p", "type": "syscalls", "values": ["dup"], "pattern": "x"}]},
         "spec.lists[0].pattern: a pattern is for generated_ftrace lists only"),
        ({"lists": [{"name": "c", "type": "syscalls", "values": ["__ia32_sys_dup"]}]},
         "32-bit compat syscalls are not supported (__ia32_sys_dup)"),
        ({"lists": [DUPS], "kprobes": [{"call": "list:dups", "syscall": False}]},
         "spec.kprobes[0].syscall: false, but list 'dups' has type syscalls"),
        ({"lists": [{"name": "k", "values": ["fd_install"]}], "kprobes": [{"call": "list:k"}]},
         "spec.kprobes[0].syscall: list 'k' has no type: its values are kernel functions"),
        ({"lists": [{"name": "d", "type": "syscalls", "values": ["dup", "nosuch"]}],
          "kprobes": [{"call": "list:d"}]},
         "spec.kprobes[0]: syscall 'nosuch': no function __x64_sys_nosuch on this node"),
        ({"lists": [DUPS], "lsmhooks": [{"hook": "list:dups"}]},
         "spec.lsmhooks[0].hook: list:dups: lists apply to a kprobe's call only"),
        ({"lists": [DUPS], "tracepoints": [{"subsystem": "syscalls", "event": "list:dups"}]},
         "spec.tracepoints[0].event: list:dups: lists apply to a kprobe's call only"),
    ],
)  # fmt: skip
def test_what_lists_refuse_is_said_naming_the_field(spec: dict[str, Any], reason: str) -> None:
    plan = compile_spec(spec, env())
    assert not plan.ok and not plan.configs
    assert any(reason in r for r in plan.unsupported), plan.unsupported


def test_an_error_shared_by_every_function_of_a_list_is_said_once() -> None:
    spec = {
        "lists": [DUPS],
        "kprobes": [{"call": "list:dups", "args": [{"index": 0, "type": "path"}]}],
    }
    (reason,) = compile_spec(spec, env()).unsupported
    assert reason.startswith("spec.kprobes[0].args[0]: parameter 0 is a syscall argument")


def in_map(op: str, values: list[Any], arg_type: str = "int", index: int = 0) -> dict[str, Any]:
    return {
        "kprobes": [{
            "call": "fd_install", "syscall": False,
            "args": [{"index": 0, "type": arg_type}, {"index": 1, "type": "file"}],
            "selectors": [{"matchArgs": [{"index": index, "operator": op, "values": values}]}],
        }],
    }  # fmt: skip


def test_in_map_is_an_integer_set_with_ranges() -> None:
    (cfg,) = compile_spec(in_map("InMap", ["7", "1:3", "-2:-1", "0x10"]), env()).configs
    (arg,) = cfg.selectors[0].args
    assert (arg.kind, arg.op, arg.int_type) == (Kind.INT, Op.EQ, IntType.S32)
    # int is compared sign-extended, as the Equal set is (values normalised to u64)
    neg = [(1 << 64) - 2, (1 << 64) - 1]
    assert arg.ints == (1, 2, 3, 7, 16, *neg)
    (cfg,) = compile_spec(in_map("NotInMap", ["5:3"], "uint64"), env()).configs
    (arg,) = cfg.selectors[0].args
    assert (arg.op, arg.ints) == (Op.NE, (3, 4, 5))


def test_in_map_on_a_tracepoint_integer() -> None:
    fmt = TracepointFormat(
        "syscalls",
        "sys_enter_dup",
        1,
        (
            *(Field("char c", f"common_{i}", i, 1, False) for i in range(4)),
            Field("int __syscall_nr", "__syscall_nr", 8, 4, True),
            Field("unsigned int fildes", "fildes", 16, 8, False),
        ),
    )
    spec = {
        "tracepoints": [{
            "subsystem": "syscalls", "event": "sys_enter_dup",
            "args": [{"index": 5, "type": "uint64"}],
            "selectors": [
                {"matchArgs": [{"index": 5, "operator": "InMap", "values": ["100:101"]}]}
            ],
        }],
    }  # fmt: skip
    tp_env = NodeEnv(tracepoint_format=lambda s, e: fmt, syscall_numbers={"dup": 32}, kprobes=None)
    plan = compile_spec(spec, tp_env)
    assert plan.ok, plan.unsupported
    assert plan.configs[0].selectors[0].args[0].ints == (100, 101)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (in_map("InMap", ["list:dups"]), "list:dups: values from a list are syscall numbers"),
        (in_map("InMap", ["0:5000"]), "range 0:5000 has 5001 values, at most 4096"),
        (in_map("InMap", ["a:b"]), "bad integer value or range 'a:b'"),
        (in_map("NotInMap", ["1"], index=1), "operator NotInMap compares integer arguments"),
    ],
)
def test_what_in_map_refuses_is_said(spec: dict[str, Any], reason: str) -> None:
    spec["lists"] = [DUPS]
    (got,) = compile_spec(spec, env()).unsupported
    assert got.startswith("spec.kprobes[0].selectors[0].matchArgs[0]: ") and reason in got
