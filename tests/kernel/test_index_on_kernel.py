"""The candidate index with the real engine, the real programs and hostSelector.

The index only chooses which policies a program evaluates; policy_filter_check() decides.
So every case of README "What the selectors mean" must come out as before once the engine
writes the index: a hostSelector policy reaches host processes (in no pod container, or
entered a container's cgroup from the node's PID namespace), a pod policy its containers'
own processes (a hostPID pod's too), and nothing reaches an unselected pod's container.
Past the per-process bound the newest policy is an error naming the pod.

Every Sigkill policy here also requires the exec'd path to be under this module's
directory (matchArgs Prefix), so nothing else on the machine can be killed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from kernelkit import (
    CgroupTree,
    Env,
    StaticFinder,
    cluster_policy,
    kernel_marks,
    run_in_cgroup,
    running_pod,
    skip_reason,
)

from tpfilter.candidates import INDEX_MAX
from tpfilter.engine import Engine

pytestmark = kernel_marks(
    skip_reason(
        "load BPF programs, pin maps and create cgroups",
        cgroup2=True,
        hierarchy_root=True,
        bcc=True,
    )
)


def kill_spec(root: Path, binary: Path, **selectors: Any) -> dict[str, Any]:
    return {
        **selectors,
        "tracepoints": [
            {
                "subsystem": "sched",
                "event": "sched_process_exec",
                "args": [{"index": 4, "type": "string"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 4, "operator": "Prefix", "values": [f"{root}/"]}],
                        "matchBinaries": [{"operator": "In", "values": [str(binary)]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ],
    }


def test_index_keeps_host_pod_and_runtime_semantics(loaded: Env, cgroup_tree: CgroupTree) -> None:
    env = loaded
    ctr_a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
    ctr_b, b_id = cgroup_tree.make("kubepods/pod-b/ctr-b")
    ctr_c, c_id = cgroup_tree.make("kubepods/pod-c/ctr-c")
    bin_h, bin_a = env.root / "idx-host", env.root / "idx-a"
    for b in (bin_h, bin_a):
        shutil.copy("/usr/bin/true", b)
    pods = [
        running_pod("a", "containerd://a", labels={"app": "a"}),
        running_pod("b", "containerd://b", labels={"app": "b"}),
        running_pod("c", "containerd://c", labels={"app": "a"}, host_pid=True),
    ]
    finder = StaticFinder({"containerd://a": a_id, "containerd://b": b_id, "containerd://c": c_id})
    host_and_a = cluster_policy(
        "idx-host",
        kill_spec(env.root, bin_h, podSelector={"matchLabels": {"app": "a"}}, hostSelector={}),
    )
    only_a = cluster_policy(
        "idx-a", kill_spec(env.root, bin_a, podSelector={"matchLabels": {"app": "a"}})
    )
    engine = Engine(finder=finder, maps=env.maps.maps, index=env.maps.index)
    result = engine.reconcile([host_and_a, only_a], pods)
    assert result.converged, result
    statuses = env.manager.sync([(p, engine.policy_id(p.uid)) for p in (host_and_a, only_a)])
    assert {s.state for s in statuses.values()} == {"loaded"}, statuses

    def runs(binary: Path, cgroup: Path | None, pid_ns: str = "new") -> int:
        return run_in_cgroup([binary], cgroup, pid_ns=pid_ns)

    # host process (the test's own cgroup): only the hostSelector policy
    assert (runs(bin_h, None), runs(bin_a, None)) == (-9, 0)
    # the selected pod's own process, and in a child cgroup it made: both policies
    assert (runs(bin_h, ctr_a), runs(bin_a, ctr_a)) == (-9, -9)
    assert run_in_cgroup([bin_a], ctr_a, nested=["child"]) == -9
    # an unselected pod's own process: neither
    assert (runs(bin_h, ctr_b), runs(bin_a, ctr_b)) == (0, 0)
    # the runtime entering a container's cgroup from the node: a host process
    assert (runs(bin_h, ctr_b, "node"), runs(bin_a, ctr_b, "node")) == (-9, 0)
    assert (runs(bin_h, ctr_a, "node"), runs(bin_a, ctr_a, "node")) == (-9, 0)
    # a hostPID pod's own process (the node's PID namespace): its pod's policies
    assert runs(bin_a, ctr_c, "node") == -9

    # Past the bound: INDEX_MAX more policies on pod a; the newest is an error naming it.
    more = [
        cluster_policy(f"idx-more-{i}", {"podSelector": {"matchLabels": {"app": "a"}}})
        for i in range(INDEX_MAX - 1)
    ]
    result = engine.reconcile([host_and_a, only_a, *more], pods)
    errors = {s.key.name: s.error for s in result.statuses if s.error}
    assert list(errors) == [f"idx-more-{INDEX_MAX - 2}"], errors
    assert (
        "ns/a" in errors[f"idx-more-{INDEX_MAX - 2}"]
        and "ns/c" in errors[f"idx-more-{INDEX_MAX - 2}"]
    )
    # The policies within the bound still enforce.
    assert runs(bin_a, ctr_a) == -9

    # Removing the extra policies trims the index; the two policies still work.
    engine.reconcile([host_and_a, only_a], pods)
    assert (runs(bin_h, None), runs(bin_a, ctr_a), runs(bin_a, ctr_b)) == (-9, -9, 0)
    env.manager.sync([])
    engine.reconcile([], pods)
    assert env.maps.index.read_all() == {}


def test_programs_first_then_the_agent_adopts_their_index(
    pin_dir: Path, cgroup_tree: CgroupTree, tmp_path: Path
) -> None:
    """Either start order works: here the programs create and pin the (empty) index and
    the filter maps, and the agent's side adopts both and fills them."""
    import io

    from tpfilter.bpfmaps import PinnedFilterMaps
    from tpfilter.indexmap import INDEX_PIN_NAME, PinnedCandidateIndex
    from tpfilter.programs import ProgramManager

    root = tmp_path
    manager = ProgramManager(
        pin_dir=pin_dir,
        node_name="n",
        resolve=lambda c: None,
        events_out=io.StringIO(),
        probe_lsm=False,
    )
    try:
        manager.start(events_thread=False)
        assert manager.available and (pin_dir / INDEX_PIN_NAME).exists()
        ctr, ctr_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
        binary = root / "adopted"
        shutil.copy("/usr/bin/true", binary)
        policy = cluster_policy(
            "adopt", kill_spec(root, binary, podSelector={"matchLabels": {"app": "a"}})
        )
        with (
            PinnedFilterMaps(pin_dir=pin_dir) as maps,
            PinnedCandidateIndex(pin_dir=pin_dir) as index,
        ):
            engine = Engine(finder=StaticFinder({"containerd://a": ctr_id}), maps=maps, index=index)
            pods = [running_pod("a", "containerd://a", labels={"app": "a"})]
            assert engine.reconcile([policy], pods).converged
            assert (
                manager.sync([(policy, engine.policy_id(policy.uid))])["uid-adopt"].state
                == "loaded"
            )
            assert run_in_cgroup([binary], ctr) == -9
            assert run_in_cgroup([binary], None) == 0
            manager.sync([])
            engine.reconcile([], pods)
    finally:
        manager.close()
