"""The reconcile engine against in-memory fakes of the cgroup finder and the BPF maps."""

from __future__ import annotations

import itertools
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tpfilter import statefile
from tpfilter.engine import Engine, Limits, ReconcileResult
from tpfilter.interfaces import MapFullError
from tpfilter.models import Policy, parse_policy
from tpfilter.pods import Pod, parse_pod
from unit.fakes import FakeCgroupFinder, FakeFilterMaps

_uids = itertools.count(1)


def mkpolicy(
    name: str, spec: dict[str, Any], *, namespace: str | None = None, uid: str | None = None
) -> Policy:
    kind = "TracingPolicyNamespaced" if namespace else "TracingPolicy"
    metadata: dict[str, Any] = {"name": name, "uid": uid or f"{name}-uid-{next(_uids)}"}
    if namespace:
        metadata["namespace"] = namespace
    return parse_policy({"kind": kind, "metadata": metadata, "spec": spec})


def mkpod(
    name: str,
    labels: dict[str, str],
    containers: dict[str, str],
    *,
    namespace: str = "default",
    image: str = "nginx:1",
    host_pid: bool = False,
) -> Pod:
    """containers: {container name: container ID}."""
    return parse_pod(
        {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": f"pod-{namespace}-{name}",
                "labels": labels,
            },
            "spec": {"hostPID": host_pid},
            "status": {
                "qosClass": "Burstable",
                "containerStatuses": [
                    {"name": c, "image": image, "containerID": cid, "state": {"running": {}}}
                    for c, cid in containers.items()
                ],
            },
        }
    )


def sel(**labels: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": labels}}


@dataclass
class Node:
    state: Path
    cgroups: dict[str, int] = field(default_factory=dict)
    maps: FakeFilterMaps = field(default_factory=FakeFilterMaps)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.finder = FakeCgroupFinder(self.cgroups)
        self.engine = self.new_engine()

    def new_engine(self) -> Engine:
        return Engine(finder=self.finder, maps=self.maps, state_path=self.state, limits=self.limits)

    def restart(self) -> None:
        self.finder = FakeCgroupFinder(self.cgroups)
        self.engine = self.new_engine()

    def reconcile(self, policies: list[Policy], pods: list[Pod]) -> ReconcileResult:
        return self.engine.reconcile(policies, pods)

    def held(self, policy: Policy) -> frozenset[int] | None:
        """What the kernel holds for ``policy`` (None: no ID, or no map)."""
        pid = self.engine.policy_id(policy.uid)
        if pid is None:
            return None
        return self.maps.contents().get(pid)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "state.json")


def add_container(node: Node, cid: str, cgroup: int) -> str:
    node.cgroups[cid] = cgroup
    return cid


# --- ordering of events -----------------------------------------------------------------


def test_pod_before_policy(node: Node) -> None:
    add_container(node, "c://1", 101)
    pod = mkpod("web", {"app": "web"}, {"main": "c://1"})
    pol = mkpolicy("p", sel(app="web"))
    r = node.reconcile([], [pod])
    assert r.operations == 0 and node.maps.inner == {}
    r = node.reconcile([pol], [pod])
    assert r.converged
    assert node.held(pol) == {101}


def test_policy_before_pod(node: Node) -> None:
    pol = mkpolicy("p", sel(app="web"))
    r = node.reconcile([pol], [])
    assert r.converged
    assert node.held(pol) == frozenset()  # filtered, selecting nothing: an empty map
    add_container(node, "c://1", 101)
    pod = mkpod("web", {"app": "web"}, {"main": "c://1"})
    node.reconcile([pol], [pod])
    assert node.held(pol) == {101}


