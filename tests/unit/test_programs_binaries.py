"""tpfilter.programs.binsel / binids: matchBinaries compiled for every hook type (task
filters testing a bit of TPF_F_BIN / TPF_F_BIN_FOLLOW, or the exec hook's own set), what is
refused and why, and the node-wide sets' content (pure; the programs' behaviour is tested
on kernels: tests/kernel/test_binaries_on_kernel.py, tests/vm/test_binaries.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from test_programs_compiler import ENV as TP_ENV
from test_programs_compiler import exec_tp
from test_programs_kprobes import ENV as KP_ENV
from test_programs_kprobes import kprobe
from test_programs_tasksel import HOST, TaskKernel

from tpfilter.programs import binsel
from tpfilter.programs.binids import MAX_IDS, BinIds
from tpfilter.programs.binsel import (
    BIN_EQ,
    BIN_POSTFIX,
    BIN_PREFIX,
    BINM_FOLLOW,
    BINM_OWN,
    BINM_POSTFIX,
    F_BIN,
    F_BIN_FOLLOW,
    binary_cflags,
)
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.layout import BinOp
from tpfilter.programs.tasksel import TASK_BIT, TFF_MASK, TFF_NOTIN, TaskFilter, fill_tsel


class BinKernel(TaskKernel):
    """The fake BTF with the task's and the executable's members too."""

    def member_offset(self, struct: str, member: str) -> int | None:
        if (struct, member) in binsel.MEMBERS.values():
            return 24
        return super().member_offset(struct, member)


TENV = replace(TP_ENV, kernel=BinKernel(), host_ns=HOST)
KENV = replace(KP_ENV, kernel=BinKernel(), host_ns=HOST)


def lseek_tp(**selector: Any) -> dict[str, Any]:
    return {
        "tracepoints": [
            {
                "subsystem": "syscalls",
                "event": "sys_enter_lseek",
                "args": [{"index": 7, "type": "int32"}],
                "selectors": [selector],
            }
        ]
    }


def only(spec: dict[str, Any], env: Any = TENV) -> Any:
    plan = compile_spec(spec, env)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    return cfg


@pytest.mark.parametrize(
    ("operator", "kind", "negated"),
    [
        ("In", BIN_EQ, False),
        ("NotIn", BIN_EQ, True),
        ("Prefix", BIN_PREFIX, False),
        ("notprefix", BIN_PREFIX, True),
        ("Postfix", BIN_POSTFIX, False),
        ("NotPostfix", BIN_POSTFIX, True),
    ],
)
def test_every_operator_on_a_syscall_is_a_bit_test(operator: str, kind: int, negated: bool) -> None:
    cfg = only(lseek_tp(matchBinaries=[{"operator": operator, "values": ["/b", "/a", "/b"]}]))
    (sel,) = cfg.selectors
    assert sel.bin_op is BinOp.NONE and sel.binaries == ()
    flags = TFF_MASK | (TFF_NOTIN if negated else 0)
    assert sel.task == (TaskFilter(F_BIN, flags, binary=kind, strings=(b"/a", b"/b")),)
    postfix = BINM_POSTFIX if kind == BIN_POSTFIX else 0
    assert cfg.bin_mask == BINM_OWN | postfix
    assert not cfg.str_mask & TASK_BIT  # its fact comes from the BINARY stage


def test_follow_children_tests_the_ancestors_fact() -> None:
    entry = {"operator": "In", "values": ["/bin/sh"], "followChildren": True}
    cfg = only(lseek_tp(matchBinaries=[entry]))
    assert cfg.selectors[0].task[0].first == F_BIN_FOLLOW
    assert cfg.bin_mask == BINM_OWN | BINM_FOLLOW


def test_exec_hook_keeps_its_own_set_for_in_and_notin() -> None:
    cfg = only(exec_tp(matchBinaries=[{"operator": "NotIn", "values": ["/bin/sh"]}]))
    sel = cfg.selectors[0]
    assert (sel.bin_op, sel.binaries, sel.task, cfg.bin_mask) == (
        BinOp.NOT_IN,
        (b"/bin/sh",),
        (),
        0,
    )
    cfg = only(exec_tp(matchBinaries=[{"operator": "Prefix", "values": ["/usr/"]}]))
    assert cfg.selectors[0].task[0].binary == BIN_PREFIX and cfg.bin_mask == BINM_OWN
    follow = {"operator": "In", "values": ["/bin/sh"], "followChildren": True}
    assert only(exec_tp(matchBinaries=[follow])).selectors[0].task[0].first == F_BIN_FOLLOW


def test_kprobes_and_lsmhooks_take_matchbinaries() -> None:
    spec = kprobe(
        "security_file_open",
        [{"index": 0, "type": "file"}],
        [{"matchBinaries": [{"operator": "Postfix", "values": ["/curl"]}]}],
    )
    cfg = only(spec, KENV)
    assert cfg.selectors[0].task[0].binary == BIN_POSTFIX
    assert cfg.bin_mask == BINM_OWN | BINM_POSTFIX
    lsm = {"lsmhooks": [{"hook": "file_open", "selectors": spec["kprobes"][0]["selectors"]}]}
    assert only(lsm, replace(KENV, lsm=None)).bin_mask == BINM_OWN | BINM_POSTFIX


def refused(spec: dict[str, Any], env: Any = TENV) -> str:
    plan = compile_spec(spec, env)
    assert not plan.ok and not plan.configs
    return "; ".join(plan.unsupported)


AT = "spec.tracepoints[0].selectors[0].matchBinaries"


@pytest.mark.parametrize(
    ("binaries", "reason"),
    [
        ([{"operator": "In", "values": ["/a"]}] * 2, f"{AT}: one matchBinaries entry per selector"),
        ([{"operator": "Equal", "values": ["/a"]}], f"{AT}[0].operator: 'Equal' is not supported"),
        ([{"operator": "In", "values": []}], f"{AT}[0].values: must be a non-empty list"),
        ([{"operator": "In", "values": ["/a"], "followChildren": "yes"}], "must be true or false"),
        ([{"operator": "In", "values": ["/a\0"]}], "contains a NUL byte"),
        ([{"operator": "In", "values": [7]}], "7 is not a string"),
        ([{"operator": "In", "values": ["x" * 255]}], "longer than 254 bytes"),
        ([{"operator": "Prefix", "values": ["x" * 249]}], "longer than 248 bytes"),
        ([{"operator": "In", "values": ["/a"], "matchMe": 1}], f"{AT}[0]: matchMe not supported"),
        ({"operator": "In"}, f"{AT}: must be a non-empty list"),
    ],
)
def test_bad_matchbinaries_are_refused_naming_the_field(binaries: Any, reason: str) -> None:
    assert reason in refused(lseek_tp(matchBinaries=binaries))


def test_without_the_executables_offsets_the_policy_is_refused() -> None:
    why = refused(lseek_tp(matchBinaries=[{"operator": "In", "values": ["/a"]}]), TP_ENV)
    assert f"{AT}: needs the executable's path from the node's BTF" in why
    assert binary_cflags(None) == []
    flags = binary_cflags(BinKernel())
    assert "-DTPF_WITH_BINARY" in flags and "-DTPF_OFF_MM_EXE_FILE=24" in flags


def test_binaries_count_among_the_selectors_task_filters() -> None:
    pids = [{"operator": "In", "values": [i]} for i in range(1, 9)]
    bins = [{"operator": "In", "values": ["/a"]}]
    assert "matchCapabilities entries and matchBinaries" in refused(
        lseek_tp(matchPIDs=pids, matchBinaries=bins)
    )
    assert only(lseek_tp(matchPIDs=pids[:7], matchBinaries=bins)).selectors[0].task


def bin_filter(kind: int, *values: bytes, follow: bool = False) -> TaskFilter:
    first = F_BIN_FOLLOW if follow else F_BIN
    return TaskFilter(first, TFF_MASK, binary=kind, strings=tuple(sorted(values)))


def test_ids_are_shared_by_equal_filters_and_freed_with_their_last_user() -> None:
    ids = BinIds()
    a, b = bin_filter(BIN_EQ, b"/a"), bin_filter(BIN_PREFIX, b"/a")
    assert ids.assign(1, [a, b]) == [0, 1]
    assert ids.assign(2, [bin_filter(BIN_EQ, b"/a", follow=True)]) == [0]  # same set
    ids.release(1)
    assert ids.content() == {(BIN_EQ, b"/a"): 1}
    ids.release(2)
    assert ids.content() == {}
    assert ids.assign(3, [b]) == [0]


def test_at_most_64_ids_then_a_clear_error() -> None:
    ids = BinIds()
    for i in range(MAX_IDS):
        ids.assign(i, [bin_filter(BIN_EQ, b"/%d" % i)])
    with pytest.raises(RuntimeError, match="at most 64 different matchBinaries"):
        ids.assign(99, [bin_filter(BIN_EQ, b"/new")])
    assert ids.assign(100, [bin_filter(BIN_EQ, b"/1")]) == [1]  # an existing set still fits


def test_trie_entries_carry_their_shorter_values_bits() -> None:
    ids = BinIds()
    ids.assign(1, [bin_filter(BIN_PREFIX, b"/usr/")])  # bit 0
    ids.assign(2, [bin_filter(BIN_PREFIX, b"/usr/bin/", b"/opt/")])  # bit 1
    ids.assign(3, [bin_filter(BIN_POSTFIX, b"sh")])  # bit 2
    ids.assign(4, [bin_filter(BIN_POSTFIX, b"/bash", b"/dash")])  # bit 3
    ids.assign(5, [bin_filter(BIN_EQ, b"/usr/bin/sh"), bin_filter(BIN_EQ, b"/usr/bin/sh", b"/x")])
    assert ids.content() == {
        (BIN_PREFIX, b"/usr/"): 0b1,
        (BIN_PREFIX, b"/usr/bin/"): 0b11,  # the longest match has /usr/'s bit too
        (BIN_PREFIX, b"/opt/"): 0b10,
        (BIN_POSTFIX, b"hs"): 0b100,  # reversed
        (BIN_POSTFIX, b"hsab/"): 0b1100,
        (BIN_POSTFIX, b"hsad/"): 0b1100,
        (BIN_EQ, b"/usr/bin/sh"): 0b110000,
        (BIN_EQ, b"/x"): 0b100000,
    }


def test_fill_tsel_puts_each_filters_bit() -> None:
    class Filter:
        first = flags = 0
        vals: list[int]

        def __init__(self) -> None:
            self.vals = [0] * 4

    class Leaf:
        def __init__(self) -> None:
            self.n = 0
            self.f = [Filter() for _ in range(8)]

    pid = TaskFilter(10, 0, (5, 6))
    follow = TaskFilter(15, TFF_MASK, (7,), follow=1)
    binary = bin_filter(BIN_EQ, b"/a")
    leaf = fill_tsel(Leaf(), (pid, binary, follow), [3], [9])
    assert leaf.n == 3
    assert [f.vals for f in leaf.f[:3]] == [[5, 6, 5, 5], [1 << 9] * 4, [1 << 3] * 4]
