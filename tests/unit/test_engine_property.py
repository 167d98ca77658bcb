"""Random event sequences against a plain reference model of what the maps must hold.

The model is written here from the rules in the README/docstrings, independently of
tpfilter.desired: after every reconcile, the fake kernel maps, mapped back to policies
through ``Engine.policy_id``, must equal it. Examples: 200 by default, more with
``TPFILTER_PROPERTY_EXAMPLES=5000``.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpfilter import statefile
from tpfilter.engine import Engine, Limits, ReconcileResult
from tpfilter.models import Policy, parse_policy
from tpfilter.pods import Pod, parse_pod
from unit.fakes import FakeCgroupFinder, FakeFilterMaps

EXAMPLES = int(os.environ.get("TPFILTER_PROPERTY_EXAMPLES", "200"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NAMESPACES = ["ns1", "ns2"]
POD_NAMES = ["a", "b", "c", "d"]
CONTAINER_NAMES = ["main", "side", "init"]
# image -> its repository, written out by hand (not computed by tpfilter.pods.image_repo)
IMAGES = {
    "nginx": "nginx",
    "nginx:1.27": "nginx",
    "redis@sha256:" + "0" * 64: "redis",
    "docker.io/library/redis:7": "docker.io/library/redis",
    "localhost:5000/app:v1": "localhost:5000/app",
}
LABEL_KEYS = ["app", "tier", "x.io/team"]
LABEL_VALUES = ["web", "db", ""]
POLICY_NAMES = ["p", "q", "r"]
CLUSTER, NAMESPACED = "TracingPolicy", "TracingPolicyNamespaced"
ABSENT = object()


# --- strategies -------------------------------------------------------------------------


def selector(keys: list[str], values: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    with_values = st.builds(
        lambda k, op, vs: {"key": k, "operator": op, "values": vs},
        st.sampled_from(keys),
        st.sampled_from(["In", "NotIn"]),
        st.lists(st.sampled_from(values), min_size=1, max_size=2),
    )
    without_values = st.builds(
        lambda k, op: {"key": k, "operator": op},
        st.sampled_from(keys),
        st.sampled_from(["Exists", "DoesNotExist"]),
    )
    return st.builds(
        lambda labels, exprs: {"matchLabels": labels, "matchExpressions": exprs},
        st.dictionaries(st.sampled_from(keys), st.sampled_from(values), max_size=2),
        st.lists(st.one_of(with_values, without_values), max_size=2),
    )


POD_SELECTOR = st.one_of(st.just(ABSENT), st.just(None), selector(LABEL_KEYS, LABEL_VALUES))
CONTAINER_SELECTOR = st.one_of(
    st.just(ABSENT),
    st.just(None),
    selector(
        ["name", "repo"],
        [*CONTAINER_NAMES, "nginx", "redis", "docker.io/library/redis", "localhost:5000/app"],
    ),
)


def make_spec(pod_sel: Any, cont_sel: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"kprobes": [{"call": "security_bprm_check"}]}
    if pod_sel is not ABSENT:
        spec["podSelector"] = pod_sel
    if cont_sel is not ABSENT:
        spec["containerSelector"] = cont_sel
    return spec


LABELS = st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=3)
POD = st.sampled_from(POD_NAMES)
CONTAINER = st.sampled_from(CONTAINER_NAMES)
IMAGE = st.sampled_from(sorted(IMAGES))

POD_EVENT = st.tuples(st.just("pod"), POD, st.sampled_from(NAMESPACES), LABELS, IMAGE)
ADD_CONTAINER = st.tuples(st.just("add_container"), POD, CONTAINER, IMAGE, st.booleans())
POLICY_EVENT = st.tuples(
    st.just("policy"),
    st.sampled_from(POLICY_NAMES),
    st.sampled_from([CLUSTER, NAMESPACED]),
    st.sampled_from(NAMESPACES),
    st.builds(make_spec, POD_SELECTOR, CONTAINER_SELECTOR),
)
# Creations and updates weigh more than removals, so that the node is seldom empty.
_EVENT = st.one_of(
    POD_EVENT,
    POD_EVENT,
    POD_EVENT,
    ADD_CONTAINER,
    ADD_CONTAINER,
    POLICY_EVENT,
    POLICY_EVENT,
    POLICY_EVENT,
    st.tuples(st.just("pod_delete"), POD),
    st.tuples(st.just("remove_container"), POD, CONTAINER),
    st.tuples(st.just("restart_container"), POD, CONTAINER, st.booleans()),
    st.tuples(st.just("cgroup_appears"), st.integers(0, 20)),
    st.tuples(st.just("policy_delete"), st.sampled_from(POLICY_NAMES)),
    st.tuples(st.just("restart")),
)
FAULT = st.tuples(
    st.just("fault"),
    st.sampled_from(["install", "update", "delete"]),
    st.sampled_from([OSError(5, "EIO"), OSError(12, "ENOMEM")]),
)
# Several events between two reconciles, as after a burst of watch events or a relist.
BATCH = st.lists(_EVENT, min_size=1, max_size=5)
# A whole node at once: pods with containers, then policies, for one reconcile.
SNAPSHOT = st.tuples(
    st.lists(st.one_of(POD_EVENT, ADD_CONTAINER), min_size=1, max_size=12),
    st.lists(POLICY_EVENT, min_size=1, max_size=3),
)
BATCH_WITH_FAULTS = st.lists(st.one_of(_EVENT, FAULT), min_size=1, max_size=4)


# --- the node and the reference model ---------------------------------------------------


@dataclass
class ModelPod:
    namespace: str
    labels: dict[str, str]
    containers: dict[str, tuple[str, str]] = field(default_factory=dict)  # name: (id, image)


@dataclass
class ModelPolicy:
    uid: str
    kind: str
    namespace: str
    spec: dict[str, Any]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics, from the API docs."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if key not in labels or labels[key] != value:
            return False
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], req.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def is_filtered(p: ModelPolicy) -> bool:
    return (
        p.kind == NAMESPACED
        or p.spec.get("podSelector") is not None
        or p.spec.get("containerSelector") is not None
    )


def model(
    policies: dict[str, ModelPolicy], pods: dict[str, ModelPod], cgroups: dict[str, int]
) -> dict[str, tuple[set[int], set[str]]]:
    """{uid of each filtered policy: (cgroup IDs wanted, container IDs pending)}."""
    out: dict[str, tuple[set[int], set[str]]] = {}
    for p in policies.values():
        if not is_filtered(p):
            continue
        want: set[int] = set()
        pending: set[str] = set()
        pod_sel = p.spec.get("podSelector")
        cont_sel = p.spec.get("containerSelector")
        for pod in pods.values():
            if p.kind == NAMESPACED and pod.namespace != p.namespace:
                continue
            if pod_sel is not None and not matches(pod_sel, pod.labels):
                continue
            for name, (cid, image) in pod.containers.items():
                if cont_sel is not None and not matches(
                    cont_sel, {"name": name, "repo": IMAGES[image]}
                ):
                    continue
                if cid in cgroups:
                    want.add(cgroups[cid])
                else:
                    pending.add(cid)
        out[p.uid] = (want, pending)
    return out


class World:
    def __init__(self, state: Path, limit: int) -> None:
        self.state = state
        self.limits = Limits(max_cgroups_per_policy=limit)
        self.maps = FakeFilterMaps()
        self.cgroups: dict[str, int] = {}  # the node's truth: container ID -> cgroup ID
        self.pods: dict[str, ModelPod] = {}
        self.policies: dict[str, ModelPolicy] = {}
        self.waiting: list[str] = []  # container IDs whose cgroup is not there yet
        self.counter = 0
        self.ids_live: dict[str, int] = {}  # uid -> policy ID at the last check
        self.highest_id = 0
        self._objects: dict[tuple[str, str], tuple[str, Any]] = {}
        self.engine = self._engine()

    def _engine(self) -> Engine:
        return Engine(
            finder=FakeCgroupFinder(self.cgroups),
            maps=self.maps,
            state_path=self.state,
            limits=self.limits,
        )

    def _new_container(self, with_cgroup: bool) -> str:
        self.counter += 1
        cid = f"containerd://{self.counter:04x}"
        if with_cgroup:
            self.cgroups[cid] = 10_000 + self.counter
        else:
            self.waiting.append(cid)
        return cid

    def _drop_container(self, cid: str) -> None:
        self.cgroups.pop(cid, None)
        if cid in self.waiting:
            self.waiting.remove(cid)

    def apply(self, event: tuple[Any, ...]) -> None:
        match event:
            case ("pod", name, ns, labels, image):
                if name in self.pods:  # relabel (a pod never changes namespace)
                    self.pods[name].labels = dict(labels)
                else:  # a new pod, with its first container running
                    pod = self.pods[name] = ModelPod(ns, dict(labels))
                    pod.containers["main"] = (self._new_container(True), image)
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
            case ("restart_container", name, cname, with_cgroup):
                pod = self.pods.get(name)
                if pod is not None and cname in pod.containers:
                    old, image = pod.containers[cname]
                    self._drop_container(old)
                    pod.containers[cname] = (self._new_container(with_cgroup), image)
            case ("cgroup_appears", i):
                if self.waiting:
                    cid = self.waiting.pop(i % len(self.waiting))
                    self.cgroups[cid] = 20_000 + int(cid.rsplit("/", 1)[1], 16)
            case ("policy", name, kind, ns, spec):
                old = self.policies.get(name)
                if old is not None and (old.kind, old.namespace) == (kind, ns):
                    old.spec = spec  # an update of the same object
                else:
                    self.counter += 1
                    self.policies[name] = ModelPolicy(f"uid-{self.counter}", kind, ns, spec)
            case ("policy_delete", name):
                self.policies.pop(name, None)
            case ("restart",):
                self.engine = self._engine()
            case ("fault", method, exc):
                self.maps.fail_next(method, exc)
            case _:
                raise AssertionError(f"unknown event {event!r}")

    # --- what the engine is given: API objects, shuffled ---------------------------------

    def _object(self, kind: str, name: str, state: str, build: Callable[[], Any]) -> Any:
        """The same object as last time while nothing about it changed, as the agent's
        store hands them out (the engine may memoise on object identity)."""
        hit = self._objects.get((kind, name))
        if hit is None or hit[0] != state:
            hit = self._objects[(kind, name)] = (state, build())
        return hit[1]

    def api_objects(self, rnd: random.Random) -> tuple[list[Policy], list[Pod]]:
        policies = []
        for name in sorted(self.policies):
            p = self.policies[name]
            metadata = {"name": name, "uid": p.uid}
            if p.kind == NAMESPACED:
                metadata["namespace"] = p.namespace
            body = {"kind": p.kind, "metadata": metadata, "spec": p.spec}
            policies.append(
                self._object("policy", name, repr(body), lambda body=body: parse_policy(body))
            )
        pods = []
        for name, pod in self.pods.items():
            statuses = [
                {"name": c, "image": image, "containerID": cid, "state": {"running": {}}}
                for c, (cid, image) in pod.containers.items()
            ]
            rnd.shuffle(statuses)
            body = {
                "metadata": {
                    "name": name,
                    "namespace": pod.namespace,
                    "uid": f"pod-{pod.namespace}-{name}",
                    "labels": dict(pod.labels),
                },
                "status": {"qosClass": "BestEffort", "containerStatuses": statuses},
            }
            state = repr(
                (pod.namespace, sorted(pod.labels.items()), sorted(pod.containers.items()))
            )
            pods.append(self._object("pod", name, state, lambda body=body: parse_pod(body)))
        if rnd.random() < 0.25:  # now and then the policies come in another order
            rnd.shuffle(policies)
        rnd.shuffle(pods)
        return policies, pods

    def reconcile(self, rnd: random.Random) -> ReconcileResult:
        return self.engine.reconcile(*self.api_objects(rnd))

    def wrong_policies(self) -> set[str]:
        """UIDs of filtered policies whose map does not hold what the model says."""
        kernel = self.maps.contents()
        wrong = set()
        for uid, (want, _) in model(self.policies, self.pods, self.cgroups).items():
            pid = self.engine.policy_id(uid)
            if pid is None or kernel.get(pid) != want:
                wrong.add(uid)
        return wrong

    # --- the check ------------------------------------------------------------------------

    def check(self, result: ReconcileResult) -> None:
        expected = model(self.policies, self.pods, self.cgroups)
        limit = self.limits.max_cgroups_per_policy
        kernel = self.maps.contents()

        pids: dict[str, int] = {}
        for uid in expected:
            pid = self.engine.policy_id(uid)
            assert pid is not None and 0 < pid < 2**32, (uid, pid)
            pids[uid] = pid
        assert len(set(pids.values())) == len(pids), "policy IDs must be unique"
        for p in self.policies.values():
            if p.uid not in expected:
                assert self.engine.policy_id(p.uid) is None, "unfiltered policies get no ID"

        # IDs: stable per policy while it stays filtered, and a policy that gets an ID gets
        # one higher than any handed out before (freed IDs are not reused before a wrap)
        for uid, pid in pids.items():
            if uid in self.ids_live:
                assert self.ids_live[uid] == pid, "a policy keeps its ID"
            else:
                assert pid > self.highest_id, "IDs are never reused"
        self.ids_live = dict(pids)
        self.highest_id = max([self.highest_id, *pids.values()])

        # kernel == model, and no map without a live filtered policy
        assert set(kernel) == set(pids.values())
        over_limit = set()
        for uid, (want, _) in expected.items():
            held = kernel[pids[uid]]
            if len(want) <= limit:
                assert held == want, (uid, held, want)
            else:
                over_limit.add(uid)
                assert held <= want and len(held) == limit, (uid, held, want)

        # the maps are sized to their content
        for m in self.maps.inner.values():
            n = len(m.entries)
            assert n <= m.max_entries <= max(limit, 8)
            assert m.max_entries <= 8 or n > m.max_entries // 8, (n, m.max_entries)

        # what is reported
        expected_pending = set().union(*(p for _, p in expected.values()))
        assert {ref.container_id for ref in result.pending} == expected_pending
        statuses = {s.uid: s for s in result.statuses}
        assert set(statuses) == {p.uid for p in self.policies.values()}
        for uid, status in statuses.items():
            assert status.policy_id == pids.get(uid, 0)
            assert (status.error is not None) == (uid in over_limit), status
            if uid in expected:
                assert status.pending == len(expected[uid][1])
        assert len(result.errors) == len(over_limit)
        assert result.converged == (not expected_pending and not over_limit)

        # the state file names exactly the live filtered policies
        on_disk = {r.uid: r.policy_id for r in statefile.load(self.state)}
        assert on_disk == pids


# --- the tests ------------------------------------------------------------------------------


Batch = list[tuple[Any, ...]]


@SETTINGS
@given(
    limit=st.sampled_from([32768, 3]),
    batches=st.lists(BATCH, min_size=1, max_size=25),
    rnd=st.randoms(use_true_random=False),
)
def test_maps_follow_the_model(limit: int, batches: list[Batch], rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "state.json", limit)
        for batch in batches:
            for event in batch:
                world.apply(event)
            world.check(world.reconcile(rnd))
            if ("restart",) in batch:
                # right after a restart has caught up, another restart adopts what is
                # there without a single write
                world.apply(("restart",))
                world.maps.reset_counts()
                result = world.reconcile(rnd)
                assert world.maps.writes == 0
                world.check(result)


@SETTINGS
@given(
    limit=st.sampled_from([32768, 2]),
    snapshot=SNAPSHOT,
    rnd=st.randoms(use_true_random=False),
)
def test_snapshot_follows_the_model(
    limit: int, snapshot: tuple[Batch, Batch], rnd: random.Random
) -> None:
    pods, policies = snapshot
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "state.json", limit)
        for event in [*pods, *policies]:
            world.apply(event)
        world.check(world.reconcile(rnd))
        world.apply(("restart",))
        world.maps.reset_counts()
        result = world.reconcile(rnd)
        assert world.maps.writes == 0
        world.check(result)


@SETTINGS
@given(batches=st.lists(BATCH, min_size=1, max_size=15), rnd=st.randoms(use_true_random=False))
def test_reconcile_is_idempotent(batches: list[Batch], rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "state.json", 32768)
        for batch in batches:
            for event in batch:
                world.apply(event)
            world.reconcile(rnd)
        world.maps.reset_counts()
        again = world.reconcile(rnd)
        assert again.operations == 0 and world.maps.writes == 0
        world.engine.check_drift()
        again = world.reconcile(rnd)
        assert again.operations == 0 and world.maps.writes == 0
        world.check(again)


@SETTINGS
@given(
    batches=st.lists(BATCH_WITH_FAULTS, min_size=1, max_size=25),
    rnd=st.randoms(use_true_random=False),
)
def test_failed_writes_are_reported_and_repaired(batches: list[Batch], rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "state.json", 32768)
        for batch in batches:
            for event in batch:
                world.apply(event)
            raised = world.maps.faults_raised
            result = world.reconcile(rnd)
            # every map the kernel holds has an owner on disk, even after a failure
            owners = {r.policy_id for r in statefile.load(world.state)}
            assert set(world.maps.inner) <= owners
            if world.maps.faults_raised != raised:
                assert result.errors, "a failed write must be reported"
                # never silent: every policy whose map is not what it should be has an error
                errors = {s.uid for s in result.statuses if s.error is not None}
                assert world.wrong_policies() <= errors
                world.maps.clear_faults()
                result = world.reconcile(rnd)  # ... and repaired by the next call
            else:
                assert result.errors == ()
            world.check(result)
