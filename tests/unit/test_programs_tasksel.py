"""tpfilter.programs.tasksel: matchPIDs, matchNamespaces, matchCapabilities compiled for
the programs' task filters (bpf/programs/tpf_task.h), and what is refused (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from test_programs_compiler import ENV as TP_ENV
from test_programs_compiler import exec_tp
from test_programs_kprobes import ENV as KP_ENV
from test_programs_kprobes import FakeKernel

from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.taskbtf import MEMBERS, OPTIONAL, task_cflags, task_offsets
from tpfilter.programs.tasksel import (
    CAP_NUMBERS,
    F_CAPS,
    F_FOLLOW,
    F_NS,
    F_NSPID,
    F_PID,
    FOLLOW_HOST,
    FOLLOW_NS,
    NAMESPACES,
    TASK_BIT,
    TFF_MASK,
    TFF_NOTIN,
    TaskFilter,
    fill_tsel,
)

HOST = {name: 4026531000 + i for i, name in enumerate(NAMESPACES)}


class TaskKernel(FakeKernel):
    """The kprobe tests' fake BTF, with the task structs' members (and, optionally, the
    time and cgroup namespaces)."""

    def __init__(self, *, optional: bool = True) -> None:
        self.members = dict(MEMBERS)
        if optional:
            for extra in OPTIONAL.values():
                self.members.update(extra)

    def struct_size(self, struct: str) -> int | None:
        return 16 if struct == "upid" else None

    def member_offset(self, struct: str, member: str) -> int | None:
        if (struct, member) in self.members.values():
            return 16
        return super().member_offset(struct, member)


TENV = replace(TP_ENV, kernel=TaskKernel(), host_ns=HOST)


def task_filters(**selector: Any) -> tuple[TaskFilter, ...]:
    plan = compile_spec(exec_tp(**selector), TENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.str_mask & TASK_BIT  # the STRINGS stage reads the task's facts
    return cfg.selectors[0].task


def refused(spec: dict[str, Any], env: Any = TENV) -> str:
    plan = compile_spec(spec, env)
    assert not plan.ok
    return "; ".join(plan.unsupported)


def test_match_pids_host_and_namespace_pids() -> None:
    got = task_filters(
        matchPIDs=[
            {"operator": "In", "values": [1234, "42"], "followForks": False},
            {"operator": "NotIn", "values": [1], "isNamespacePID": True},
        ]
    )
    assert got == (
        TaskFilter(F_PID, 0, (1234, 42)),
        TaskFilter(F_NSPID, TFF_NOTIN, (1,)),
    )


def test_match_namespaces_inodes_and_host_ns() -> None:
    got = task_filters(
        matchNamespaces=[
            {"namespace": "Net", "operator": "In", "values": ["host_ns", "4026532000"]},
            {"namespace": "Pid", "operator": "NotIn", "values": ["host_ns"]},
            {"namespace": "TimeForChildren", "operator": "In", "values": ["4026531834"]},
        ]
    )
    assert got == (
        TaskFilter(F_NS + NAMESPACES.index("Net"), 0, (HOST["Net"], 4026532000)),
        TaskFilter(F_NS + NAMESPACES.index("Pid"), TFF_NOTIN, (HOST["Pid"],)),
        TaskFilter(F_NS + NAMESPACES.index("TimeForChildren"), 0, (4026531834,)),
    )


def test_match_capabilities_sets_and_namespace_capability() -> None:
    got = task_filters(
        matchCapabilities=[
            {"type": "Permitted", "operator": "In", "values": ["CAP_SYS_ADMIN", "cap_net_raw"]},
            {"operator": "NotIn", "values": ["CAP_BPF"], "isNamespaceCapability": True},
        ]
    )
    admin_raw = 1 << CAP_NUMBERS["CAP_SYS_ADMIN"] | 1 << CAP_NUMBERS["CAP_NET_RAW"]
    assert (CAP_NUMBERS["CAP_SYS_ADMIN"], CAP_NUMBERS["CAP_NET_RAW"]) == (21, 13)
    assert got == (
        TaskFilter(F_CAPS + 2, TFF_MASK, (admin_raw,)),
        # isNamespaceCapability: Tetragon never matches in the node's user namespace
        TaskFilter(F_NS + NAMESPACES.index("User"), TFF_NOTIN, (HOST["User"],)),
        TaskFilter(F_CAPS + 0, TFF_MASK | TFF_NOTIN, (1 << 39,)),
    )


def test_all_three_and_args_in_one_selector_on_a_kprobe() -> None:
    spec = {
        "kprobes": [
            {
                "call": "security_file_open",
                "args": [{"index": 0, "type": "file"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/etc"]}],
                        "matchPIDs": [{"operator": "NotIn", "values": [1]}],
                        "matchNamespaces": [
                            {"namespace": "Mnt", "operator": "NotIn", "values": ["host_ns"]}
                        ],
                        "matchCapabilities": [{"operator": "In", "values": ["CAP_CHOWN"]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ]
    }
    env = replace(KP_ENV, kernel=TaskKernel(), host_ns=HOST)
    plan = compile_spec(spec, env)
    assert plan.ok, plan.unsupported
    (sel,) = plan.configs[0].selectors
    assert len(sel.args) == 1 and [f.first for f in sel.task] == [F_PID, F_NS + 2, F_CAPS]
    assert plan.configs[0].str_mask & TASK_BIT


def test_no_task_filters_reads_no_task() -> None:
    plan = compile_spec(exec_tp(matchBinaries=[{"operator": "In", "values": ["/a"]}]), TENV)
    assert plan.ok and not plan.configs[0].str_mask & TASK_BIT
    assert plan.configs[0].selectors[0].task == ()


@pytest.mark.parametrize(
    ("selector", "reason"),
    [
        ({"matchPIDs": [{"operator": "Equal", "values": [1]}]}, "matchPIDs[0].operator: 'Equal'"),
        ({"matchPIDs": [{"operator": "In", "values": ["abc"]}]}, "matchPIDs[0].values: 'abc'"),
        ({"matchPIDs": [{"operator": "In", "values": [-1]}]}, "is not a process ID"),
        ({"matchPIDs": [{"operator": "In", "values": [1, 2, 3, 4, 5]}]}, "at most 4 values"),
        ({"matchPIDs": [{"operator": "In", "values": []}]}, "matchPIDs[0].values: must be"),
        (
            {"matchPIDs": [{"operator": "In", "values": [1], "followForks": "yes"}]},
            "matchPIDs[0].followForks: must be true or false",
        ),
        (
            {"matchNamespaces": [{"namespace": "Foo", "operator": "In", "values": ["1"]}]},
            "matchNamespaces[0].namespace: 'Foo' is not a namespace",
        ),
        (
            {"matchNamespaces": [{"namespace": "Net", "operator": "In", "values": ["xyz"]}]},
            "matchNamespaces[0].values: 'xyz' is not a namespace inode number or host_ns",
        ),
        (
            {"matchNamespaces": [{"namespace": "Net", "operator": "NotEqual", "values": ["1"]}]},
            "matchNamespaces[0].operator: 'NotEqual' is not supported (In, NotIn)",
        ),
        (
            {"matchCapabilities": [{"operator": "In", "values": ["CAP_FOO"]}]},
            "matchCapabilities[0].values: 'CAP_FOO' is not a capability",
        ),
        (
            {"matchCapabilities": [{"type": "Bounding", "operator": "In", "values": ["CAP_KILL"]}]},
            "matchCapabilities[0].type: 'Bounding' is not supported",
        ),
        (
            {"matchNamespaceChanges": [{"operator": "In", "values": ["Foo"]}]},
            "matchNamespaceChanges[0].values: 'Foo' is not a namespace",
        ),
        (
            {"matchNamespaceChanges": [{"operator": "NotIn", "values": list(NAMESPACES)}]},
            "matchNamespaceChanges[0].values: NotIn every namespace",
        ),
        (
            {"matchCapabilityChanges": [{"operator": "Equal", "values": ["CAP_SETUID"]}]},
            "matchCapabilityChanges[0].operator: 'Equal' is not supported (In, NotIn)",
        ),
        (
            {"matchCapabilityChanges": [{"operator": "In", "values": ["CAP_NOPE"]}]},
            "matchCapabilityChanges[0].values: 'CAP_NOPE' is not a capability",
        ),
        (
            {
                "matchNamespaces": [
                    {"namespace": n, "operator": "In", "values": ["host_ns"]} for n in NAMESPACES
                ]
            },
            "more than 8 task filters",
        ),
    ],
)
def test_refused_with_the_field_named(selector: dict[str, Any], reason: str) -> None:
    got = refused(exec_tp(**selector))
    assert reason in got
    assert got.startswith("spec.tracepoints[0].selectors[0]")


def test_host_ns_unknown_on_the_node_is_refused_with_why() -> None:
    env = replace(TENV, host_ns={**HOST, "Mnt": "/proc/1/ns/mnt cannot be read (EACCES)"})
    got = refused(
        exec_tp(matchNamespaces=[{"namespace": "Mnt", "operator": "In", "values": ["host_ns"]}]),
        env,
    )
    assert "matchNamespaces[0].values: host_ns: the node's Mnt namespace: /proc/1/ns/mnt" in got
    got = refused(
        exec_tp(
            matchCapabilities=[
                {"operator": "In", "values": ["CAP_KILL"], "isNamespaceCapability": True}
            ]
        ),
        replace(TENV, host_ns=None),
    )
    assert "isNamespaceCapability: needs the node's user namespace" in got


def test_without_btf_or_a_namespace_type_the_kernel_lacks() -> None:
    sel = {"matchPIDs": [{"operator": "In", "values": [1]}]}
    got = refused(exec_tp(**sel), replace(TENV, kernel=None))
    assert "selectors[0].matchPIDs: needs the task's struct offsets: the node's BTF" in got
    old = replace(TENV, kernel=TaskKernel(optional=False))
    assert compile_spec(exec_tp(**sel), old).ok  # the rest works there
    got = refused(
        exec_tp(matchNamespaces=[{"namespace": "Time", "operator": "In", "values": ["1"]}]), old
    )
    assert "matchNamespaces[0].namespace: namespace Time: this kernel's BTF has no time" in got


def test_offsets_become_cflags() -> None:
    offsets = task_offsets(TaskKernel())
    assert isinstance(offsets, dict)
    assert offsets["TPF_TSIZE_UPID"] == 16 and "TPF_TOFF_NSPROXY_TIME" in offsets
    flags = task_cflags(TaskKernel())
    assert flags[0] == "-DTPF_WITH_TASK" and "-DTPF_TOFF_TASK_NSPROXY=16" in flags
    assert task_cflags(None) == []
    assert "TPF_TOFF_NSPROXY_CGROUP" not in task_offsets(TaskKernel(optional=False))


def test_the_example_policy_is_valid_and_compiles() -> None:
    import yaml
    from test_crds import validate
    from test_programs_compiler import EXAMPLES

    from tpfilter.models import parse_policy

    body = yaml.safe_load((EXAMPLES / "task-selectors-tracepoint.yaml").read_text())
    assert validate(body) == []  # the CRD's schema accepts the fields
    from test_programs_compiler import COMMON

    from tpfilter.programs.tracefs import parse_format

    unshare = (
        "ID: 9\nformat:\n"
        + COMMON
        + (
            "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
            "\tfield:unsigned long unshare_flags;\toffset:16;\tsize:8;\tsigned:0;\n"
        )
    )
    env = replace(
        TENV,
        tracepoint_format=lambda sub, ev: parse_format(unshare, sub, ev),
        syscall_numbers={"unshare": 272},
    )
    plan = compile_spec(dict(parse_policy(body).spec.model_extra or {}), env)
    assert plan.ok, plan.unsupported
    kill, post = plan.configs[0].selectors
    assert [f.first for f in kill.task] == [F_NSPID, F_NS + NAMESPACES.index("User"), F_CAPS]
    assert kill.task[1].values == (HOST["User"],) and post.task == ()


def test_follow_forks_filters_walk_the_ancestors() -> None:
    plan = compile_spec(
        exec_tp(
            matchPIDs=[
                {"operator": "In", "values": [7, 8], "followForks": True},
                {"operator": "NotIn", "values": [1], "followForks": True, "isNamespacePID": True},
            ]
        ),
        TENV,
    )
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.rev_mask & TASK_BIT  # STRINGS walks the ancestors
    assert cfg.selectors[0].task == (
        TaskFilter(F_FOLLOW, TFF_MASK, (7, 8), FOLLOW_HOST),
        TaskFilter(F_FOLLOW, TFF_MASK | TFF_NOTIN, (1,), FOLLOW_NS),
    )
    plain = compile_spec(exec_tp(matchPIDs=[{"operator": "In", "values": [7]}]), TENV)
    assert not plain.configs[0].rev_mask & TASK_BIT  # no walk without followForks


class Leaf:
    class F:
        def __init__(self) -> None:
            self.first = self.flags = 0
            self.vals = [0] * 4

    def __init__(self) -> None:
        self.n = 0
        self.f = [Leaf.F() for _ in range(8)]


def test_fill_tsel_repeats_values_and_gives_follow_filters_their_bit() -> None:
    filters = (
        TaskFilter(F_PID, 0, (5, 6)),
        TaskFilter(F_FOLLOW, TFF_MASK, (7,), FOLLOW_HOST),
        TaskFilter(F_FOLLOW, TFF_MASK | TFF_NOTIN, (1,), FOLLOW_NS),
    )
    leaf = fill_tsel(Leaf(), filters, [3, 10])
    assert leaf.n == 3
    assert [(f.first, f.flags, f.vals) for f in leaf.f[:3]] == [
        (F_PID, 0, [5, 6, 5, 5]),  # unused values repeat the first: In/NotIn unchanged
        (F_FOLLOW, TFF_MASK, [1 << 3] * 4),
        (F_FOLLOW, TFF_MASK | TFF_NOTIN, [1 << 10] * 4),
    ]
