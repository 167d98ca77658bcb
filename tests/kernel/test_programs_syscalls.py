"""The generic syscalls/sys_enter_* program on the real kernel: integer and string
matchArgs, Sigkill and Post, attach on demand and detach when no policy needs it.

Set up like test_programs_exec (conftest's ``loaded``), with its own module-scoped
manager (one compile per module, ~2 s). The processes are small Python snippets
run with /usr/bin/python3 inside a fresh cgroup; every selector matches only values no
normal program uses (whence 4444, paths under the test's own directory).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, kernel_marks, run_in_cgroup, skip_reason

from tpfilter.models import Policy, parse_policy

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)

PYTHON = "/usr/bin/python3"


def py(code: str, cgroup: Path | None) -> int:
    return run_in_cgroup([PYTHON, "-S", "-c", code], cgroup)


def tp_policy(name: str, tracepoint: dict[str, Any]) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, "tracepoints": [tracepoint]},
        }
    )


def lseek_policy(
    name: str,
    *,
    offset: tuple[str, str, list[str]] | None = None,
    actions: list[dict[str, Any]] | None = None,
    **filters: Any,
) -> Policy:
    """sys_enter_lseek when whence is 4444 (no normal program uses it); ``offset`` is
    (type, operator, values) of a second matchArg, on the offset, reported first;
    ``filters`` are the selector's others (matchPIDs=[...], matchBinaries=[...])."""
    args: list[dict[str, Any]] = [{"index": 7, "type": "int32", "label": "whence"}]
    matches: list[dict[str, Any]] = [{"index": 7, "operator": "Equal", "values": ["4444"]}]
    if offset is not None:
        int_type, operator, values = offset
        args.insert(0, {"index": 6, "type": int_type, "label": "offset"})
        matches.append({"index": 6, "operator": operator, "values": values})
    selector: dict[str, Any] = {"matchArgs": matches, **filters}
    if actions:
        selector["matchActions"] = actions
    hook = {"subsystem": "syscalls", "event": "sys_enter_lseek", "args": args}
    return tp_policy(name, {**hook, "selectors": [selector]})


def lseeks(*offsets: int) -> str:
    """A snippet that calls lseek(0, offset, 4444) for each offset (each fails: EINVAL)."""
    calls = (f"try:\n    os.lseek(0, {o}, 4444)\nexcept OSError:\n    pass\n" for o in offsets)
    return "import os\n" + "".join(calls)


LSEEK_4444 = lseeks(12345)


