"""tpfilter.programs.compiler: TracingPolicy spec -> program map configuration (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tpfilter.models import parse_policy
from tpfilter.programs import layout
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.layout import Action, BinOp, IntType, Kind, Op
from tpfilter.programs.plan import NodeEnv
from tpfilter.programs.tracefs import TracepointFormat, parse_format, parse_syscall_table
from tpfilter.programs.values import parse_int

DATA = Path(__file__).resolve().parents[1] / "data"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

COMMON = """\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;
"""
FORMATS = {
    ("sched", "sched_process_exec"): "name: sched_process_exec\nID: 365\nformat:\n"
    + COMMON
    + "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n"
    "\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n"
    "\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n",
    ("syscalls", "sys_enter_openat"): "ID: 782\nformat:\n"
    + COMMON
    + "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
    "\tfield:int dfd;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;\n"
    "\tfield:int flags;\toffset:32;\tsize:8;\tsigned:0;\n"
    "\tfield:umode_t mode;\toffset:40;\tsize:8;\tsigned:0;\n",
    ("syscalls", "sys_enter_lseek"): "ID: 700\nformat:\n"
    + COMMON
    + "\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n"
    "\tfield:unsigned int fd;\toffset:16;\tsize:8;\tsigned:0;\n"
    "\tfield:off_t offset;\toffset:24;\tsize:8;\tsigned:0;\n"
    "\tfield:unsigned int whence;\toffset:32;\tsize:8;\tsigned:0;\n",
    ("net", "netif_receive_skb"): "ID: 1\nformat:\n"
    + COMMON
    + "\tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n",
}
SYSCALLS = parse_syscall_table("#define __NR_lseek 8\n#define __NR_openat 257\n")


def fmt(subsystem: str, event: str) -> TracepointFormat | None:
    text = FORMATS.get((subsystem, event))
    return parse_format(text, subsystem, event) if text else None


ENV = NodeEnv(
    tracepoint_format=fmt,
    syscall_numbers=SYSCALLS,
    kprobes="this node's kernel has no kprobes",
    lsm="BPF LSM programs do not load on this node",
)


def exec_tp(**selector: Any) -> dict[str, Any]:
    return {
        "tracepoints": [
            {
                "subsystem": "sched",
                "event": "sched_process_exec",
                "args": [{"index": 4, "type": "string"}, {"index": 5, "type": "int32"}],
                "selectors": [selector],
            }
        ]
    }


def only_selector(spec: dict[str, Any]) -> Any:
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    (sel,) = cfg.selectors
    return sel


def test_tracepoint_example_is_the_seed_intent() -> None:
    body = yaml.safe_load((EXAMPLES / "seed-policy-tracepoint.yaml").read_text())
    policy = parse_policy(body)
    assert policy.filtered
    plan = compile_spec(dict(policy.spec.model_extra or {}), ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.hook == layout.HOOK_EXEC and cfg.attach is None
    (sel,) = cfg.selectors
    assert sel.bin_op is BinOp.NOT_IN
    assert sel.binaries == (b"/usr/bin/cat", b"/usr/bin/my-server-1", b"/usr/bin/sleep")
    assert sel.actions == Action.POST | Action.SIGKILL
    assert cfg.str_mask == 1 and cfg.rev_mask == 0


def test_seed_policy_is_unsupported_here_with_reasons() -> None:
    body = yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text())
    plan = compile_spec(dict(parse_policy(body).spec.model_extra or {}), ENV)
    assert not plan.ok and not plan.configs
    # Its only option (disable-kprobe-multi) asks for nothing tpfilter does otherwise.
    assert plan.unsupported == ("spec.kprobes: this node's kernel has no kprobes",)


def test_kprobes_without_the_nodes_btf_say_so() -> None:
    env = NodeEnv(tracepoint_format=fmt, syscall_numbers=SYSCALLS, kprobes=None)
    plan = compile_spec({"kprobes": [{"call": "fd_install"}]}, env)
    assert plan.unsupported == (
        "spec.kprobes[0]: the node's BTF (/sys/kernel/btf/vmlinux) could not be read",
    )


@pytest.mark.parametrize("path", sorted((DATA / "valid").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_valid_policy_compiles_or_says_why(path: Path) -> None:
    body = yaml.safe_load(path.read_text())
    plan = compile_spec(dict(parse_policy(body).spec.model_extra or {}), ENV)
    assert plan.ok or all(": " in r for r in plan.unsupported)
    assert plan.ok != bool(plan.unsupported)


def test_tracepoint_data_file_reports_its_unsupported_post_options() -> None:
    body = yaml.safe_load((DATA / "valid/tracepoint-sched-process-exec.yaml").read_text())
    plan = compile_spec(body["spec"], ENV)
    assert plan.unsupported == (
        "spec.tracepoints[0].selectors[0].matchActions[0]: Post with kernelStackTrace, "
        "rateLimit, rateLimitScope is not supported",
    )


def test_matchargs_on_the_exec_filename() -> None:
    sel = only_selector(
        exec_tp(
            matchArgs=[
                {"index": 4, "operator": "Prefix", "values": ["/tmp/", "/dev/shm/"]},
                {"index": 4, "operator": "Postfix", "values": [".sh"]},
            ]
        )
    )
    prefix, postfix = sel.args
    assert (prefix.kind, prefix.op, prefix.strings) == (
        Kind.PATH,
        Op.PREFIX,
        (b"/dev/shm/", b"/tmp/"),
    )
    assert (postfix.op, postfix.strings) == (Op.POSTFIX, (b".sh",))
    assert sel.actions == Action.POST  # no matchActions: Post


def test_integer_operators_and_values() -> None:
    sel = only_selector(
        exec_tp(
            matchArgs=[
                {"index": 5, "operator": "Equal", "values": ["1", "0x10", "010", "-1"]},
                {"index": 5, "operator": "GT", "values": ["5", "3"]},
                {"index": 5, "operator": "LessThan", "values": ["-2", "7"]},
                {"index": 5, "operator": "Mask", "values": ["1", "0x200"]},
            ],
            matchActions=[{"action": "NoPost"}, {"action": "Sigkill"}],
        )
    )
    eq, gt, lt, mask = sel.args
    assert eq.int_type is IntType.S32 and eq.src == layout.EXEC_PID
    assert eq.ints == (1, 8, 16, 0xFFFF_FFFF_FFFF_FFFF)  # -1 sign-extended like the program
    assert (gt.op, gt.imm) == (Op.GT, 3)  # ORed: beyond the weakest bound
    assert (lt.op, lt.imm) == (Op.LT, 7)
    assert (mask.op, mask.imm) == (Op.MASK, 0x201)
    assert sel.actions == Action.SIGKILL  # NoPost


@pytest.mark.parametrize(
    ("int_type", "values", "expected"),
    [
        (IntType.S8, [-1, 0xFF, 127, -128], [2**64 - 1, 2**64 - 1, 127, 2**64 - 128]),
        (IntType.U8, [-1, 0xFF, 1], [0xFF, 0xFF, 1]),
        (IntType.S16, [-1, 0x8000], [2**64 - 1, 2**64 - 0x8000]),
        (IntType.U16, [0xFFFF, -0x8000], [0xFFFF, 0x8000]),
        (IntType.S32, [-1, 0xFFFF_FFFF], [2**64 - 1, 2**64 - 1]),
        (IntType.U64, [-1, 5], [2**64 - 1, 5]),
    ],
)
def test_small_and_wide_integer_types_as_the_program_compares_them(
    int_type: IntType, values: list[int], expected: list[int]
) -> None:
    assert [int_type.u64(v) for v in values] == expected
    # the event's number is the value as the C type sees it
    assert [int_type.of(u) for u in expected] == [int_type.of(v) for v in values]
    assert IntType.S8.of(0x1FF) == -1 and IntType.U16.of(0x18001) == 0x8001


def test_a_value_the_small_type_cannot_hold_is_refused_naming_the_field() -> None:
    spec = {
        "tracepoints": [
            {
                "subsystem": "syscalls",
                "event": "sys_enter_lseek",
                "args": [{"index": 7, "type": "uint8"}],
                "selectors": [
                    {"matchArgs": [{"index": 7, "operator": "Equal", "values": ["256"]}]}
                ],
            }
        ]
    }
    plan = compile_spec(spec, ENV)
    assert not plan.ok
    assert any(
        "spec.tracepoints[0].selectors[0].matchArgs[0]" in r and "256 does not fit in 8 bits" in r
        for r in plan.unsupported
    ), plan.unsupported


def test_signal_sends_its_argsig_and_combines_with_the_other_actions() -> None:
    sel = only_selector(
        exec_tp(matchActions=[{"action": "Signal", "argSig": "0xa"}, {"action": "NoPost"}])
    )
    assert (sel.actions, sel.signal) == (Action.SIGNAL, 10)
    sel = only_selector(exec_tp(matchActions=[{"action": "Signal", "argSig": 19}]))
    assert (sel.actions, sel.signal) == (Action.POST | Action.SIGNAL, 19)


def test_parse_int() -> None:
    assert [parse_int(v) for v in ("0", "10", "0x1f", "017", "-5", "+3", 7)] == [
        0,
        10,
        31,
        15,
        -5,
        3,
        7,
    ]
    with pytest.raises(ValueError):
        parse_int("abc")


def test_syscall_args_string_and_int() -> None:
    spec = {
        "tracepoints": [
            {
                "subsystem": "syscalls",
                "event": "sys_enter_openat",
                "args": [
                    {"index": 5, "type": "int"},
                    {"index": 6, "type": "string", "label": "path"},
                    {"index": 7},
                ],
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 6, "operator": "Equal", "values": ["/etc/shadow"]},
                            {"index": 5, "operator": "NotEqual", "values": ["-100"]},
                            {"index": 7, "operator": "Mask", "values": ["0x40"]},
                        ]
                    }
                ],
            }
        ]
    }
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.hook == 257 and cfg.attach == "syscalls/sys_enter_openat"
    assert [(a.label, a.kind, a.src) for a in cfg.args] == [
        ("dfd", Kind.INT, 1),
        ("path", Kind.USER_STR, 2),
        ("flags", Kind.INT, 3),
    ]
    assert cfg.capture == 2 and cfg.capture_mask == 1 << 2 and cfg.str_mask == 1 << 2
    eq, ne, mask = cfg.selectors[0].args
    assert (eq.kind, eq.src, eq.strings) == (Kind.USER_STR, 2, (b"/etc/shadow",))
    assert ne.ints == (0xFFFF_FFFF_FFFF_FF9C,)
    assert mask.int_type is IntType.U64  # from the format: size 8, unsigned


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (
            exec_tp(matchPIDs=[{"operator": "In", "values": [1]}]),
            "matchPIDs: needs the task's struct offsets",  # no BTF here: test_programs_tasksel
        ),
        (
            exec_tp(matchActions=[{"action": "Override", "argError": -1}]),
            "Override cannot change the result of a tracepoint",
        ),
        (
            exec_tp(matchActions=[{"action": "GetUrl", "argUrl": "http://x"}]),
            "action GetUrl: out of scope",
        ),
        (
            exec_tp(matchActions=[{"action": "Signal", "argSig": 65}]),
            "argSig: 65 is not a signal number",
        ),
        (exec_tp(matchActions=[{"action": "Signal"}]), "argSig: 0 is not a signal number"),
        (
            exec_tp(matchActions=[{"action": "FollowFD", "argFd": 0}]),
            "keep no table of followed file",
        ),
        (exec_tp(matchArgs=[{"index": 6, "operator": "Equal", "values": ["1"]}]), "not one of"),
        (exec_tp(matchArgs=[{"index": 4, "operator": "GT", "values": ["1"]}]), "on strings"),
        (exec_tp(matchArgs=[{"index": 5, "operator": "Prefix", "values": ["1"]}]), "on integers"),
        (exec_tp(matchArgs=[{"index": 5, "operator": "Equal", "values": []}]), "non-empty"),
        (exec_tp(matchArgs=[{"index": 5, "operator": "Equal", "values": ["x"]}]), "bad integer"),
        (exec_tp(matchArgs=[{"index": 5, "operator": "Equal", "values": [2**33]}]), "32 bits"),
        (exec_tp(matchBinaries=[{"operator": "Prefix", "values": ["/"]}]), "from the node's BTF"),
        (exec_tp(matchBinaries=[{"operator": "Equal", "values": ["/"]}]), "(In, NotIn, Prefix,"),
        (
            exec_tp(matchBinaries=[{"operator": "In", "values": ["/a"], "followChildren": True}]),
            "needs the executable's path from the node's BTF",
        ),
        (
            exec_tp(matchBinaries=[{"operator": "In", "values": ["/a"]}] * 2),
            "matchBinaries: one matchBinaries entry per selector",
        ),
        (exec_tp(matchArgs=[{"index": 4, "operator": "Equal", "values": ["x" * 255]}]), "longer"),
        (
            {"tracepoints": [{"subsystem": "net", "event": "netif_receive_skb"}]},
            "tracepoint net/netif_receive_skb is not supported",
        ),
        (
            {"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_nope"}]},
            "does not exist on this node",
        ),
        (
            {
                "tracepoints": [
                    {
                        "subsystem": "syscalls",
                        "event": "sys_enter_lseek",
                        "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/a"]}]}],
                    }
                ]
            },
            "selectors[0].matchBinaries: needs the executable's path from the node's BTF",
        ),
        (
            {
                "tracepoints": [
                    {"subsystem": "syscalls", "event": "sys_enter_openat", "args": [{"index": 6}]}
                ]
            },
            "give it type string",
        ),
        ({"lsmhooks": [{"hook": "file_open"}]}, "evaluated by a kprobe at security_<hook>"),
        ({"uprobes": [{"path": "/bin/sh"}]}, "spec.uprobes: not supported"),
        ({"tracepoints": [{**exec_tp()["tracepoints"][0], "raw": True}]}, "raw not supported"),
        (
            {"tracepoints": [{**exec_tp()["tracepoints"][0], "selectors": [{}] * 9}]},
            "more than 8 selectors",
        ),
    ],
)
def test_unsupported_parts_are_reported_never_dropped(spec: dict[str, Any], reason: str) -> None:
    plan = compile_spec(spec, ENV)
    assert not plan.ok and not plan.configs
    assert any(reason in r for r in plan.unsupported), plan.unsupported


def test_one_bad_hook_makes_the_whole_policy_unsupported() -> None:
    good = exec_tp(matchBinaries=[{"operator": "In", "values": ["/bin/sh"]}])["tracepoints"][0]
    bad = {"subsystem": "net", "event": "netif_receive_skb"}
    plan = compile_spec({"tracepoints": [good, bad]}, ENV)
    assert not plan.ok and plan.configs == ()
    assert plan.unsupported[0].startswith("spec.tracepoints[1]:")


def test_no_tracefs_is_reported() -> None:
    env = NodeEnv(tracepoint_format=fmt, syscall_numbers=SYSCALLS, tracepoints="no tracefs")
    plan = compile_spec(exec_tp(), env)
    assert plan.unsupported == ("spec.tracepoints[0]: no tracefs",)


def test_policy_without_hooks_compiles_to_nothing() -> None:
    assert compile_spec({"podSelector": {"matchLabels": {"a": "b"}}}, ENV).configs == ()
    assert compile_spec({}, ENV).ok


def test_postfix_sets_the_reverse_mask() -> None:
    plan = compile_spec(
        exec_tp(matchArgs=[{"index": 4, "operator": "Postfix", "values": ["x"]}]), ENV
    )
    assert plan.configs[0].rev_mask == 1


def test_arg_fields_the_api_server_defaults_are_not_unsupported_features() -> None:
    """The CRD defaults maxData/returnCopy to false and resolve to "": as the API server
    stores the example, it must still load; a non-default value is still refused."""
    example = Path(__file__).resolve().parents[2] / "examples" / "seed-policy-tracepoint.yaml"
    spec = yaml.safe_load(example.read_text())["spec"]
    arg = spec["tracepoints"][0]["args"][0]
    arg.update({"maxData": False, "returnCopy": False, "resolve": ""})
    assert compile_spec(spec, ENV).ok
    arg["maxData"] = True
    assert "maxData" in str(compile_spec(spec, ENV).unsupported)


def test_not_prefix_and_not_postfix_use_the_tries_and_the_reverse() -> None:
    spec = {
        "tracepoints": [
            {
                "subsystem": "syscalls",
                "event": "sys_enter_openat",
                "args": [{"index": 6, "type": "string"}],
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 6, "operator": "NotPrefix", "values": ["/etc/"]},
                            {"index": 6, "operator": "NotPostfix", "values": [".so"]},
                        ]
                    }
                ],
            }
        ]
    }
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert [a.op for a in cfg.selectors[0].args] == [Op.NOTPREFIX, Op.NOTPOSTFIX]
    assert Op.NOTPREFIX.prefix_set and Op.NOTPOSTFIX.postfix_set
    assert cfg.rev_mask == cfg.str_mask  # NotPostfix needs the reversed string
