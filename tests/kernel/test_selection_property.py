"""The whole selection against a plain model, with the real Engine and the real kernel maps.

Random sequences of policy and pod events (create, relabel, add / remove / restart
containers, a container's cgroup appearing late, delete, and "agent restart" = a new
Engine and a new PinnedFilterMaps on the same pins and state file) are applied through
``tpfilter.engine.Engine`` writing real pinned BPF maps (a unique pin dir per sequence).
After every reconcile the kernel maps, read back with plain bpf syscalls (not through the
engine's or PinnedFilterMaps' caches) and mapped to policies through the state file on
disk, must equal what the model below says. The model is written here from the documented
semantics (README "What the selectors mean"), not from tpfilter.desired.

The candidate index (cgroup ID -> the policies whose map holds it; the host marker -> the
hostSelector policies), which the engine writes around the inner maps, is read back the
same way and must be exactly the inner maps turned inside out, sized to its content.

Policies may have hostSelector {} (their map then holds the host marker, and the node-wide
all-pods set is kept), and pods may be hostPID pods (the node-wide hostPID set): the model
names those reserved maps too.

The cgroup finder is a deterministic fake over real cgroups: each container gets its own
directory from a pool made once (at three depths), so the levels array of the child-cgroup
walk is checked too (it must cover the depth of every cgroup in any map).

Outer-map writes cost ~10 ms each (an RCU grace period), so sequences are short and use
few policies. 1,000 sequences by default (~1-2 minutes); ``TPFILTER_PROPERTY_EXAMPLES``
for more.
"""

from __future__ import annotations

import os
import random
import struct
import tempfile
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kernelkit import BPF_ROOT, CgroupTree, cgroup2_mount, kernel_marks, skip_reason

from tpfilter import bpfsys, statefile
from tpfilter.bpfmaps import (
    LEVELS_PIN_NAME,
    OUTER_PIN_NAME,
    InstallItem,
    PinnedFilterMaps,
)
from tpfilter.engine import Engine, ReconcileResult
from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID
from tpfilter.indexmap import INDEX_PIN_NAME, PinnedCandidateIndex
from tpfilter.interfaces import HOST_MARKER, ContainerRef, InnerMapState, MapFullError, MapUsage
from tpfilter.models import parse_policy
from tpfilter.pods import parse_pod

EXAMPLES = int(os.environ.get("TPFILTER_PROPERTY_EXAMPLES", "1000"))
CGROUP2 = cgroup2_mount()
pytestmark = kernel_marks(skip_reason("create BPF maps and cgroups", cgroup2=True))

# -- the world's vocabulary ------------------------------------------------------------------

NAMESPACES = ["ns1", "ns2"]
POD_NAMES = ["a", "b", "c"]
CONTAINER_NAMES = ["main", "side"]
IMAGES = {"nginx:1.27": "nginx", "docker.io/library/redis:7": "docker.io/library/redis"}
POLICY_NAMES = ["p", "q"]
CLUSTER, NAMESPACED = "TracingPolicy", "TracingPolicyNamespaced"
ABSENT = "absent"
POOL_SIZE = 64  # real cgroups; a sequence makes at most 4 + 5 x 3 containers


# -- strategies ------------------------------------------------------------------------------

