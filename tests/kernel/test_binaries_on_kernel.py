"""matchBinaries on a syscall tracepoint (syscalls/sys_enter_lseek), on the real kernel:
the binary is the calling process's executable (mm->exe_file, walked to a path name by
bpf/programs/tpf_binary.c), each operator seen to kill the binary it names and to spare
one it does not, and followChildren seen to reach a child and a grandchild of the binary
it names (so an ignored, inverted or cut filter fails the test).

The binaries: the node's python (its resolved path: exe_file is the symlink's target) and
copies of python and of dash under the test's temporary directory, so that their paths
differ while they behave the same. Every process runs in the selected cgroup as a
container's does (tpfilter_dev.contain), calling lseek(whence 4444), which nothing else
calls.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kernelkit import (
    Cgroups,
    Env,
    binary_copies,
    kernel_marks,
    run_in_cgroup,
    skip_reason,
)
from test_programs_syscalls import LSEEK_4444, PYTHON, tp_policy
from test_tasksel_on_kernel import KILLED_CHILD, lseek_kill

from tpfilter_dev import contain

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)

POLICY_ID = 52
REAL_PYTHON = os.path.realpath(PYTHON)  # /usr/bin/python3.11: what exe_file names


@pytest.fixture
def cg(loaded: Env, cgroups: Cgroups) -> Path:
    path, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    return path


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return binary_copies(tmp_path_factory.mktemp("tpf-binaries"))


def load(env: Env, name: str, *binaries: dict[str, Any]) -> None:
    policy = lseek_kill(name, matchBinaries=list(binaries))
    status = env.manager.sync([(policy, POLICY_ID)])[name]
    assert status.state == "loaded", status


def lseek(cgroup: Path, python: str, wrapper: Sequence[str] = ()) -> int:
    """lseek(whence 4444) by ``python``, started through ``wrapper``, in the container;
    the exit status (-9: killed; a shell's status for its child killed: 137)."""
    argv = contain.argv(cgroup, [*wrapper, python, "-S", "-c", LSEEK_4444])
    return subprocess.run(argv, timeout=60).returncode


def test_in_and_notin_name_the_executable(loaded: Env, cg: Path, copies: dict[str, str]) -> None:
    load(loaded, "bin-in", {"operator": "In", "values": ["/nowhere", REAL_PYTHON]})
    assert lseek(cg, REAL_PYTHON) == -9
    assert lseek(cg, PYTHON) == -9  # through the symlink: exe_file is its target
    assert lseek(cg, copies["py"]) == 0
    load(loaded, "bin-notin", {"operator": "NotIn", "values": [REAL_PYTHON]})
    assert lseek(cg, REAL_PYTHON) == 0
    assert lseek(cg, copies["py"]) == -9


def test_prefix_postfix_and_their_negations(loaded: Env, cg: Path, copies: dict[str, str]) -> None:
    copy_dir = os.path.dirname(copies["py"]) + "/"
    node_dir = os.path.dirname(REAL_PYTHON) + "/"  # /usr/bin/
    cases = [
        ("Prefix", [copy_dir], (0, -9)),
        ("Prefix", ["/nowhere/", node_dir], (-9, 0)),  # values ORed
        ("Prefix", [node_dir, "/usr/"], (-9, 0)),  # nested prefixes (the trie's closure)
        ("NotPrefix", [copy_dir], (-9, 0)),
        ("Postfix", ["-py-copy"], (0, -9)),
        ("Postfix", [os.path.basename(REAL_PYTHON), "/nowhere"], (-9, 0)),
        ("NotPostfix", ["-py-copy"], (-9, 0)),
        ("NotPostfix", ["/nowhere"], (-9, -9)),
    ]
    for i, (operator, values, (real, copy)) in enumerate(cases):
        load(loaded, f"bin-{operator.lower()}-{i}", {"operator": operator, "values": values})
        got = lseek(cg, REAL_PYTHON), lseek(cg, copies["py"])
        assert got == (real, copy), (operator, values)


def test_follow_children_reaches_children_and_grandchildren(
    loaded: Env, cg: Path, copies: dict[str, str]
) -> None:
    sh = copies["sh"]
    child = [sh, "-c", '"$@"; exit $?', "sh"]  # the copy of dash runs python as its child
    grandchild = [sh, "-c", '/bin/sh -c \'"$@"; exit $?\' sh "$@"; exit $?', "sh"]
    entry = {"operator": "In", "values": [sh]}
    load(loaded, "bin-follow", {**entry, "followChildren": True})
    assert lseek(cg, REAL_PYTHON, child) == KILLED_CHILD
    assert lseek(cg, REAL_PYTHON, grandchild) == KILLED_CHILD
    assert lseek(cg, REAL_PYTHON) == 0  # no copy of dash among its ancestors
    load(loaded, "bin-no-follow", entry)  # the process's own binary only: python
    assert lseek(cg, REAL_PYTHON, child) == 0
    load(loaded, "bin-notin-follow", {**entry, "operator": "NotIn", "followChildren": True})
    assert lseek(cg, REAL_PYTHON, child) == 0
    assert lseek(cg, REAL_PYTHON) == -9


def exec_kill(env: Env, name: str, binaries: dict[str, Any]) -> None:
    """Sigkill on sched_process_exec, for exec'd paths under the test's own directory
    only (matchArgs Prefix), so that nothing else on the machine can be killed."""
    tp = {
        "subsystem": "sched",
        "event": "sched_process_exec",
        "args": [{"index": 4, "type": "string"}],
        "selectors": [
            {
                "matchArgs": [{"index": 4, "operator": "Prefix", "values": [f"{env.root}/"]}],
                "matchBinaries": [binaries],
                "matchActions": [{"action": "Sigkill"}],
            }
        ],
    }
    policy = tp_policy(name, tp)
    status = env.manager.sync([(policy, POLICY_ID)])[name]
    assert status.state == "loaded", status


def test_exec_hook_operators_and_follow_children(
    loaded: Env, cg: Path, copies: dict[str, str]
) -> None:
    """On sched_process_exec the binary is the exec'd filename (the other operators and
    followChildren take the binary stage there too); its ancestors' are their executables."""
    true_ok, true_denied = loaded.root / "true-ok", loaded.root / "true-denied"
    for path in (true_ok, true_denied):
        shutil.copy("/usr/bin/true", path)
    exec_kill(loaded, "exec-postfix", {"operator": "Postfix", "values": ["-denied"]})
    assert run_in_cgroup([true_denied], cg) == -9
    assert run_in_cgroup([true_ok], cg) == 0
    exec_kill(loaded, "exec-notprefix", {"operator": "NotPrefix", "values": [str(true_ok)]})
    assert run_in_cgroup([true_denied], cg) == -9
    assert run_in_cgroup([true_ok], cg) == 0
    follow = {"operator": "In", "values": [copies["sh"]], "followChildren": True}
    exec_kill(loaded, "exec-follow", follow)  # the copy of dash is outside loaded.root
    assert run_in_cgroup([copies["sh"], "-c", '"$@"; exit $?', "sh", true_ok], cg) == KILLED_CHILD
    assert run_in_cgroup([true_ok], cg) == 0
