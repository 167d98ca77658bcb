"""Processes that only enter a container's cgroup from the node are not the container's:
policy_filter_check() on the real kernel, with the engine's maps.

A container's own processes run in the pod's PID namespace (the runtime makes it; `kubectl
exec` joins it); the runtime and host tools that write themselves into a container's
cgroup stay in the node's. Pods with hostPID: true are the exception the engine records
(reserved ID HOST_PID_PODS_ID). Processes here are started by tpfilter_dev.contain exactly
that way: ``new`` (a container start), ``join`` (`kubectl exec`), ``node`` (the runtime, or
any process of a hostPID pod). tests/kernel/bpf/check_exec.c records the answers;
kill_exec.c SIGKILLs an exec to which policy 1 applies.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from kernelkit import (
    CHECK_EXEC,
    KILL_EXEC,
    CgroupTree,
    Programs,
    StaticFinder,
    cluster_policy,
    expect,
    kernel_marks,
    observe,
    run_in_cgroup,
    running_pod,
    skip_reason,
)

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.engine import Engine
from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID
from tpfilter.interfaces import HOST_MARKER
from tpfilter_dev import contain

pytestmark = kernel_marks(
    skip_reason(
        "load BPF programs, pin maps and create cgroups",
        cgroup2=True,
        hierarchy_root=True,
        bcc=True,
    )
)


SELECTS_A_AND_H = {
    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "h"]}]}
}


def test_the_node_entering_a_container_is_not_the_container(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    a = cgroup_tree.make("kubepods/pod-a/ctr-a")  # selected
    h = cgroup_tree.make("kubepods/pod-h/ctr-h")  # selected, hostPID: true
    b = cgroup_tree.make("kubepods/pod-b/ctr-b")  # selected by nothing
    pods = [
        running_pod("a", "c://a", labels={"app": "a"}),
        running_pod("h", "c://h", labels={"app": "h"}, host_pid=True),
        running_pod("b", "c://b", labels={"app": "b"}),
    ]
    finder = StaticFinder({"c://a": a[1], "c://h": h[1], "c://b": b[1]})
    # IDs 1, 2 (check_exec.c answers for IDs 0..4)
    selects = cluster_policy("a-and-h", SELECTS_A_AND_H)
    host_only = cluster_policy("host-only", {"hostSelector": {}})

    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        engine = Engine(finder=finder, maps=maps)
        assert engine.reconcile([selects, host_only], pods).converged
        held = {pid: inner.cgroup_ids for pid, inner in maps.read_all().items()}
        assert held == {
            1: {a[1], h[1]},
            2: {HOST_MARKER},
            ALL_PODS_ID: {a[1], h[1], b[1]},
            HOST_PID_PODS_ID: {h[1]},
        }
        bpf = programs.load(CHECK_EXEC, pin_dir)

        # A container's own processes: started in its namespace, or `kubectl exec`ed.
        assert observe(bpf, a, pid_ns="new") == [expect({1})]
        assert observe(bpf, a, pid_ns="new", nested=("escaped", "deeper")) == [expect({1})]
        # The runtime (or a host tool) in the selected container's cgroup: a host process.
        assert observe(bpf, a, pid_ns="node") == [expect({2})]
        assert observe(bpf, a, pid_ns="node", nested=("child",)) == [expect({2})]
        # A hostPID pod's processes are in the node's namespace and are its own.
        assert observe(bpf, h, pid_ns="node") == [expect({1})]
        assert observe(bpf, h, pid_ns="new") == [expect({1})]
        # A pod nothing selects: its processes match nothing; the node's in it are host.
        assert observe(bpf, b, pid_ns="new") == [expect(set())]
        assert observe(bpf, b, pid_ns="node") == [expect({2})]
        # A host process outside every pod is host, whatever its namespace.
        host = cgroup_tree.make("system.slice/host.service")
        assert observe(bpf, host, pid_ns="node") == [expect({2})]
        assert observe(bpf, host, pid_ns="new") == [expect({2})]

        # Pod h goes: the hostPID set goes with it (absent means none), and the node's
        # processes in h's cgroup (were it still there) are host processes.
        assert engine.reconcile([selects, host_only], [pods[0], pods[2]]).converged
        assert HOST_PID_PODS_ID not in maps.read_all()
        assert observe(bpf, h, pid_ns="node") == [expect({2})]

        # hostPID pods but no filtered policy: no reserved set at all.
        assert engine.reconcile([], pods).converged
        assert maps.read_all() == {}


def test_without_the_hostpid_set_hostpid_processes_count_as_host(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    """The set is what makes a hostPID pod's processes its own: the test can fail."""
    h = cgroup_tree.make("kubepods/pod-h/ctr-h")
    pods = [running_pod("h", "c://h", labels={"app": "h"}, host_pid=True)]
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        engine = Engine(finder=StaticFinder({"c://h": h[1]}), maps=maps)
        assert engine.reconcile([cluster_policy("a-and-h", SELECTS_A_AND_H)], pods).converged
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, h, pid_ns="node") == [expect({1})]
        maps.delete(HOST_PID_PODS_ID)
        assert observe(bpf, h, pid_ns="node") == [expect(set())]
        assert observe(bpf, h, pid_ns="new") == [expect({1})]


def test_sigkill_spares_the_runtime_and_kills_the_container(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    """kill_exec.c SIGKILLs execs policy 1 applies to: a container start and a `kubectl
    exec` in the selected container die; the runtime's exec in its cgroup does not."""
    a = cgroup_tree.make("kubepods/pod-a/ctr-a")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a[1]}, max_entries=8)
        programs.load(KILL_EXEC, pin_dir)
        assert run_in_cgroup(["/bin/true"], a[0], pid_ns="node") == 0
        assert run_in_cgroup(["/bin/true"], a[0], ("child",), pid_ns="node") == 0
        assert run_in_cgroup(["/bin/true"], a[0], pid_ns="new") == -9
        assert run_in_cgroup(["/bin/true"], a[0], ("child",), pid_ns="new") == -9

        # `kubectl exec` into a running container joins its PID namespace: killed too.
        # The container's first process is a shell that was exec'd before the map held
        # the container: it says "up" once it runs its own code (so its exec, tracepoint
        # included, is over; its new command line shows a little earlier) and then waits
        # on stdin without exec'ing anything more.
        maps.delete(1)
        shell = ["/bin/sh", "-c", "echo up; read line"]
        with subprocess.Popen(
            contain.argv(a[0], shell), stdin=subprocess.PIPE, stdout=subprocess.PIPE
        ) as container:
            try:
                assert container.stdout is not None
                assert container.stdout.readline() == b"up\n"
                maps.install(1, {a[1]}, max_entries=8)
                assert run_in_cgroup(["/bin/true"], a[0], pid_ns="join") == -9
                # The container itself is left alone: it reads its line and exits 0 (a
                # look at poll() right away would pass even if it were dying).
                container.communicate(b"done\n", timeout=30)
                assert container.returncode == 0
            finally:
                container.kill()
