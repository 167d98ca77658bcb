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
from typing import Any

from kernelkit import (
    CHECK_EXEC,
    KILL_EXEC,
    CgroupTree,
    Programs,
    answers,
    expect,
    kernel_marks,
    run_in_cgroup,
    skip_reason,
)

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.engine import Engine
from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID
from tpfilter.interfaces import HOST_MARKER, ContainerRef
from tpfilter.models import Policy, parse_policy
from tpfilter.pods import Pod, parse_pod
from tpfilter_dev import contain

pytestmark = kernel_marks(
    skip_reason(
        "load BPF programs, pin maps and create cgroups",
        cgroup2=True,
        hierarchy_root=True,
        bcc=True,
    )
)


class DictFinder:
    def __init__(self, cgroups: dict[str, int]) -> None:
        self.cgroups = cgroups

    def cgroup_id(self, container: ContainerRef) -> int | None:
        return self.cgroups.get(container.container_id)

    def forget(self, container: ContainerRef) -> None:
        pass


def policy(name: str, spec: dict[str, Any]) -> Policy:
    return parse_policy(
        {"kind": "TracingPolicy", "metadata": {"name": name, "uid": f"uid-{name}"}, "spec": spec}
    )


def pod(name: str, container_id: str, *, host_pid: bool = False) -> Pod:
    return parse_pod(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": f"pod-{name}",
                "labels": {"app": name},
            },
            "spec": {"hostPID": host_pid},
            "status": {
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {
                        "name": "main",
                        "image": "busybox:1",
                        "containerID": container_id,
                        "state": {"running": {}},
                    }
                ],
            },
        }
    )


def observe(
    bpf: Any, cgroup: tuple[Path, int], pid_ns: str, nested: tuple[str, ...] = ()
) -> dict[int, bool]:
    """policy_filter_check()'s answers for one exec of /bin/true in ``cgroup``/``nested``."""
    bpf[b"check_results"].clear()
    assert run_in_cgroup(["/bin/true"], cgroup[0], nested, pid_ns=pid_ns) == 0
    return answers(bpf, cgroup[1] if not nested else _id(cgroup[0].joinpath(*nested)))


def _id(path: Path) -> int:
    return path.stat().st_ino


SELECTS_A_AND_H = {
    "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "h"]}]}
}


def test_the_node_entering_a_container_is_not_the_container(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    a = cgroup_tree.make("kubepods/pod-a/ctr-a")  # selected
    h = cgroup_tree.make("kubepods/pod-h/ctr-h")  # selected, hostPID: true
    b = cgroup_tree.make("kubepods/pod-b/ctr-b")  # selected by nothing
    pods = [pod("a", "c://a"), pod("h", "c://h", host_pid=True), pod("b", "c://b")]
    finder = DictFinder({"c://a": a[1], "c://h": h[1], "c://b": b[1]})
    # IDs 1, 2 (check_exec.c answers for IDs 0..4)
    selects = policy("a-and-h", SELECTS_A_AND_H)
    host_only = policy("host-only", {"hostSelector": {}})

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
        assert observe(bpf, a, "new") == expect({1})
        assert observe(bpf, a, "new", ("escaped", "deeper")) == expect({1})
        # The runtime (or a host tool) in the selected container's cgroup: a host process.
        assert observe(bpf, a, "node") == expect({2})
        assert observe(bpf, a, "node", ("child",)) == expect({2})
        # A hostPID pod's processes are in the node's namespace and are its own.
        assert observe(bpf, h, "node") == expect({1})
        assert observe(bpf, h, "new") == expect({1})
        # A pod nothing selects: its processes match nothing; the node's in it are host.
        assert observe(bpf, b, "new") == expect(set())
        assert observe(bpf, b, "node") == expect({2})
        # A host process outside every pod is host, whatever its namespace.
        host = cgroup_tree.make("system.slice/host.service")
        assert observe(bpf, host, "node") == expect({2})
        assert observe(bpf, host, "new") == expect({2})

        # Pod h goes: the hostPID set goes with it (absent means none), and the node's
        # processes in h's cgroup (were it still there) are host processes.
        assert engine.reconcile([selects, host_only], [pods[0], pods[2]]).converged
        assert HOST_PID_PODS_ID not in maps.read_all()
        assert observe(bpf, h, "node") == expect({2})

        # hostPID pods but no filtered policy: no reserved set at all.
        assert engine.reconcile([], pods).converged
        assert maps.read_all() == {}


def test_without_the_hostpid_set_hostpid_processes_count_as_host(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    """The set is what makes a hostPID pod's processes its own: the test can fail."""
    h = cgroup_tree.make("kubepods/pod-h/ctr-h")
    pods = [pod("h", "c://h", host_pid=True)]
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        engine = Engine(finder=DictFinder({"c://h": h[1]}), maps=maps)
        assert engine.reconcile([policy("a-and-h", SELECTS_A_AND_H)], pods).converged
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, h, "node") == expect({1})
        maps.delete(HOST_PID_PODS_ID)
        assert observe(bpf, h, "node") == expect(set())
        assert observe(bpf, h, "new") == expect({1})


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
        # (The container's first process runs sleep, exec'd before the map held it.)
        maps.delete(1)
        with subprocess.Popen(contain.argv(a[0], ["sleep", "30"])) as container:
            try:
                contain.wait_started(a[0])
                maps.install(1, {a[1]}, max_entries=8)
                assert run_in_cgroup(["/bin/true"], a[0], pid_ns="join") == -9
                assert container.poll() is None  # the container itself is left alone
            finally:
                container.kill()
