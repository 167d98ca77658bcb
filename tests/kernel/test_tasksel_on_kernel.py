"""Task selectors on the real kernel, on a tracepoint (syscalls/sys_enter_lseek):
matchPIDs, matchNamespaces (inode numbers and host_ns) and matchCapabilities, each seen
to kill the process it names and to spare the one it does not (so an ignored or an
inverted filter fails the test).

Every process runs in the selected cgroup as a container's does (tpfilter_dev.contain),
started through ``unshare``/``nsenter``/``setpriv`` to give it the namespaces and
capabilities the test needs; the selector also needs whence 4444 (never used by normal
programs), so only the test's own calls can match. Inode numbers and PIDs are read in the
test from the processes it started, never written down.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, kernel_marks, skip_reason
from test_programs_syscalls import LSEEK_4444, PYTHON, lseek_policy

from tpfilter.models import Policy
from tpfilter_dev import contain

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)

POLICY_ID = 51


def lseek_kill(name: str, **filters: Any) -> Policy:
    return lseek_policy(name, actions=[{"action": "Sigkill"}], **filters)


@pytest.fixture
def cg(loaded: Env, cgroups: Cgroups) -> Path:
    path, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    return path


def load(env: Env, name: str, **filters: Any) -> None:
    status = env.manager.sync([(lseek_kill(name, **filters), POLICY_ID)])[name]
    assert status.state == "loaded", status


def lseek(cgroup: Path, wrapper: Sequence[str] = (), pid_ns: str = "new") -> int:
    """lseek(whence 4444) from a process of the container, started through ``wrapper``;
    its exit status (-9: killed)."""
    argv = contain.argv(cgroup, [*wrapper, PYTHON, "-S", "-c", LSEEK_4444], pid_ns=pid_ns)
    return subprocess.run(argv, timeout=60).returncode


def ns_inode(pid: int, ns: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{ns}").st_ino


@pytest.fixture
def uts_holder() -> Iterator[int]:
    """A process in a new UTS namespace, to enter (its inode is that namespace's)."""
    proc = subprocess.Popen(["unshare", "--uts", "sleep", "120"])
    try:
        for _ in range(200):
            if ns_inode(proc.pid, "uts") != ns_inode(os.getpid(), "uts"):
                break
            subprocess.run(["sleep", "0.01"], check=True)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_match_namespaces_by_inode(loaded: Env, cg: Path, uts_holder: int) -> None:
    inode = ns_inode(uts_holder, "uts")
    assert inode != ns_inode(os.getpid(), "uts")
    enter = ["nsenter", "-t", str(uts_holder), "-u"]
    load(
        loaded,
        "uts-in",
        matchNamespaces=[{"namespace": "Uts", "operator": "In", "values": [str(inode)]}],
    )
    assert lseek(cg, enter) == -9
    assert lseek(cg, ["unshare", "--uts"]) == 0  # another new UTS namespace
    assert lseek(cg) == 0  # the node's
    load(
        loaded,
        "uts-notin",
        matchNamespaces=[{"namespace": "Uts", "operator": "NotIn", "values": [str(inode)]}],
    )
    assert lseek(cg, enter) == 0
    assert lseek(cg, ["unshare", "--uts"]) == -9
    assert lseek(cg) == -9


def test_match_namespaces_host_ns(loaded: Env, cg: Path) -> None:
    load(
        loaded,
        "net-host",
        matchNamespaces=[{"namespace": "Net", "operator": "In", "values": ["host_ns"]}],
    )
    assert lseek(cg) == -9  # the node's network namespace
    assert lseek(cg, ["unshare", "--net"]) == 0
    load(
        loaded,
        "net-not-host",
        matchNamespaces=[{"namespace": "Net", "operator": "NotIn", "values": ["host_ns"]}],
    )
    assert lseek(cg) == 0
    assert lseek(cg, ["unshare", "--net"]) == -9
    # Pid: a container's process is in a PID namespace of its own (a process of the node's
    # in the container's cgroup is the runtime's: no policy applies to it, policy_filter.h)
    pid_host = {"namespace": "Pid", "values": ["host_ns"]}
    load(loaded, "pid-host", matchNamespaces=[{**pid_host, "operator": "In"}])
    assert lseek(cg) == 0
    load(loaded, "pid-not-host", matchNamespaces=[{**pid_host, "operator": "NotIn"}])
    assert lseek(cg) == -9
    # two entries are ANDed: the node's mount namespace and not the node's UTS namespace
    load(
        loaded,
        "mnt-and-uts",
        matchNamespaces=[
            {"namespace": "Mnt", "operator": "In", "values": ["host_ns"]},
            {"namespace": "Uts", "operator": "NotIn", "values": ["host_ns"]},
        ],
    )
    assert lseek(cg, ["unshare", "--uts"]) == -9
    assert lseek(cg, ["unshare", "--uts", "--mount"]) == 0
    assert lseek(cg) == 0


# The container's PID 1 (contain execs the command) forks the command: its PID is 2.
FORKED = ["/bin/sh", "-c", '"$@"; exit $?', "sh"]
KILLED_CHILD = 128 + 9  # the shell's status for a child killed by SIGKILL


def test_match_pids_in_its_own_pid_namespace(loaded: Env, cg: Path) -> None:
    nspid_1 = {"values": [1], "isNamespacePID": True}
    load(loaded, "nspid-1", matchPIDs=[{**nspid_1, "operator": "In"}])
    assert lseek(cg) == -9  # PID 1 of the container's namespace
    assert lseek(cg, FORKED) == 0  # PID 2 there
    load(loaded, "nspid-not-1", matchPIDs=[{**nspid_1, "operator": "NotIn"}])
    assert lseek(cg) == 0
    assert lseek(cg, FORKED) == KILLED_CHILD


# /proc is the node's: /proc/self names the process by its PID in the node's namespace
WAIT = "import os, sys\nprint(os.readlink('/proc/self'), flush=True)\nsys.stdin.readline()\n"


def waiting(cgroup: Path, then: str = LSEEK_4444) -> tuple[subprocess.Popen[str], int]:
    """A process of the container that prints its PID in the node's PID namespace and
    runs ``then`` (calls lseek(4444)) when told to."""
    argv = contain.argv(cgroup, [PYTHON, "-S", "-c", WAIT + then])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def go(proc: subprocess.Popen[str]) -> int:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.close()
    return proc.wait(timeout=60)


@pytest.mark.parametrize("operator", ["In", "NotIn"])
def test_match_pids_on_the_node(loaded: Env, cg: Path, operator: str) -> None:
    (a, pid_a), (b, pid_b) = waiting(cg), waiting(cg)
    try:
        assert pid_a != pid_b
        load(
            loaded, f"pid-{operator.lower()}", matchPIDs=[{"operator": operator, "values": [pid_a]}]
        )
        killed = -9, 0
        assert (go(a), go(b)) == (killed if operator == "In" else killed[::-1])
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


NO_SYS_ADMIN = ["setpriv", "--bounding-set=-sys_admin"]  # root without CAP_SYS_ADMIN


@pytest.mark.parametrize("cap_set", ["Effective", "Permitted"])
def test_match_capabilities_effective_and_permitted(loaded: Env, cg: Path, cap_set: str) -> None:
    cap = {"type": cap_set, "values": ["CAP_SYS_ADMIN", "CAP_WAKE_ALARM"]}
    load(loaded, f"{cap_set.lower()}-in", matchCapabilities=[{**cap, "operator": "In"}])
    assert lseek(cg) == -9  # root: every capability
    # In is "any of": without CAP_SYS_ADMIN it still has CAP_WAKE_ALARM
    assert lseek(cg, NO_SYS_ADMIN) == -9
    assert lseek(cg, ["setpriv", "--bounding-set=-sys_admin,-wake_alarm"]) == 0
    load(loaded, f"{cap_set.lower()}-notin", matchCapabilities=[{**cap, "operator": "NotIn"}])
    assert lseek(cg) == 0
    assert lseek(cg, NO_SYS_ADMIN) == 0  # NotIn is "none of"
    assert lseek(cg, ["setpriv", "--bounding-set=-sys_admin,-wake_alarm"]) == -9


def test_match_capabilities_inheritable(loaded: Env, cg: Path) -> None:
    load(
        loaded,
        "inh",
        matchCapabilities=[{"type": "Inheritable", "operator": "In", "values": ["CAP_NET_RAW"]}],
    )
    assert lseek(cg, ["setpriv", "--inh-caps=+net_raw"]) == -9
    assert lseek(cg, ["setpriv", "--inh-caps=+chown"]) == 0
    assert lseek(cg) == 0  # root's inheritable set is empty


def test_namespace_capability_only_outside_the_node_user_namespace(loaded: Env, cg: Path) -> None:
    cap = {"operator": "In", "values": ["CAP_SYS_ADMIN"]}
    load(loaded, "nscap", matchCapabilities=[{**cap, "isNamespaceCapability": True}])
    assert lseek(cg) == 0  # CAP_SYS_ADMIN, but in the node's user namespace
    assert lseek(cg, ["unshare", "--user", "--map-root-user"]) == -9
    load(loaded, "cap", matchCapabilities=[{**cap, "isNamespaceCapability": False}])
    assert lseek(cg) == -9


# A child of the waiting process makes the call; the parent exits 9 if it was killed.
WAIT_THEN_CHILD = (
    "import os, sys\nprint(os.readlink('/proc/self'), flush=True)\nsys.stdin.readline()\n"
    "pid = os.fork()\nif pid == 0:\n"
    + "".join("    " + line + "\n" for line in LSEEK_4444.splitlines())
    + "    os._exit(0)\n_, status = os.waitpid(pid, 0)\nsys.exit(os.WTERMSIG(status) "
    "if os.WIFSIGNALED(status) else 0)\n"
)


def waiting_parent(cgroup: Path) -> tuple[subprocess.Popen[str], int]:
    argv = contain.argv(cgroup, [PYTHON, "-S", "-c", WAIT_THEN_CHILD])
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


@pytest.mark.parametrize(
    ("operator", "follow", "child_of_a", "child_of_b"),
    [
        ("In", True, 9, 0),  # a descendant of A
        ("In", False, 0, 0),  # without followForks, only A itself
        ("NotIn", True, 0, 9),
        ("NotIn", False, 9, 9),  # neither child is A
    ],
)
def test_match_pids_follow_forks(
    loaded: Env, cg: Path, operator: str, follow: bool, child_of_a: int, child_of_b: int
) -> None:
    (a, pid_a), (b, _) = waiting_parent(cg), waiting_parent(cg)
    try:
        pids = {"operator": operator, "values": [pid_a], "followForks": follow}
        load(loaded, f"follow-{operator.lower()}-{follow}", matchPIDs=[pids])
        assert (go(a), go(b)) == (child_of_a, child_of_b)
    finally:
        for p in (a, b):
            p.kill()
            p.wait()


def test_follow_forks_in_the_namespace_is_the_tetragon_kubectl_exec_example(
    loaded: Env, cg: Path
) -> None:
    """Tetragon's selectors page: ``NotIn [0, 1]``, isNamespacePID, followForks: true
    catches a process that is not a descendant of the container's PID 1, e.g. one
    started by `kubectl exec` (``join``: its parent, the runtime, is outside the
    container's PID namespace, which ends the walk there)."""
    holder = subprocess.Popen(contain.argv(cg, ["sleep", "120"]))
    try:
        contain.wait_started(cg)
        nspid = {"values": [0, 1], "isNamespacePID": True, "followForks": True}
        load(loaded, "exec-not-from-1", matchPIDs=[{**nspid, "operator": "NotIn"}])
        assert lseek(cg, pid_ns="join") == -9  # `kubectl exec`
        assert lseek(cg, FORKED) == 0  # a descendant of the container's PID 1
        assert lseek(cg) == 0  # PID 1 itself
        load(loaded, "from-1", matchPIDs=[{**nspid, "operator": "In"}])
        assert lseek(cg, pid_ns="join") == 0
        assert lseek(cg, FORKED) == KILLED_CHILD
    finally:
        holder.kill()
        holder.wait()