LABELS = st.dictionaries(
    st.sampled_from(["app", "tier"]), st.sampled_from(["web", "db"]), max_size=2
)
REQUIREMENT = st.one_of(
    st.builds(
        lambda k, op, v: {"key": k, "operator": op, "values": v},
        st.sampled_from(["app", "tier"]),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(["web", "db"]), min_size=1, max_size=2, unique=True),
    ),
    st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(["app", "tier"]),
        st.sampled_from(["Exists", "DoesNotExist"]),
    ),
)
POD_SELECTOR = st.one_of(
    st.just(ABSENT),
    st.just(None),
    st.just({}),  # every pod
    st.just({"matchLabels": {"app": "web"}}),
    st.builds(
        lambda labels, exprs: {"matchLabels": labels, "matchExpressions": exprs},
        LABELS,
        st.lists(REQUIREMENT, max_size=1),
    ),
)
CONTAINER_SELECTOR = st.one_of(
    st.just(ABSENT),
    st.builds(lambda n: {"matchLabels": {"name": n}}, st.sampled_from(CONTAINER_NAMES)),
    st.builds(
        lambda op, v: {"matchExpressions": [{"key": "repo", "operator": op, "values": [v]}]},
        st.sampled_from(["In", "NotIn"]),
        st.sampled_from(sorted(set(IMAGES.values()))),
    ),
)
POD = st.sampled_from(POD_NAMES)
CONTAINER = st.sampled_from(CONTAINER_NAMES)
# hostPID is fixed at creation (the API server refuses to change it), like the namespace.
POD_EVENT = st.tuples(
    st.just("pod"), POD, st.sampled_from(NAMESPACES), LABELS, st.sampled_from([False, False, True])
)
ADD_CONTAINER = st.tuples(
    st.just("add_container"),
    POD,
    CONTAINER,
    st.sampled_from(sorted(IMAGES)),
    st.sampled_from([True, True, False]),  # with its cgroup, or pending until it appears
)
POLICY_EVENT = st.tuples(
    st.just("policy"),
    st.sampled_from(POLICY_NAMES),
    st.sampled_from([CLUSTER, NAMESPACED]),
    st.sampled_from(NAMESPACES),
    POD_SELECTOR,
    CONTAINER_SELECTOR,
    st.sampled_from([ABSENT, ABSENT, {}]),  # hostSelector (cluster policies only)
)
# Weighted towards what builds state (pods, containers, policies), so that most
# sequences end with maps that hold cgroups; the rest changes or removes it.
EVENT = st.one_of(
    POD_EVENT,
    POD_EVENT,
    ADD_CONTAINER,
    ADD_CONTAINER,
    ADD_CONTAINER,
    POLICY_EVENT,
    POLICY_EVENT,
    st.tuples(st.just("pod_delete"), POD),
    st.tuples(st.just("remove_container"), POD, CONTAINER),
    st.tuples(st.just("restart_container"), POD, CONTAINER),
    st.tuples(st.just("cgroup_appears"), st.integers(0, 7)),
    st.tuples(st.just("policy_delete"), st.sampled_from(POLICY_NAMES)),
    st.tuples(st.just("restart")),
)
BATCHES = st.lists(st.lists(EVENT, min_size=1, max_size=3), min_size=1, max_size=5)


