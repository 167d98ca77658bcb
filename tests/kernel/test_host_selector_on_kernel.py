"""hostSelector {} on the real kernel: the engine's maps read by policy_filter_check().

The engine (with the real pinned maps) is given pods whose containers are scratch cgroups
"in a pod tree" and policies with and without hostSelector {}; tests/kernel/bpf/
check_exec.c records what policy_filter_check() answers for processes exec'ed in each
cgroup: a host process (a cgroup outside every pod container, and the root cgroup), a
selected pod's container, a container of a pod nothing selects, and child cgroups of each.
"""

from __future__ import annotations

from pathlib import Path

from kernelkit import (
    CHECK_EXEC,
    CgroupTree,
    Programs,
    StaticFinder,
    cgroup_id,
    cluster_policy,
    expect,
    kernel_marks,
    observe,
    running_pod,
    skip_reason,
)

from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.engine import Engine
from tpfilter.ids import ALL_PODS_ID
from tpfilter.interfaces import HOST_MARKER

pytestmark = kernel_marks(
    skip_reason(
        "load BPF programs, pin maps and create cgroups",
        cgroup2=True,
        hierarchy_root=True,
        bcc=True,
    )
)


def test_host_selector_matches_host_processes_and_not_unselected_pods(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    selected = cgroup_tree.make("kubepods/pod-a/ctr-a")
    unselected = cgroup_tree.make("kubepods/pod-b/ctr-b")
    selected_child = cgroup_tree.make("kubepods/pod-a/ctr-a/child/grandchild")
    unselected_child = cgroup_tree.make("kubepods/pod-b/ctr-b/child")
    host = cgroup_tree.make("system.slice/host.service")
    host_child = cgroup_tree.make("system.slice/host.service/sub")
    root = (cgroup_tree.mount, cgroup_id(cgroup_tree.mount))  # the hierarchy's root

    pods = [
        running_pod("a", "containerd://a", labels={"app": "a"}),
        running_pod("b", "containerd://b", labels={"app": "b"}),
    ]
    finder = StaticFinder({"containerd://a": selected[1], "containerd://b": unselected[1]})
    # Allocated in this order: 1, 2, 3 (check_exec.c answers for IDs 0..4).
    host_and_a = cluster_policy(
        "host-and-a", {"podSelector": {"matchLabels": {"app": "a"}}, "hostSelector": {}}
    )
    host_only = cluster_policy("host-only", {"hostSelector": {}})
    only_a = cluster_policy("only-a", {"podSelector": {"matchLabels": {"app": "a"}}})

    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        engine = Engine(finder=finder, maps=maps)
        result = engine.reconcile([host_and_a, host_only, only_a], pods)
        assert result.converged, result
        assert [engine.policy_id(p.uid) for p in (host_and_a, host_only, only_a)] == [1, 2, 3]
        held = {pid: inner.cgroup_ids for pid, inner in maps.read_all().items()}
        assert held == {
            1: {selected[1], HOST_MARKER},
            2: {HOST_MARKER},
            3: {selected[1]},
            ALL_PODS_ID: {selected[1], unselected[1]},
        }

        bpf = programs.load(CHECK_EXEC, pin_dir)
        got = observe(
            bpf, host, host_child, root, selected, selected_child, unselected, unselected_child
        )
        on_host, on_host_child, on_root, in_a, in_a_child, in_b, in_b_child = got
        assert on_host == on_host_child == on_root == expect({1, 2})
        assert in_a == in_a_child == expect({1, 3})
        assert in_b == in_b_child == expect(set())

        # Pod b ends: its cgroup (were it still there) is no pod container any more.
        engine.reconcile([host_and_a, host_only, only_a], pods[:1])
        assert maps.read_all()[ALL_PODS_ID].cgroup_ids == {selected[1]}
        (in_b,) = observe(bpf, unselected)
        assert in_b == expect({1, 2})

        # Without the all-pods set a host policy fails closed: only its pods match.
        maps.delete(ALL_PODS_ID)
        on_host, in_a = observe(bpf, host, selected)
        assert on_host == expect(set())
        assert in_a == expect({1, 3})

        # No hostSelector policy left: the reserved entry is not kept.
        engine.check_drift()
        engine.reconcile([only_a], pods[:1])
        assert set(maps.read_all()) == {3}
        on_host, in_a = observe(bpf, host, selected)
        assert on_host == expect(set())
        assert in_a == expect({3})
