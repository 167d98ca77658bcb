"""tpfilter_dev.contain, the runtime stand-in the kernel and integration tests start
"container" processes with: it must put them where a runtime would (cgroup, PID
namespace) and report their end faithfully, or those tests test something else.
Real cgroups, real namespaces; root only."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from kernelkit import CgroupTree, cgroup_id, kernel_marks, skip_reason

from tpfilter_dev import contain

pytestmark = kernel_marks(skip_reason("create cgroups and PID namespaces", cgroup2=True))

NODE_PIDNS = os.stat("/proc/self/ns/pid").st_ino

# Prints: its PID as it sees it, its PID namespace's inode, its cgroup v2 ID.
REPORT = ["/bin/sh", "-c", 'echo $$; stat -L -c %i /proc/self/ns/pid; stat -c %i "$1"', "sh"]


def report(cgroup: Path, mode: str, nested: tuple[str, ...] = ()) -> tuple[int, int, int]:
    where = cgroup.joinpath(*nested)
    out = subprocess.run(
        contain.argv(cgroup, [*REPORT, str(where)], pid_ns=mode, nested=nested),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pid, pidns, cg = (int(x) for x in out)
    assert cg == cgroup_id(where)
    return pid, pidns, cg


def test_new_join_and_node_pid_namespaces(cgroup_tree: CgroupTree) -> None:
    ctr, _ = cgroup_tree.make("ctr")
    pid, pidns, _ = report(ctr, "new")
    assert pid == 1 and pidns != NODE_PIDNS  # PID 1 of a namespace of its own
    _, pidns, _ = report(ctr, "node")
    assert pidns == NODE_PIDNS
    assert (ctr / "cgroup.procs").read_text() == ""  # helper and command are gone

    with subprocess.Popen(contain.argv(ctr, ["sleep", "30"])) as container:
        try:
            init = contain.wait_started(ctr)
            assert Path(f"/proc/{init}/cmdline").read_bytes() == b"sleep\x0030\x00"
            target = os.stat(f"/proc/{init}/ns/pid").st_ino
            pid, pidns, _ = report(ctr, "join")
            assert pidns == target and pid != 1  # `kubectl exec`: the container's namespace
        finally:
            container.kill()


def test_nested_moves_the_command_down_before_exec(cgroup_tree: CgroupTree) -> None:
    ctr, _ = cgroup_tree.make("ctr")
    _, pidns, cg = report(ctr, "new", ("a", "b"))
    assert cg == cgroup_id(ctr / "a" / "b") and pidns != NODE_PIDNS


@pytest.mark.parametrize(
    ("mode", "script", "status"),
    [
        ("new", "exit 3", 3),
        ("node", "exit 3", 3),
        ("node", "kill -TERM $$", -15),
        ("node", "kill -KILL $$", -9),
        ("new", "exec sleep 30 & kill -KILL $!; wait $!; exit 5", 5),
    ],
)
def test_the_commands_end_is_reported(
    cgroup_tree: CgroupTree, mode: str, script: str, status: int
) -> None:
    ctr, _ = cgroup_tree.make("ctr")
    command = contain.argv(ctr, ["/bin/sh", "-c", script], pid_ns=mode)
    assert subprocess.run(command, timeout=20).returncode == status


def test_a_missing_command_is_127_and_join_without_a_container_fails(
    cgroup_tree: CgroupTree,
) -> None:
    ctr, _ = cgroup_tree.make("ctr")
    done = subprocess.run(contain.argv(ctr, ["/nonexistent"]), capture_output=True, text=True)
    assert done.returncode == 127 and "/nonexistent" in done.stderr
    done = subprocess.run(contain.argv(ctr, ["/bin/true"], pid_ns="join"), capture_output=True)
    assert done.returncode != 0 and b"no started process" in done.stderr
    with pytest.raises(ValueError, match="pid_ns"):
        contain.argv(ctr, ["/bin/true"], pid_ns="host")
