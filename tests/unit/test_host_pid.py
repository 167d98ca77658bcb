"""hostPID pods and the reserved set that tells their processes from the runtime's.

A task in the node's PID namespace counts as a container's own process only if the
container's pod has hostPID: true (bpf/policy_filter.h). The engine keeps those containers'
cgroups under the reserved ID HOST_PID_PODS_ID while a filtered policy exists, and writes
the reserved sets before the policies' maps. The kernel side is tested in
tests/kernel/test_entered_from_node.py and tests/integration/test_enforcement.py.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

import pytest
from fakes import FakeFilterMaps

from tpfilter.bpfsrc import PidNamespace, cflags
from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID, MAX_ID, PolicyIds
from tpfilter.pods import parse_pod
from unit.test_engine import Node, add_container, mkpod, mkpolicy, sel


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "state.json")


@pytest.mark.parametrize(
    ("spec", "host_pid"),
    [({"hostPID": True}, True), ({"hostPID": False}, False), ({}, False), (None, False)],
)
def test_parse_pod_reads_spec_host_pid(spec: dict[str, bool] | None, host_pid: bool) -> None:
    assert parse_pod({"metadata": {"uid": "u"}, "spec": spec}).host_pid is host_pid


def test_reserved_ids_are_never_allocated() -> None:
    ids = PolicyIds(next_id=MAX_ID)
    got = [ids.ensure(mkpolicy(f"p{i}", sel(a="b"), uid=f"u{i}")).policy_id for i in range(3)]
    assert got == [MAX_ID, 1, 2]
    assert (HOST_PID_PODS_ID, ALL_PODS_ID) == (0xFFFF_FFFE, 0xFFFF_FFFF) == (MAX_ID + 1, MAX_ID + 2)


def test_host_pid_set_holds_the_containers_of_host_pid_pods(node: Node) -> None:
    for cid, cg in (("c://1", 101), ("c://2", 102), ("c://3", 103)):
        add_container(node, cid, cg)
    plain = mkpod("plain", {"app": "a"}, {"m": "c://1"})
    # Selected or not, a hostPID pod's containers are in the set (hostSelector needs them).
    hostpid = mkpod("agent", {"app": "other"}, {"m": "c://2", "side": "c://3"}, host_pid=True)
    policy = mkpolicy("p", sel(app="a"), uid="P")
    assert node.reconcile([policy], [plain, hostpid]).converged
    assert node.maps.contents() == {node.engine.policy_id("P"): {101}, HOST_PID_PODS_ID: {102, 103}}

    # The pod goes: so does the set (absent means "no hostPID pod here").
    node.reconcile([policy], [plain])
    assert HOST_PID_PODS_ID not in node.maps.contents()


def test_no_host_pid_set_without_a_filtered_policy(node: Node) -> None:
    add_container(node, "c://1", 101)
    hostpid = mkpod("agent", {}, {"m": "c://1"}, host_pid=True)
    unfiltered = mkpolicy("u", {}, uid="U")
    assert node.reconcile([unfiltered], [hostpid]).converged
    assert node.maps.contents() == {}


def test_pending_host_pid_container_keeps_the_pass_unconverged(node: Node) -> None:
    hostpid = mkpod("agent", {"app": "a"}, {"m": "c://1"}, host_pid=True)
    policy = mkpolicy("p", sel(app="a"), uid="P")
    r = node.reconcile([policy], [hostpid])
    assert not r.converged and HOST_PID_PODS_ID not in node.maps.contents()
    add_container(node, "c://1", 101)
    assert node.reconcile([policy], [hostpid]).converged
    assert node.maps.contents()[HOST_PID_PODS_ID] == {101}


class RecordingMaps(FakeFilterMaps):
    """The fake maps, recording which policy IDs each write touched, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.writes_in_order: list[int] = []

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        super().install(policy_id, cgroup_ids, max_entries=max_entries)
        self.writes_in_order.append(policy_id)

    def update(self, policy_id: int, *, add: Collection[int], remove: Collection[int]) -> None:
        super().update(policy_id, add=add, remove=remove)
        self.writes_in_order.append(policy_id)

    def delete(self, policy_id: int) -> None:
        super().delete(policy_id)
        self.writes_in_order.append(policy_id)


def test_reserved_sets_are_written_before_the_policy_maps(tmp_path: Path) -> None:
    """A policy map never holds a container the reserved sets do not know yet: else a
    hostPID pod's processes would count as the runtime's for a moment (and a new pod's as
    host processes for hostSelector policies)."""
    maps = RecordingMaps()
    node = Node(tmp_path / "state.json", maps=maps)
    add_container(node, "c://1", 101)
    add_container(node, "c://2", 102)
    policies = [
        mkpolicy("p", sel(app="a"), uid="P"),
        mkpolicy("h", {**sel(app="a"), "hostSelector": {}}, uid="H"),
    ]
    first = [mkpod("x", {"app": "a"}, {"m": "c://1"}, host_pid=True)]
    node.reconcile(policies, first)  # installs
    assert _reserved_first(maps.writes_in_order)
    maps.writes_in_order.clear()
    second = [*first, mkpod("y", {"app": "a"}, {"m": "c://2"}, host_pid=True)]
    node.reconcile(policies, second)  # in-place updates
    assert sorted(maps.writes_in_order) == sorted([1, 2, ALL_PODS_ID, HOST_PID_PODS_ID])
    assert _reserved_first(maps.writes_in_order)


def _reserved_first(order: Sequence[int]) -> bool:
    reserved = {ALL_PODS_ID, HOST_PID_PODS_ID}
    return set(order[:2]) == reserved and not reserved & set(order[2:])


def test_cflags_name_the_node_pid_namespace() -> None:
    flags = cflags(Path("/sys/fs/bpf/x"), node_pidns=PidNamespace(dev=4, ino=4026531836))
    assert "-DTPF_NODE_PIDNS_DEV=4ULL" in flags
    assert "-DTPF_NODE_PIDNS_INO=4026531836ULL" in flags