@st.composite
def initial_batch(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """A first batch that builds a node worth changing: pods with containers, policies."""
    events: list[tuple[Any, ...]] = []
    for name in draw(st.lists(POD, min_size=1, max_size=3, unique=True)):
        host_pid = draw(st.sampled_from([False, False, True]))
        events.append(("pod", name, draw(st.sampled_from(NAMESPACES)), draw(LABELS), host_pid))
        for container in draw(st.lists(CONTAINER, min_size=1, max_size=2, unique=True)):
            image = draw(st.sampled_from(sorted(IMAGES)))
            with_cgroup = draw(st.sampled_from([True, True, False]))
            events.append(("add_container", name, container, image, with_cgroup))
    events += draw(st.lists(POLICY_EVENT, min_size=1, max_size=2))
    return events


INITIAL = initial_batch()


# -- the model -------------------------------------------------------------------------------


@dataclass
class ModelPod:
    namespace: str
    labels: dict[str, str]
    host_pid: bool = False
    containers: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (id, image)


@dataclass
class ModelPolicy:
    uid: str
    kind: str
    namespace: str
    pod_selector: Any  # ABSENT, None or a selector dict
    container_selector: Any
    host_selector: Any = ABSENT  # ABSENT or {}; a namespaced policy cannot have one


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Kubernetes label selectors: every matchLabels pair and every expression hold."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def given_(selector: Any) -> bool:
    """A selector is given unless absent or null (null is "unset" in the Kubernetes API)."""
    return selector is not ABSENT and selector is not None


def filtered(p: ModelPolicy) -> bool:
    """Unfiltered = a cluster policy with no selector at all: it has no map."""
    return (
        p.kind == NAMESPACED
        or given_(p.pod_selector)
        or given_(p.container_selector)
        or given_(p.host_selector)
    )


ALL_PODS, HOST_PID_PODS = "(all pods)", "(hostPID pods)"  # the reserved sets' names


def model(
    policies: Mapping[str, ModelPolicy], pods: Mapping[str, ModelPod], cgroups: Mapping[str, int]
) -> dict[str, tuple[set[int], set[str]]]:
    """{uid of each filtered policy, or a reserved set's name: (the cgroup IDs its map holds,
    its containers pending)}.

    - A policy's map: the cgroups of the containers it selects, plus the host marker with
      hostSelector {}. A cluster policy with only a hostSelector selects no pod.
    - ALL_PODS, while some policy has hostSelector {}: every pod container's cgroup.
    - HOST_PID_PODS, while some policy is filtered and it is not empty: the cgroups of the
      containers of hostPID pods.
    """
    out: dict[str, tuple[set[int], set[str]]] = {}

    def split(containers: Iterable[str]) -> tuple[set[int], set[str]]:
        cids = list(containers)
        return {cgroups[c] for c in cids if c in cgroups}, {c for c in cids if c not in cgroups}

    def selected(p: ModelPolicy, pod: ModelPod) -> Iterator[str]:
        if p.kind == CLUSTER and not given_(p.pod_selector) and not given_(p.container_selector):
            return  # only a hostSelector
        if p.kind == NAMESPACED and pod.namespace != p.namespace:
            return
        if given_(p.pod_selector) and not selector_matches(p.pod_selector, pod.labels):
            return
        for name, (cid, image) in pod.containers.items():
            labels = {"name": name, "repo": IMAGES[image]}
            if not given_(p.container_selector) or selector_matches(p.container_selector, labels):
                yield cid

    live = [p for p in policies.values() if filtered(p)]
    for p in live:
        want, pending = split(cid for pod in pods.values() for cid in selected(p, pod))
        if given_(p.host_selector):
            want.add(HOST_MARKER)
        out[p.uid] = (want, pending)
    if any(given_(p.host_selector) for p in live):
        out[ALL_PODS] = split(cid for pod in pods.values() for cid, _ in pod.containers.values())
    if live:  # (a map only if its cgroups are not all pending: see World.check)
        out[HOST_PID_PODS] = split(
            cid for pod in pods.values() if pod.host_pid for cid, _ in pod.containers.values()
        )
    return out


# -- kernel side -----------------------------------------------------------------------------


def kernel_state(pin_dir: Path) -> tuple[dict[int, tuple[frozenset[int], int]], int]:
    """({policy ID: (cgroup IDs, max_entries)}, levels mask) read with bare syscalls."""
    outer = bpfsys.obj_get(pin_dir / OUTER_PIN_NAME)
    try:
        maps: dict[int, tuple[frozenset[int], int]] = {}
        for key in bpfsys.map_keys(outer, 4):
            raw = bpfsys.map_lookup(outer, key, 4)
            assert raw is not None
            inner = bpfsys.map_fd_by_id(struct.unpack("=I", raw)[0])
            try:
                cgroup_ids = frozenset(struct.unpack("=Q", k)[0] for k in bpfsys.map_keys(inner, 8))
                maps[struct.unpack("=I", key)[0]] = (cgroup_ids, bpfsys.map_info(inner).max_entries)
            finally:
                os.close(inner)
    finally:
        os.close(outer)
    levels = bpfsys.obj_get(pin_dir / LEVELS_PIN_NAME)
    try:
        raw = bpfsys.map_lookup(levels, struct.pack("=I", 0), 8)
    finally:
        os.close(levels)
    return maps, 0 if raw is None else struct.unpack("=Q", raw)[0]


class PoolFinder:
    """CgroupFinder: container ID -> the ID of the real cgroup the world gave it."""

    def __init__(self, cgroups: dict[str, int]) -> None:
        self.cgroups = cgroups  # shared with the world: one node

    def cgroup_id(self, container: ContainerRef) -> int | None:
        return self.cgroups.get(container.container_id)

    def forget(self, container: ContainerRef) -> None:
        pass


class CountingMaps:
    """PinnedFilterMaps, with its writes counted (the batch forms too, for an engine that
    uses them). Before every write that puts keys in a policy's map, the pinned candidate
    index is read back: it must already list the policy under each of them (the write
    order that keeps the index a superset of the inner maps)."""

    def __init__(self, inner: PinnedFilterMaps, pin_dir: Path) -> None:
        self.inner = inner
        self.pin_dir = pin_dir
        self.writes: Counter[str] = Counter()

    def _index_first(self, items: Iterable[tuple[int, Collection[int]]]) -> None:
        index, _ = kernel_index(self.pin_dir)
        for policy_id, keys in items:
            if policy_id in (ALL_PODS_ID, HOST_PID_PODS_ID):
                continue
            for key in keys:
                assert policy_id in index.get(key, ()), "inner map written before the index"

    def read_all(self) -> Mapping[int, InnerMapState]:
        return self.inner.read_all()

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        self.writes["install"] += 1
        self._index_first([(policy_id, cgroup_ids)])
        self.inner.install(policy_id, cgroup_ids, max_entries=max_entries)

    def update(self, policy_id: int, *, add: Collection[int], remove: Collection[int]) -> None:
        self.writes["update"] += 1
        self._index_first([(policy_id, add)])
        self.inner.update(policy_id, add=add, remove=remove)

    def delete(self, policy_id: int) -> None:
        self.writes["delete"] += 1
        self.inner.delete(policy_id)

    def install_many(self, items: Sequence[InstallItem]) -> dict[int, MapFullError | OSError]:
        self.writes["install_many"] += 1
        self._index_first([(pid, keys) for pid, keys, _ in items])
        return self.inner.install_many(items)

    def delete_many(self, policy_ids: Iterable[int]) -> dict[int, OSError]:
        self.writes["delete_many"] += 1
        return self.inner.delete_many(policy_ids)

    def usage(self) -> list[MapUsage]:
        return self.inner.usage()


class CountingIndex:
    """PinnedCandidateIndex, with its writes counted."""

    def __init__(self, inner: PinnedCandidateIndex, writes: Counter[str]) -> None:
        self.inner = inner
        self.writes = writes

    def read_all(self) -> Mapping[int, tuple[int, ...]]:
        return self.inner.read_all()

    def write(self, writes: Mapping[int, tuple[int, ...]], deletes: Collection[int]) -> None:
        if writes or deletes:
            self.writes["index"] += 1
        self.inner.write(writes, deletes)


def kernel_index(pin_dir: Path) -> tuple[dict[int, set[int]], int]:
    """The pinned candidate index read with plain bpf syscalls: ({key: policy IDs},
    max_entries of the hash in its slot; 0 if the slot is empty)."""
    slot_fd = bpfsys.obj_get(pin_dir / INDEX_PIN_NAME)
    try:
        raw = bpfsys.map_lookup(slot_fd, struct.pack("=I", 0), 4)
        if raw is None:
            return {}, 0
        fd = bpfsys.map_fd_by_id(struct.unpack("=I", raw)[0])
    finally:
        os.close(slot_fd)
    try:
        info = bpfsys.map_info(fd)
        out: dict[int, set[int]] = {}
        for key in bpfsys.map_keys(fd, 8):
            value = bpfsys.map_lookup(fd, key, info.value_size)
            assert value is not None
            n = struct.unpack_from("=I", value)[0]
            ids = struct.unpack_from(f"={n}I", value, 4)
            out[struct.unpack("=Q", key)[0]] = set(ids)
        return out, info.max_entries
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Pool:
    """Real cgroups made once for the module: (ID, depth below the cgroup2 root)."""

    cgroups: tuple[tuple[int, int], ...]


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    assert CGROUP2 is not None
    tree = CgroupTree(CGROUP2, "tpf-prop")
    try:
        entries = []
        for i in range(POOL_SIZE):
            # three depths, like Guaranteed / Burstable pods and crun sub-cgroups
            path, cgroup_id = tree.make("/".join([f"e{i}", "pod", "c"][: 1 + i % 3]))
            entries.append((cgroup_id, len(path.relative_to(CGROUP2).parts)))
        yield Pool(tuple(entries))
    finally:
        tree.close()


_SEQUENCES = count()


class World:
    """The node: pods, policies, cgroups, one agent (Engine + PinnedFilterMaps)."""

    def __init__(self, pool: Pool, tmp: Path) -> None:
        self.pool = pool
        self.levels = dict(pool.cgroups)
        self.pin_dir = BPF_ROOT / f"tpf-prop-{os.getpid()}-{next(_SEQUENCES)}"
        self.state = tmp / "state.json"
        self.cgroups: dict[str, int] = {}
        self.pods: dict[str, ModelPod] = {}
        self.policies: dict[str, ModelPolicy] = {}
        self.waiting: list[str] = []
        self.counter = 0
        self.next_cgroup = 0
        self.maps: CountingMaps | None = None
        self.index: CountingIndex | None = None
        self.start_agent()

    def start_agent(self) -> None:
        if self.maps is not None:
            self.maps.inner.close()  # the old agent exits; only the pins remain
        if self.index is not None:
            self.index.inner.close()
        self.maps = CountingMaps(
            PinnedFilterMaps(pin_dir=self.pin_dir, max_policies=64), self.pin_dir
        )
        self.index = CountingIndex(PinnedCandidateIndex(pin_dir=self.pin_dir), self.maps.writes)
        self.engine = Engine(
            finder=PoolFinder(self.cgroups),
            maps=self.maps,
            state_path=self.state,
            index=self.index,
        )

    def close(self) -> None:
        if self.index is not None:
            self.index.inner.close()
            self.index.inner.remove_pins()
            self.index = None
        if self.maps is not None:
            self.maps.inner.close()
            self.maps.inner.remove_pins()
            self.maps = None

    def _cgroup(self) -> int:
        cgroup_id = self.pool.cgroups[self.next_cgroup][0]
        self.next_cgroup += 1
        return cgroup_id

    def _new_container(self, with_cgroup: bool) -> str:
        self.counter += 1
        cid = f"containerd://{self.counter:064x}"
        if with_cgroup:
            self.cgroups[cid] = self._cgroup()
        else:
            self.waiting.append(cid)
        return cid

    def _drop_container(self, cid: str) -> None:
        self.cgroups.pop(cid, None)
        if cid in self.waiting:
            self.waiting.remove(cid)

    def apply(self, event: tuple[Any, ...]) -> None:
        match event:
            case ("pod", name, ns, labels, host_pid):
                if name in self.pods:
                    self.pods[name].labels = dict(labels)  # relabel (namespace is fixed)
                else:
                    self.pods[name] = ModelPod(ns, dict(labels), host_pid)
            case ("pod_delete", name):
                pod = self.pods.pop(name, None)
                for cid, _ in pod.containers.values() if pod else ():
                    self._drop_container(cid)
            case ("add_container", name, cname, image, with_cgroup):
                pod = self.pods.get(name)
                if pod is not None and cname not in pod.containers:
                    pod.containers[cname] = (self._new_container(with_cgroup), image)
            case ("remove_container", name, cname):
                pod = self.pods.get(name)
                if pod is not None and cname in pod.containers:
                    self._drop_container(pod.containers.pop(cname)[0])
            case ("restart_container", name, cname):
                pod = self.pods.get(name)
                if pod is not None and cname in pod.containers:
                    old, image = pod.containers[cname]
                    self._drop_container(old)
                    pod.containers[cname] = (self._new_container(True), image)
            case ("cgroup_appears", i):
                if self.waiting:
                    self.cgroups[self.waiting.pop(i % len(self.waiting))] = self._cgroup()
            case ("policy", name, kind, ns, pod_sel, cont_sel, host_sel):
                host_sel = host_sel if kind == CLUSTER else ABSENT  # refused at apply
                old = self.policies.get(name)
                if old is not None and (old.kind, old.namespace) == (kind, ns):
                    old.pod_selector, old.container_selector = pod_sel, cont_sel
                    old.host_selector = host_sel
                else:  # a different object under the same name: a new UID
                    self.counter += 1
                    self.policies[name] = ModelPolicy(
                        f"uid-{self.counter}", kind, ns, pod_sel, cont_sel, host_sel
                    )
            case ("policy_delete", name):
                self.policies.pop(name, None)
            case ("restart",):
                self.start_agent()
            case _:
                raise AssertionError(f"unknown event {event!r}")

    def reconcile(self, rnd: random.Random) -> ReconcileResult:
        policies = []
        for name, p in self.policies.items():
            metadata = {"name": name, "uid": p.uid}
            if p.kind == NAMESPACED:
                metadata["namespace"] = p.namespace
            spec: dict[str, Any] = {"kprobes": [{"call": "security_bprm_check"}]}
            if p.pod_selector is not ABSENT:
                spec["podSelector"] = p.pod_selector
            if p.container_selector is not ABSENT:
                spec["containerSelector"] = p.container_selector
            if p.host_selector is not ABSENT:
                spec["hostSelector"] = p.host_selector
            policies.append(parse_policy({"kind": p.kind, "metadata": metadata, "spec": spec}))
        pods = []
        for name, pod in self.pods.items():
            statuses = [
                {"name": c, "image": image, "containerID": cid, "state": {"running": {}}}
                for c, (cid, image) in pod.containers.items()
            ]
            pods.append(
                parse_pod(
                    {
                        "metadata": {
                            "name": name,
                            "namespace": pod.namespace,
                            "uid": f"pod-{name}",
                            "labels": pod.labels,
                        },
                        "spec": {"hostPID": pod.host_pid},
                        "status": {"qosClass": "BestEffort", "containerStatuses": statuses},
                    }
                )
            )
        rnd.shuffle(policies)
        rnd.shuffle(pods)
        return self.engine.reconcile(policies, pods)

    def check(self, result: ReconcileResult) -> None:
        expected = model(self.policies, self.pods, self.cgroups)
        kernel, mask = kernel_state(self.pin_dir)
        on_disk = {r.uid: r.policy_id for r in statefile.load(self.state)}
        reserved = {ALL_PODS: ALL_PODS_ID, HOST_PID_PODS: HOST_PID_PODS_ID}
        # The hostPID set is not kept empty (absent means the same); the others are.
        installed = {k for k, (want, _) in expected.items() if k != HOST_PID_PODS or want}

        assert set(on_disk) == set(expected) - set(reserved), "the state file names the policies"
        assert len(set(on_disk.values())) == len(on_disk), "policy IDs are unique"
        assert all(self.engine.policy_id(uid) == pid for uid, pid in on_disk.items())
        ids = {**on_disk, **reserved}
        got = {name: set(kernel[pid][0]) for name, pid in ids.items() if pid in kernel}
        assert set(kernel) == {ids[k] for k in installed}, "a map for each, and no other map"
        assert got == {k: want for k, (want, _) in expected.items() if k in installed}
        for cgroup_ids, max_entries in kernel.values():
            n = len(cgroup_ids)
            assert n <= max_entries and (max_entries <= 8 or n > max_entries // 8)
            for cgroup_id in cgroup_ids - {HOST_MARKER}:  # the walk covers every depth
                assert mask & (1 << self.levels[cgroup_id]), (cgroup_id, mask)
        assert sorted(p.name for p in self.pin_dir.iterdir()) == sorted(
            [OUTER_PIN_NAME, LEVELS_PIN_NAME, INDEX_PIN_NAME]
        )
        # The candidate index: every (key, policy) pair of the policies' maps, turned
        # inside out; nothing for the reserved sets; sized like an inner map.
        want_index: dict[int, set[int]] = {}
        for name, pid in on_disk.items():
            for key in expected[name][0] if name in installed else ():
                want_index.setdefault(key, set()).add(pid)
        index, index_max = kernel_index(self.pin_dir)
        assert index == want_index, "the candidate index is the inner maps inverted"
        assert len(index) <= index_max and (index_max <= 8 or len(index) > index_max // 8)
        pending = set().union(*(p for _, p in expected.values()))
        assert {ref.container_id for ref in result.pending} == pending
        assert result.errors == ()
        # what the sequences exercise (pytest --hypothesis-show-statistics)
        event(f"maps: {len(kernel)}")
        event(f"selected cgroups: {min(3, sum(len(c) for c, _ in kernel.values()))}+")
        event(f"pending: {bool(pending)}")
        event(f"reserved sets: {sorted(k for k in reserved if k in installed)}")


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@SETTINGS
@given(initial=INITIAL, batches=BATCHES, rnd=st.randoms(use_true_random=False))
def test_kernel_maps_follow_the_model(
    pool: Pool,
    initial: list[tuple[Any, ...]],
    batches: list[list[tuple[Any, ...]]],
    rnd: random.Random,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(pool, Path(tmp))
        try:
            for batch in [initial, *batches]:
                for happening in batch:
                    world.apply(happening)
                world.check(world.reconcile(rnd))
                if ("restart",) in batch:
                    event("agent restart")
                    # A restart that has caught up adopts the pinned maps as they are: the
                    # next agent writes nothing.
                    world.start_agent()
                    assert world.maps is not None
                    result = world.reconcile(rnd)
                    assert sum(world.maps.writes.values()) == 0, world.maps.writes
                    world.check(result)
        finally:
            world.close()
