"""matchBinaries on kprobes, on Debian's stock kernel: the binary stage
(bpf/programs/tpf_binary.c) run by the kprobe-typed stage programs, so what
tests/kernel/test_binaries_on_kernel.py proves on a tracepoint is proved here on a syscall
kprobe (``lseek``, whence 4444: no normal program uses it), and on a kprobe whose `file`
argument is itself walked to a path name (``security_file_open``): the argument's walk and
the executable's must not take each other's place.

The binaries: the guest's python (its resolved path: exe_file is the symlink's target) and
copies of python and of dash in a directory of the test's, so their paths differ while they
behave the same. Each operator is seen to kill the binary it names and to spare the one it
does not; followChildren to reach a child and a grandchild.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, binary_copies, emptied_after
from test_programs_syscalls import LSEEK_4444, PYTHON
from test_tasksel_on_kernel import KILLED_CHILD

from tpfilter.models import parse_policy
from tpfilter_dev import contain

POLICY_ID = 38
REAL_PYTHON = os.path.realpath(PYTHON)


@pytest.fixture
def cg(env: Env, cgroups: Cgroups) -> Iterator[Path]:
    with emptied_after(env) as e:
        path, cg_id = cgroups()
        e.maps.install(POLICY_ID, {cg_id}, max_entries=8)
        yield path


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return binary_copies(tmp_path_factory.mktemp("tpf-binaries"))


def load(env: Env, name: str, kprobe: dict[str, Any]) -> None:
    policy = parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, "kprobes": [kprobe]},
        }
    )
    (status,) = env.manager.sync([(policy, POLICY_ID)]).values()
    assert status.state == "loaded", status
    assert any("kprobe" in h for h in status.hooks), status.hooks


def lseek_kill(env: Env, name: str, *binaries: dict[str, Any]) -> None:
    selector = {
        "matchArgs": [{"index": 2, "operator": "Equal", "values": ["4444"]}],
        "matchBinaries": list(binaries),
        "matchActions": [{"action": "Sigkill"}],
    }
    load(
        env,
        name,
        {
            "call": "sys_lseek",
            "syscall": True,
            "args": [{"index": 2, "type": "int", "label": "whence"}],
            "selectors": [selector],
        },
    )


def run(cgroup: Path, python: str, code: str, wrapper: Sequence[str] = ()) -> int:
    argv = contain.argv(cgroup, [*wrapper, python, "-S", "-c", code])
    return subprocess.run(argv, timeout=300).returncode


def test_kprobe_binaries_operators(env: Env, cg: Path, copies: dict[str, str]) -> None:
    copy_dir = os.path.dirname(copies["py"]) + "/"
    cases = [
        ("In", [REAL_PYTHON], (-9, 0)),
        ("NotIn", [REAL_PYTHON, "/nowhere"], (0, -9)),
        ("Prefix", ["/nowhere/", copy_dir], (0, -9)),
        ("NotPrefix", [copy_dir], (-9, 0)),
        ("Postfix", ["-py-copy"], (0, -9)),
        ("NotPostfix", ["-py-copy"], (-9, 0)),
    ]
    for i, (operator, values, (real, copy)) in enumerate(cases):
        lseek_kill(env, f"kp-bin-{i}", {"operator": operator, "values": values})
        got = run(cg, REAL_PYTHON, LSEEK_4444), run(cg, copies["py"], LSEEK_4444)
        assert got == (real, copy), (operator, values)
    lseek_kill(env, "kp-bin-symlink", {"operator": "In", "values": [REAL_PYTHON]})
    assert run(cg, PYTHON, LSEEK_4444) == -9  # run through the symlink: its target


def test_kprobe_binaries_follow_children(env: Env, cg: Path, copies: dict[str, str]) -> None:
    sh = copies["sh"]
    child = [sh, "-c", '"$@"; exit $?', "sh"]
    grandchild = [sh, "-c", '/bin/sh -c \'"$@"; exit $?\' sh "$@"; exit $?', "sh"]
    entry = {"operator": "In", "values": [sh]}
    lseek_kill(env, "kp-bin-follow", {**entry, "followChildren": True})
    assert run(cg, REAL_PYTHON, LSEEK_4444, child) == KILLED_CHILD
    assert run(cg, REAL_PYTHON, LSEEK_4444, grandchild) == KILLED_CHILD
    assert run(cg, REAL_PYTHON, LSEEK_4444) == 0
    lseek_kill(env, "kp-bin-own", entry)
    assert run(cg, REAL_PYTHON, LSEEK_4444, child) == 0
    lseek_kill(env, "kp-bin-notin-follow", {**entry, "operator": "NotIn", "followChildren": True})
    assert run(cg, REAL_PYTHON, LSEEK_4444, child) == 0
    assert run(cg, REAL_PYTHON, LSEEK_4444) == -9


def test_kprobe_file_argument_and_binary(env: Env, cg: Path, copies: dict[str, str]) -> None:
    """security_file_open's `file` (its own path walk, strs[0]) and the executable's: a
    selector needs both, so a mix-up of the two fails one side or the other."""
    target = Path(copies["py"]).parent / "tpf-bin-target"
    target.write_text("x")
    load(
        env,
        "kp-bin-file",
        {
            "call": "security_file_open",
            "args": [{"index": 0, "type": "file"}],
            "selectors": [
                {
                    "matchArgs": [
                        {"index": 0, "operator": "Postfix", "values": ["/tpf-bin-target"]}
                    ],
                    "matchBinaries": [{"operator": "Postfix", "values": ["/tpf-py-copy"]}],
                    "matchActions": [{"action": "Sigkill"}],
                }
            ],
        },
    )
    read_target = f"open({str(target)!r}).read()\n"
    assert run(cg, copies["py"], read_target) == -9
    assert run(cg, REAL_PYTHON, read_target) == 0  # another binary
    assert run(cg, copies["py"], "open('/etc/hostname').read()\n") == 0  # another file