def test_result_independent_of_input_order(tmp_path: Path) -> None:
    pols = [mkpolicy(f"p{i}", sel(app="web"), uid=f"u{i}") for i in range(3)]
    pods = [mkpod(f"w{i}", {"app": "web"}, {"main": f"c://{i}"}) for i in range(4)]
    a = Node(tmp_path / "a.json", {f"c://{i}": 100 + i for i in range(4)})
    b = Node(tmp_path / "b.json", {f"c://{i}": 100 + i for i in range(4)})
    a.reconcile(pols, pods)
    b.reconcile(pols[::-1], pods[::-1])
    for p in pols:
        assert a.held(p) == b.held(p) == {100, 101, 102, 103}


# --- pods changing ----------------------------------------------------------------------


def test_labels_move_into_and_out_of_selector(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pol = mkpolicy("p", sel(app="web"))
    a = mkpod("a", {"app": "web"}, {"main": "c://1"})
    b = mkpod("b", {"app": "db"}, {"main": "c://2"})
    node.reconcile([pol], [a, b])
    assert node.held(pol) == {101}
    b = mkpod("b", {"app": "web"}, {"main": "c://2"})  # relabel into
    node.reconcile([pol], [a, b])
    assert node.held(pol) == {101, 102}
    a = mkpod("a", {"app": "web", "x": "y"}, {"main": "c://1"})  # irrelevant relabel
    node.reconcile([pol], [a, b])
    assert node.held(pol) == {101, 102}
    a = mkpod("a", {}, {"main": "c://1"})  # relabel out
    node.reconcile([pol], [a, b])
    assert node.held(pol) == {102}


def test_container_restart_swaps_cgroup(node: Node) -> None:
    add_container(node, "c://old", 101)
    add_container(node, "c://side", 103)
    pol = mkpolicy("p", sel(app="web"))
    pod = mkpod("a", {"app": "web"}, {"main": "c://old", "side": "c://side"})
    node.reconcile([pol], [pod])
    assert node.held(pol) == {101, 103}
    del node.cgroups["c://old"]
    add_container(node, "c://new", 102)
    pod = mkpod("a", {"app": "web"}, {"main": "c://new", "side": "c://side"})
    r = node.reconcile([pol], [pod])
    assert r.converged
    assert node.held(pol) == {102, 103}
    assert [ref.container_id for ref in node.finder.forgotten] == ["c://old"]


def test_pod_deletion_removes_cgroups_and_forgets(node: Node) -> None:
    for i in (1, 2, 3):
        add_container(node, f"c://{i}", 100 + i)
    pol = mkpolicy("p", {"podSelector": {}})
    a = mkpod("a", {}, {"x": "c://1", "y": "c://2"})
    b = mkpod("b", {}, {"x": "c://3"})
    node.reconcile([pol], [a, b])
    assert node.held(pol) == {101, 102, 103}
    node.reconcile([pol], [b])
    assert node.held(pol) == {103}
    assert {ref.container_id for ref in node.finder.forgotten} == {"c://1", "c://2"}
    node.reconcile([pol], [])
    assert node.held(pol) == frozenset()


def test_container_in_several_policies(node: Node) -> None:
    add_container(node, "c://1", 101)
    pod = mkpod("a", {"app": "web", "tier": "f"}, {"main": "c://1"})
    p1 = mkpolicy("p1", sel(app="web"))
    p2 = mkpolicy("p2", sel(tier="f"))
    p3 = mkpolicy("p3", {}, namespace="default")
    node.reconcile([p1, p2, p3], [pod])
    assert node.held(p1) == node.held(p2) == node.held(p3) == {101}
    ids = {node.engine.policy_id(p.uid) for p in (p1, p2, p3)}
    assert len(ids) == 3 and 0 not in ids and None not in ids
    # the container leaves one policy only
    pod = mkpod("a", {"app": "web"}, {"main": "c://1"})
    node.reconcile([p1, p2, p3], [pod])
    assert node.held(p1) == node.held(p3) == {101}
    assert node.held(p2) == frozenset()
    assert node.finder.forgotten == []  # still wanted by p1, p3


def test_namespaced_policy_only_its_namespace(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pol = mkpolicy("p", sel(app="web"), namespace="prod")
    pods = [
        mkpod("a", {"app": "web"}, {"m": "c://1"}, namespace="prod"),
        mkpod("a", {"app": "web"}, {"m": "c://2"}, namespace="dev"),
    ]
    node.reconcile([pol], pods)
    assert node.held(pol) == {101}


def test_container_selector(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pol = mkpolicy("p", {"containerSelector": {"matchLabels": {"name": "main"}}})
    pod = mkpod("a", {}, {"main": "c://1", "side": "c://2"})
    node.reconcile([pol], [pod])
    assert node.held(pol) == {101}


# --- policies changing ------------------------------------------------------------------


def test_policy_selector_change_keeps_id_and_updates_in_place(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"}), mkpod("b", {"app": "b"}, {"m": "c://2"})]
    pol = mkpolicy("p", sel(app="a"), uid="U")
    node.reconcile([pol], pods)
    pid = node.engine.policy_id("U")
    assert node.held(pol) == {101}
    node.maps.reset_counts()
    changed = mkpolicy("p", sel(app="b"), uid="U")
    r = node.reconcile([changed], pods)
    assert node.engine.policy_id("U") == pid
    assert node.held(changed) == {102}
    assert r.operations == 1
    assert node.maps.calls["update"] == 1 and node.maps.calls["install"] == 0


def test_policy_deletion(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    keep = mkpolicy("keep", sel(app="a"), uid="K")
    gone = mkpolicy("gone", sel(app="a"), uid="G")
    node.reconcile([keep, gone], pods)
    gone_id = node.engine.policy_id("G")
    assert gone_id is not None and gone_id in node.maps.inner
    assert statefile.load(node.state).get("G") is not None

    r = node.reconcile([keep], pods)
    assert r.converged
    assert gone_id not in node.maps.inner  # map deleted
    assert node.engine.policy_id("G") is None  # ID released
    on_disk = statefile.load(node.state)
    assert on_disk.get("G") is None  # state file updated
    assert on_disk.get("K") is not None
    assert node.held(keep) == {101}
    assert node.finder.forgotten == []  # the container is still wanted by keep

    # re-created under the same name: a new policy (new UID), a new, higher ID
    again = mkpolicy("gone", sel(app="a"), uid="G2")
    node.reconcile([keep, again], pods)
    new_id = node.engine.policy_id("G2")
    assert new_id is not None and new_id > gone_id
    assert node.held(again) == {101}


def test_policy_becoming_unfiltered_drops_map(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    pol = mkpolicy("p", sel(app="a"), uid="U")
    node.reconcile([pol], pods)
    assert node.maps.inner
    unfiltered = mkpolicy("p", {"kprobes": []}, uid="U")
    r = node.reconcile([unfiltered], pods)
    assert node.maps.inner == {}
    assert node.engine.policy_id("U") is None
    (status,) = r.statuses
    assert status.policy_id == 0 and status.error is None


def test_unfiltered_policy_has_no_map(node: Node) -> None:
    add_container(node, "c://1", 101)
    pol = mkpolicy("u", {"kprobes": [{"call": "x"}]})
    r = node.reconcile([pol], [mkpod("a", {}, {"m": "c://1"})])
    assert r.operations == 0 and r.converged
    assert node.maps.inner == {}
    assert node.engine.policy_id(pol.uid) is None
    (status,) = r.statuses
    assert status.policy_id == 0 and status.uid == pol.uid and status.key == pol.key


def test_status_counts(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pol = mkpolicy("p", {"podSelector": {}})
    pod = mkpod("a", {}, {"x": "c://1", "y": "c://2", "z": "c://3"})  # c://3 pending
    r = node.reconcile([pol], [pod])
    (status,) = r.statuses
    assert status.policy_id == node.engine.policy_id(pol.uid)
    assert status.cgroups == 2
    assert status.pending == 1
    assert status.error is None


def test_map_grows_and_shrinks_with_content(node: Node) -> None:
    pol = mkpolicy("p", {"podSelector": {}})
    containers = {f"c{i}": add_container(node, f"c://{i}", 1000 + i) for i in range(40)}
    node.reconcile([pol], [mkpod("a", {}, containers)])
    pid = node.engine.policy_id(pol.uid)
    assert pid is not None
    assert node.held(pol) == {1000 + i for i in range(40)}
    big = node.maps.capacity(pid)
    assert 40 <= big <= 128
    node.reconcile([pol], [mkpod("a", {}, {"c0": "c://0"})])
    assert node.held(pol) == {1000}
    assert node.maps.capacity(pid) < big


# --- pending ----------------------------------------------------------------------------


def test_pending_container_reported_then_resolved(node: Node) -> None:
    pol = mkpolicy("p", sel(app="web"))
    pod = mkpod("a", {"app": "web"}, {"main": "c://1", "side": "c://2"})
    add_container(node, "c://2", 102)
    r = node.reconcile([pol], [pod])
    assert not r.converged
    assert {ref.container_id for ref in r.pending} == {"c://1"}
    assert r.errors == ()
    assert node.held(pol) == {102}
    (status,) = r.statuses
    assert status.pending == 1 and status.cgroups == 1

    # still not there: still pending, nothing written
    node.maps.reset_counts()
    r = node.reconcile([pol], [pod])
    assert {ref.container_id for ref in r.pending} == {"c://1"}
    assert node.maps.writes == 0

    add_container(node, "c://1", 101)
    r = node.reconcile([pol], [pod])
    assert r.converged and r.pending == frozenset()
    assert node.held(pol) == {101, 102}


def test_pending_container_that_goes_away_is_not_pending(node: Node) -> None:
    pol = mkpolicy("p", sel(app="web"))
    r = node.reconcile([pol], [mkpod("a", {"app": "web"}, {"main": "c://1"})])
    assert len(r.pending) == 1
    r = node.reconcile([pol], [])
    assert r.converged


# --- limits -----------------------------------------------------------------------------


def limited(tmp_path: Path, name: str, limit: int) -> Node:
    return Node(tmp_path / name, limits=Limits(max_cgroups_per_policy=limit))


def test_per_policy_limit_exceeded(tmp_path: Path) -> None:
    cgroups = [50, 10, 40, 20, 60, 30]
    containers = {f"c{i}": f"c://{i}" for i in range(6)}
    pol = mkpolicy("big", sel(app="web"), uid="B")
    small = mkpolicy("small", {"podSelector": {"matchLabels": {"app": "other"}}}, uid="S")
    pod = mkpod("a", {"app": "web"}, containers)
    other = mkpod("o", {"app": "other"}, {"m": "c://o"})

    n = limited(tmp_path, "a.json", 4)
    n.cgroups.update({f"c://{i}": cg for i, cg in enumerate(cgroups)})
    n.cgroups["c://o"] = 7
    r = n.reconcile([pol, small], [pod, other])

    held = n.held(pol)
    assert held is not None
    assert len(held) == 4 and held <= set(cgroups)
    assert not r.converged
    assert len(r.errors) == 1
    assert "big" in r.errors[0]
    by_uid = {s.uid: s for s in r.statuses}
    assert by_uid["B"].error is not None
    assert by_uid["S"].error is None
    assert n.held(small) == {7}  # the other policy is unaffected

    # stable: the same input keeps the same subset, no churn, still reported
    n.maps.reset_counts()
    r2 = n.reconcile([pol, small], [pod, other])
    assert n.held(pol) == held
    assert n.maps.writes == 0
    assert len(r2.errors) == 1

    # deterministic: another node given the same containers in another order keeps the same
    m = limited(tmp_path, "b.json", 4)
    m.cgroups.update(n.cgroups)
    rev = mkpod("a", {"app": "web"}, dict(reversed(list(containers.items()))))
    m.reconcile([small, pol], [other, rev])
    assert m.held(pol) == held

    # back under the limit: everything in, error gone
    fewer = mkpod("a", {"app": "web"}, {k: containers[k] for k in ("c0", "c1", "c2")})
    r3 = n.reconcile([pol, small], [fewer, other])
    assert n.held(pol) == {50, 10, 40}
    assert r3.converged and r3.errors == ()


def test_limit_never_builds_bigger_than_limit(tmp_path: Path) -> None:
    n = limited(tmp_path, "s.json", 5)
    containers = {f"c{i}": add_container(n, f"c://{i}", 100 + i) for i in range(9)}
    pol = mkpolicy("p", {"podSelector": {}})
    n.reconcile([pol], [mkpod("a", {}, containers)])
    pid = n.engine.policy_id(pol.uid)
    assert pid is not None
    assert n.maps.capacity(pid) <= 5
    assert len(n.maps.inner[pid].entries) == 5


def test_outer_map_full_reported_then_fixed(tmp_path: Path) -> None:
    n = Node(tmp_path / "s.json", maps=FakeFilterMaps(max_policies=1))
    p1 = mkpolicy("p1", {"podSelector": {}}, uid="u1")
    p2 = mkpolicy("p2", {"podSelector": {}}, uid="u2")
    r = n.reconcile([p1, p2], [])
    assert n.held(p1) == frozenset()
    assert n.held(p2) is None
    assert len(r.errors) == 1 and "p2" in r.errors[0]
    assert not r.converged
    # room made (p1 deleted): p2 gets its map on the next call
    r = n.reconcile([p2], [])
    assert r.converged
    assert n.held(p2) == frozenset()
    assert set(n.maps.inner) == {n.engine.policy_id("u2")}


# --- restart, orphans, drift ------------------------------------------------------------


def test_restart_adopts_ids_and_maps_without_writes(node: Node) -> None:
    for i in range(12):
        add_container(node, f"c://{i}", 100 + i)
    pods = [mkpod(f"p{i}", {"app": "a" if i % 2 else "b"}, {"m": f"c://{i}"}) for i in range(12)]
    pols = [
        mkpolicy("a", sel(app="a"), uid="UA"),
        mkpolicy("b", sel(app="b"), uid="UB"),
        mkpolicy("all", {}, namespace="default", uid="UN"),
        mkpolicy("none", sel(app="zzz"), uid="UZ"),
        mkpolicy("unfiltered", {}, uid="UU"),
    ]
    node.reconcile(pols, pods)
    ids_before = {p.uid: node.engine.policy_id(p.uid) for p in pols}
    contents_before = node.maps.contents()
    map_ids_before = {pid: m.map_id for pid, m in node.maps.inner.items()}
    state_before = node.state.read_bytes()

    node.restart()
    node.maps.reset_counts()
    r = node.reconcile(pols, pods)
    assert r.converged
    assert r.operations == 0
    assert node.maps.writes == 0  # zero install/update/delete
    assert node.maps.calls["read_all"] == 1  # adopted by reading the kernel back
    assert {p.uid: node.engine.policy_id(p.uid) for p in pols} == ids_before
    assert node.maps.contents() == contents_before
    assert {pid: m.map_id for pid, m in node.maps.inner.items()} == map_ids_before
    assert node.state.read_bytes() == state_before


def test_restart_catches_up_with_changes_made_while_down(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"}), mkpod("b", {"app": "a"}, {"m": "c://2"})]
    stays = mkpolicy("stays", sel(app="a"), uid="S")
    goes = mkpolicy("goes", sel(app="a"), uid="G")
    node.reconcile([stays, goes], pods)
    goes_id = node.engine.policy_id("G")
    stays_id = node.engine.policy_id("S")

    node.restart()
    del node.cgroups["c://2"]
    new = mkpolicy("new", sel(app="a"), uid="N")
    r = node.reconcile([stays, new], pods[:1])
    assert r.converged
    assert node.engine.policy_id("S") == stays_id
    assert node.engine.policy_id("G") is None
    assert goes_id not in node.maps.inner
    new_id = node.engine.policy_id("N")
    assert new_id is not None and new_id not in (goes_id, stays_id)
    assert node.held(stays) == node.held(new) == {101}
    assert set(node.maps.inner) == {stays_id, new_id}


def test_orphan_map_deleted(node: Node) -> None:
    add_container(node, "c://1", 101)
    pol = mkpolicy("p", sel(app="a"), uid="U")
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    node.reconcile([pol], pods)
    pid = node.engine.policy_id("U")
    # a map nobody owns (e.g. left by a crash or an older agent)
    node.maps.install(999, [5, 6], max_entries=8)
    node.restart()
    node.maps.reset_counts()
    r = node.reconcile([pol], pods)
    assert r.converged
    assert set(node.maps.inner) == {pid}
    assert node.maps.calls["delete"] == 1 and node.maps.writes == 1


def test_orphan_map_deleted_on_first_start_without_state(tmp_path: Path) -> None:
    maps = FakeFilterMaps()
    maps.install(3, [1], max_entries=8)
    n = Node(tmp_path / "fresh.json", maps=maps)
    r = n.reconcile([], [])
    assert maps.inner == {}
    assert r.operations == 1


def test_mirror_avoids_reading_the_kernel_back(node: Node) -> None:
    add_container(node, "c://1", 101)
    pol = mkpolicy("p", sel(app="a"))
    for labels in ({"app": "a"}, {}, {"app": "a"}, {"app": "a"}):
        node.reconcile([pol], [mkpod("a", labels, {"m": "c://1"})])
    assert node.maps.calls["read_all"] == 1
    assert node.held(pol) == {101}


def test_check_drift_fixes_changes_behind_the_engines_back(node: Node) -> None:
    for i in range(1, 5):
        add_container(node, f"c://{i}", 100 + i)
    pods = [
        mkpod("a", {"app": "a"}, {"m": "c://1", "n": "c://2"}),
        mkpod("b", {"app": "b"}, {"m": "c://3"}),
        mkpod("c", {"app": "c"}, {"m": "c://4"}),
    ]
    pa, pb, pc = (mkpolicy(x, sel(app=x), uid=x.upper()) for x in "abc")
    node.reconcile([pa, pb, pc], pods)
    want = node.maps.contents()
    ida, idb, idc = (node.engine.policy_id(x) for x in "ABC")
    assert ida and idb and idc

    # drift: an entry lost, a stray entry, a whole map gone, an orphan map
    node.maps.inner[ida].entries.discard(101)
    node.maps.inner[idb].entries.add(999)
    del node.maps.inner[idc]
    node.maps.install(777, [1], max_entries=8)

    node.maps.reset_counts()
    r = node.reconcile([pa, pb, pc], pods)
    assert r.operations == 0 and node.maps.calls["read_all"] == 0  # mirror trusted

    node.engine.check_drift()
    r = node.reconcile([pa, pb, pc], pods)
    assert r.converged
    assert node.maps.calls["read_all"] == 1
    assert node.maps.contents() == want
    assert 777 not in node.maps.inner


# --- failures ---------------------------------------------------------------------------


def test_failed_install_reported_then_fixed(node: Node) -> None:
    add_container(node, "c://1", 101)
    pol = mkpolicy("pol", sel(app="a"), uid="U")
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    node.maps.fail_next("install", OSError(12, "ENOMEM"))
    r = node.reconcile([pol], pods)
    assert not r.converged
    assert len(r.errors) == 1 and "pol" in r.errors[0]
    (status,) = r.statuses
    assert status.error is not None
    assert node.maps.inner == {}
    # the ID is on disk already: a crash now would leave no map nobody owns
    assert statefile.load(node.state).get("U") is not None

    r = node.reconcile([pol], pods)
    assert r.converged and r.errors == ()
    assert node.held(pol) == {101}


def test_failed_update_reported_then_fixed(node: Node) -> None:
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    pol = mkpolicy("pol", sel(app="a"))
    node.reconcile([pol], [mkpod("a", {"app": "a"}, {"m": "c://1"})])
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"}), mkpod("b", {"app": "a"}, {"m": "c://2"})]
    node.maps.fail_next("update", OSError(5, "EIO"))
    r = node.reconcile([pol], pods)
    assert len(r.errors) == 1 and "pol" in r.errors[0]
    assert node.held(pol) == {101}
    r = node.reconcile([pol], pods)
    assert r.converged
    assert node.held(pol) == {101, 102}


def test_failed_delete_keeps_id_until_deleted(node: Node) -> None:
    pol = mkpolicy("pol", sel(app="a"), uid="U")
    node.reconcile([pol], [])
    pid = node.engine.policy_id("U")
    node.maps.fail_next("delete", OSError(16, "EBUSY"))
    r = node.reconcile([], [])
    assert len(r.errors) == 1
    assert pid in node.maps.inner
    # the map still exists, so its owner must still be on record
    assert node.engine.policy_id("U") == pid
    assert statefile.load(node.state).get("U") is not None
    r = node.reconcile([], [])
    assert r.converged
    assert node.maps.inner == {}
    assert node.engine.policy_id("U") is None
    assert statefile.load(node.state).get("U") is None


def test_failed_read_back_propagates_and_recovers(node: Node) -> None:
    pol = mkpolicy("pol", sel(app="a"))
    node.maps.fail_next("read_all", OSError(1, "EPERM"))
    with pytest.raises(OSError):
        node.reconcile([pol], [])
    r = node.reconcile([pol], [])
    assert r.converged and node.held(pol) == frozenset()


def test_one_failure_does_not_stop_the_other_operations(node: Node) -> None:
    add_container(node, "c://1", 101)
    pods = [mkpod("a", {"app": "a"}, {"m": "c://1"})]
    p1 = mkpolicy("p1", sel(app="a"), uid="U1")
    p2 = mkpolicy("p2", sel(app="a"), uid="U2")
    node.maps.fail_next("install", OSError(12, "ENOMEM"))  # p1's install (lowest ID first)
    r = node.reconcile([p1, p2], pods)
    assert len(r.errors) == 1 and "p1" in r.errors[0]
    assert node.held(p2) == {101}
    r = node.reconcile([p1, p2], pods)
    assert r.converged
    assert node.held(p1) == {101}


def test_state_saved_before_any_map_is_created(node: Node) -> None:
    seen: list[bool] = []
    real_install = node.maps.install

    def checking_install(policy_id: int, ids: Collection[int], *, max_entries: int) -> None:
        on_disk = {r.policy_id for r in statefile.load(node.state)}
        seen.append(policy_id in on_disk)
        real_install(policy_id, ids, max_entries=max_entries)

    node.maps.install = checking_install  # type: ignore[method-assign]
    pols = [mkpolicy(f"p{i}", {"podSelector": {}}) for i in range(3)]
    node.reconcile(pols, [])
    assert seen == [True, True, True]


def test_no_state_path_works_in_memory(tmp_path: Path) -> None:
    maps = FakeFilterMaps()
    engine = Engine(finder=FakeCgroupFinder({"c://1": 5}), maps=maps)
    pol = mkpolicy("p", {"podSelector": {}})
    r = engine.reconcile([pol], [mkpod("a", {}, {"m": "c://1"})])
    assert r.converged
    pid = engine.policy_id(pol.uid)
    assert pid is not None and maps.contents() == {pid: {5}}
    assert list(tmp_path.iterdir()) == []


def test_map_full_error_type_is_reported(tmp_path: Path) -> None:
    n = Node(tmp_path / "s.json")
    pol = mkpolicy("p", {"podSelector": {}})
    n.maps.fail_next("install", MapFullError("E2BIG"))
    r = n.reconcile([pol], [])
    assert r.errors and "E2BIG" in r.errors[0]
    assert n.reconcile([pol], []).converged
