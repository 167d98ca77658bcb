"""The engine with its real parts: real cgroups, the real finder, the real pinned maps.

Covers the node agent's reconcile semantics without an API server: pod before policy and
policy before pod, relabel, container restart, pod and policy deletion, growth and shrink
of inner maps (rebuild + swap), an agent restart that adopts the pins and the state file,
and `tpfilter status` reading it all back with the kernel's own memory accounting.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from kernelkit import CgroupTree, cluster_policy, kernel_marks, skip_reason

from tpfilter import bpfsys, mapcost, sizing
from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.cgroups import CgroupFsFinder
from tpfilter.engine import Engine, Limits
from tpfilter.indexmap import INDEX_PIN_NAME, PinnedCandidateIndex
from tpfilter.pods import Pod, parse_pod
from tpfilter.statefile import STATE_FILE
from tpfilter_dev.kubelet import container_cgroup

pytestmark = kernel_marks(skip_reason("create cgroups and BPF maps", cgroup2=True))


class Node:
    """Real cgroup dirs in a scratch tree laid out as kubelet (systemd) + containerd would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pods: dict[str, dict[str, object]] = {}

    def pod(
        self, name: str, labels: dict[str, str], containers: int = 1, namespace: str = "default"
    ) -> dict[str, object]:
        uid = f"{secrets.token_hex(4)}-0000-4000-8000-{secrets.token_hex(6)}"
        statuses = []
        for i in range(containers):
            cid = secrets.token_hex(32)
            container_cgroup(
                self.root,
                driver="systemd",
                runtime="containerd",
                qos="BestEffort",
                pod_uid=uid,
                container_id=cid,
            ).mkdir(parents=True)
            statuses.append(
                {
                    "name": f"c{i}",
                    "image": "busybox",
                    "containerID": f"containerd://{cid}",
                    "state": {"running": {}},
                }
            )
        body = {
            "metadata": {"name": name, "namespace": namespace, "uid": uid, "labels": labels},
            "spec": {"nodeName": "n"},
            "status": {"qosClass": "BestEffort", "containerStatuses": statuses},
        }
        self.pods[name] = body
        return body

    def cgroup_ids(self, *names: str) -> frozenset[int]:
        ids = set()
        for name in names:
            body = self.pods[name]
            for cs in body["status"]["containerStatuses"]:  # type: ignore[index]
                path = container_cgroup(
                    self.root,
                    driver="systemd",
                    runtime="containerd",
                    qos="BestEffort",
                    pod_uid=body["metadata"]["uid"],  # type: ignore[index]
                    container_id=cs["containerID"].split("://")[1],
                )
                ids.add(os.stat(path).st_ino)
        return frozenset(ids)

    def parsed(self) -> list[Pod]:
        return [parse_pod(b) for b in self.pods.values()]


@pytest.fixture
def scratch(cgroup_tree: CgroupTree, pin_dir: Path, tmp_path: Path) -> tuple[Node, Path, Path]:
    """A node in a scratch cgroup, a scratch pin dir and a state file: all removed after."""
    return Node(cgroup_tree.base), pin_dir, tmp_path / STATE_FILE


def engine_for(
    node: Node, pin_dir: Path, state: Path, index: PinnedCandidateIndex | None = None, **limits: int
) -> tuple[Engine, PinnedFilterMaps]:
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    finder = CgroupFsFinder(cgroup_root=node.root)
    engine = Engine(
        finder=finder, maps=maps, state_path=state, limits=Limits(**limits), index=index
    )
    return engine, maps


def held(maps: PinnedFilterMaps, engine: Engine, uid: str) -> frozenset[int]:
    pid = engine.policy_id(uid)
    assert pid is not None
    return maps.read_all()[pid].cgroup_ids


def test_reconcile_follows_pods_and_policies(scratch: tuple[Node, Path, Path]) -> None:
    node, pin_dir, state = scratch
    engine, maps = engine_for(node, pin_dir, state)
    with maps:
        node.pod("early", {"app": "web"})
        web = cluster_policy("web", {"podSelector": {"matchLabels": {"app": "web"}}})
        assert engine.reconcile([web], node.parsed()).converged
        assert held(maps, engine, web.uid) == node.cgroup_ids("early")

        node.pod("late", {"app": "web"}, containers=2)
        node.pod("db", {"app": "db"})
        engine.reconcile([web], node.parsed())
        assert held(maps, engine, web.uid) == node.cgroup_ids("early", "late")

        node.pods["db"]["metadata"]["labels"] = {"app": "web"}  # type: ignore[index]
        del node.pods["early"]
        engine.reconcile([web], node.parsed())
        assert held(maps, engine, web.uid) == node.cgroup_ids("late", "db")

        engine.reconcile([], node.parsed())
        assert maps.read_all() == {}
        assert json.loads(state.read_text())["policies"] == []