def test_sigkill_on_an_integer_argument(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    env.maps.install(41, {cg_id}, max_entries=8)
    policy = lseek_policy("lseek-kill", actions=[{"action": "Sigkill"}])
    statuses = env.manager.sync([(policy, 41)])
    assert statuses["lseek-kill"].state == "loaded", statuses
    assert "syscalls/sys_enter_lseek" in env.manager._programs.attached

    assert py(LSEEK_4444, cg) == -9
    assert py(LSEEK_4444, other) == 0
    assert py("import os; os.lseek(0, 0, 0)", cg) == 0

    env.manager.sync([])
    assert "syscalls/sys_enter_lseek" not in env.manager._programs.attached
    assert py(LSEEK_4444, cg) == 0


# The process blocks SIGUSR1 and SIGUSR2, and after the lseek exits with the number of the
# one pending for it (0: none): which signal the policy's argSig names, delivered, not a kill.
# (Caught, not left to its default action: the process is its PID namespace's init, which
# the kernel shields from signals it has no handler for, as in a container.)
WAIT_USR = (
    "import os, signal\n"
    "mine = [signal.SIGUSR1, signal.SIGUSR2]\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, mine)\n"
    + LSEEK_4444
    + "got = signal.sigtimedwait(mine, 3)\n"
    "os._exit(got.si_signo if got else 0)\n"
)


@pytest.mark.parametrize("sig", [10, 12])  # SIGUSR1, SIGUSR2
def test_signal_sends_argsig_to_the_process(loaded: Env, cgroups: Cgroups, sig: int) -> None:
    env = loaded
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    env.pods[cg_id] = ("ns", "pod-signal", "c")
    env.maps.install(44, {cg_id}, max_entries=8)
    policy = lseek_policy("lseek-signal", actions=[{"action": "Signal", "argSig": sig}])
    assert env.manager.sync([(policy, 44)])["lseek-signal"].state == "loaded"
    assert py(WAIT_USR, cg) == sig
    assert py(WAIT_USR, other) == 0
    (event,) = env.lines()
    assert event["action"] == "signal" and event["pod"] == "pod-signal"
    totals = env.manager.action_totals()
    assert totals[("TracingPolicy/lseek-signal", "syscalls/sys_enter_lseek", "signal")] >= 1


@pytest.mark.parametrize(
    ("operator", "values", "hits"),
    [
        ("GT", ["1000"], [5000, 0x4007]),
        ("LT", ["100", "10"], [7, 0]),  # ORed: below the larger bound
        ("Mask", ["0x4000"], [0x4000 | 7]),
        ("NotEqual", ["5000", "7", str(0x4007), "0"], [123]),
    ],
)
def test_post_on_integer_operators(
    loaded: Env,
    cgroups: Cgroups,
    operator: str,
    values: list[str],
    hits: list[int],
) -> None:
    env = loaded
    cg, cg_id = cgroups()
    env.pods[cg_id] = ("ns", "pod-int", "c")
    env.maps.install(42, {cg_id}, max_entries=8)
    policy = lseek_policy("lseek-post", offset=("int64", operator, values))
    assert env.manager.sync([(policy, 42)])["lseek-post"].state == "loaded"
    assert py(lseeks(5000, 7, 0x4007, 123, 0), cg) == 0
    events = env.lines()
    assert [e["args"][0] for e in events] == hits
    assert all(e["args"][1] == 4444 for e in events)
    assert all(e["pod"] == "pod-int" and e["action"] == "post" for e in events)
    assert all(e["hook"] == "syscalls/sys_enter_lseek" for e in events)


@pytest.mark.parametrize(
    ("int_type", "operator", "value", "offsets", "hits"),
    [
        # the program compares the low 8/16 bits as the type: 0x1ff is an int8 -1
        ("int8", "Equal", "-1", [0x1FF, 0xFF, 0x7F], [-1, -1]),
        ("uint8", "Equal", "0xff", [0x1FF, 0xFF, 0x7F], [255, 255]),
        ("int16", "LT", "0", [0x18000, 0x7FFF, 0xFFFF], [-32768, -1]),
        ("uint16", "GT", "0x8000", [0x18001, 0x7FFF, 0x10000], [0x8001]),
        # auto: the format's type (off_t offset: 8 bytes, signed), all 64 bits compared
        ("auto", "Equal", "0x1ff", [0x1FF, 0xFF, 0x101FF], [0x1FF]),
    ],
)
def test_small_integer_types_compare_and_report_their_low_bits(
    loaded: Env,
    cgroups: Cgroups,
    int_type: str,
    operator: str,
    value: str,
    offsets: list[int],
    hits: list[int],
) -> None:
    env = loaded
    cg, cg_id = cgroups()
    env.pods[cg_id] = ("ns", "pod-small", "c")
    env.maps.install(43, {cg_id}, max_entries=8)
    policy = lseek_policy("lseek-small", offset=(int_type, operator, [value]))
    assert env.manager.sync([(policy, 43)])["lseek-small"].state == "loaded"
    assert py(lseeks(*offsets), cg) == 0
    assert [e["args"][0] for e in env.lines()] == hits


def test_string_argument_prefix_postfix_equal(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    env.maps.install(43, {cg_id}, max_entries=8)
    base = f"{env.root}/open-"
    policy = tp_policy(
        "openat-post",
        {
            "subsystem": "syscalls",
            "event": "sys_enter_openat",
            "args": [{"index": 6, "type": "string", "label": "filename"}],
            "selectors": [
                {"matchArgs": [{"index": 6, "operator": "Prefix", "values": [base + "p"]}]},
                {"matchArgs": [{"index": 6, "operator": "Postfix", "values": [".tpfpost"]}]},
                {"matchArgs": [{"index": 6, "operator": "Equal", "values": [base + "exact"]}]},
            ],
        },
    )
    assert env.manager.sync([(policy, 43)])["openat-post"].state == "loaded"
    names = ["p1", "x.tpfpost", "exact", "exactly", "other"]
    code = "import os\n" + "".join(
        f"try:\n    os.open({base + n!r}, os.O_RDONLY)\nexcept OSError:\n    pass\n" for n in names
    )
    assert py(code, cg) == 0
    events = env.lines()
    assert [(e["args"][0], e["selector"]) for e in events] == [
        (base + "p1", 0),
        (base + "x.tpfpost", 1),
        (base + "exact", 2),
    ]


def test_string_argument_not_prefix_and_not_postfix(loaded: Env, cgroups: Cgroups) -> None:
    """NotPrefix / NotPostfix: the string is readable and none of the values starts / ends
    it. Both selectors are ANDed in one, so an event is posted only for a name that
    neither starts with the allowed directory's prefix nor ends with an allowed suffix."""
    env = loaded
    cg, cg_id = cgroups()
    env.maps.install(44, {cg_id}, max_entries=8)
    base = f"{env.root}/neg-"
    policy = tp_policy(
        "openat-neg",
        {
            "subsystem": "syscalls",
            "event": "sys_enter_openat",
            "args": [{"index": 6, "type": "string", "label": "filename"}],
            "selectors": [
                {
                    "matchArgs": [
                        {"index": 6, "operator": "Prefix", "values": [base]},
                        {
                            "index": 6,
                            "operator": "NotPrefix",
                            "values": [base + "ok", base + "fine"],
                        },
                        {"index": 6, "operator": "NotPostfix", "values": [".conf", ".txt"]},
                    ]
                }
            ],
        },
    )
    assert env.manager.sync([(policy, 44)])["openat-neg"].state == "loaded"
    names = ["ok1", "fine.bin", "x.conf", "y.txt", "bad.bin", "worse"]
    code = "import os\n" + "".join(
        f"try:\n    os.open({base + n!r}, os.O_RDONLY)\nexcept OSError:\n    pass\n" for n in names
    )
    assert py(code, cg) == 0
    assert [e["args"][0] for e in env.lines()] == [base + "bad.bin", base + "worse"]