def test_inner_maps_grow_and_shrink_to_their_content(scratch: tuple[Node, Path, Path]) -> None:
    node, pin_dir, state = scratch
    engine, maps = engine_for(node, pin_dir, state)
    with maps:
        for i in range(40):
            node.pod(f"p{i}", {"app": "web"})
        web = cluster_policy("web", {"podSelector": {"matchLabels": {"app": "web"}}})
        engine.reconcile([web], node.parsed())
        (usage,) = maps.usage()
        assert usage.entries == 40
        assert usage.max_entries == sizing.target_capacity(40, limit=32768) == 128
        # What this kernel charges a 128-entry reference map holding 40 (never a byte count).
        assert usage.memlock == mapcost.measure(128).bytes(40)
        for i in range(38):
            del node.pods[f"p{i}"]
        engine.reconcile([web], node.parsed())
        (usage,) = maps.usage()
        assert (usage.entries, usage.max_entries) == (2, 8)
        assert held(maps, engine, web.uid) == node.cgroup_ids("p38", "p39")


def test_limit_per_policy_is_a_visible_error(scratch: tuple[Node, Path, Path]) -> None:
    node, pin_dir, state = scratch
    engine, maps = engine_for(node, pin_dir, state, max_cgroups_per_policy=8)
    with maps:
        for i in range(10):
            node.pod(f"p{i}", {"app": "web"})
        web = cluster_policy("web", {"podSelector": {}})
        result = engine.reconcile([web], node.parsed())
        assert not result.converged
        assert "over the limit of 8" in (result.statuses[0].error or "")
        assert len(held(maps, engine, web.uid)) == 8


def test_restart_adopts_pins_and_state_without_rewriting(scratch: tuple[Node, Path, Path]) -> None:
    node, pin_dir, state = scratch
    engine, maps = engine_for(node, pin_dir, state)
    node.pod("a", {"app": "web"})
    web = cluster_policy("web", {"podSelector": {"matchLabels": {"app": "web"}}})
    with maps:
        engine.reconcile([web], node.parsed())
        before = {u.policy_id: u.map_id for u in maps.usage()}
    # A new process: new Engine, new map wrapper, same pins and state file.
    engine2, maps2 = engine_for(node, pin_dir, state)
    with maps2:
        result = engine2.reconcile([web], node.parsed())
        assert result.operations == 0
        assert {u.policy_id: u.map_id for u in maps2.usage()} == before
        # an orphan map (its owner unknown to the state file) is removed
        maps2.install(999, [12345], max_entries=8)
        engine2.check_drift()
        engine2.reconcile([web], node.parsed())
        assert set(maps2.read_all()) == set(before)


def test_status_command_reports_policies_and_kernel_memory(
    scratch: tuple[Node, Path, Path],
) -> None:
    node, pin_dir, state = scratch
    index = PinnedCandidateIndex(pin_dir=pin_dir)
    engine, maps = engine_for(node, pin_dir, state, index)
    for i in range(8):
        node.pod(f"p{i}", {"app": "web"})
    web = cluster_policy("web", {"podSelector": {"matchLabels": {"app": "web"}}})
    with maps, index:
        engine.reconcile([web], node.parsed())
    cmd = [
        sys.executable,
        "-m",
        "tpfilter.cli",
        "status",
        "--pin-dir",
        str(pin_dir),
        "--state-dir",
        str(state.parent),
    ]
    data = json.loads(
        subprocess.run([*cmd, "--json"], check=True, capture_output=True, text=True).stdout
    )
    (row,) = data["policies"]
    assert (row["kind"], row["name"], row["cgroups"], row["max_entries"]) == (
        "TracingPolicy",
        "web",
        8,
        16,
    )
    # The kernel's own figure for that map, checked against a reference map of the same
    # size made now on this kernel (the fixed part differs between machines).
    expected = mapcost.measure(16).bytes(8)
    assert row["memlock"] == expected
    assert frozenset(row["cgroup_ids"]) == node.cgroup_ids(*(f"p{i}" for i in range(8)))
    # The candidate index: 8 cgroups, its memory as the kernel accounts it (both maps).
    slot = bpfsys.obj_get(pin_dir / INDEX_PIN_NAME)
    raw = bpfsys.map_lookup(slot, b"\0\0\0\0", 4)
    assert raw is not None
    inner = bpfsys.map_fd_by_id(int.from_bytes(raw, "little"))
    try:
        index_memlock = bpfsys.memlock(slot) + bpfsys.memlock(inner)
    finally:
        os.close(slot)
        os.close(inner)
    assert data["index"] == {"entries": 8, "max_entries": 16, "memlock": index_memlock}
    table = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    assert "ID  KIND" in table and "web" in table and f"{expected:,} B" in table
    assert (
        "candidate index: 8 cgroups (and host) indexed, max_entries 16, kernel memory "
        f"{index_memlock:,} B" in table
    )
