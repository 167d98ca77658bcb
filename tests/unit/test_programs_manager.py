"""ProgramManager.sync against a fake loader: statuses, and the order of map writes.

The invariant checked after *every* write: a program reading the hook at that moment sees
every policy that is loaded both before and after the sync, and each entry it can reach
(an unfiltered slot, or a filtered policy's entries under (hook, policy ID)) points at a
config whose selectors are written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from test_programs_compiler import FORMATS, fmt

from tpfilter.models import Policy, parse_policy
from tpfilter.programs import layout
from tpfilter.programs.events import RawEvent, event_record
from tpfilter.programs.manager import ProgramManager
from tpfilter.programs.metrics import Metrics, is_map_full
from tpfilter.programs.plan import HookConfig
from tpfilter.programs.probe import NodeFeatures
from tpfilter.programs.tasksel import needs_records


@dataclass
class FakeRecords:
    enabled: bool = False
    switches: list[bool] = field(default_factory=list)
    fail: str = ""

    def enable(self) -> None:
        if self.fail:
            raise OSError(self.fail)
        if not self.enabled:
            self.switches.append(True)
        self.enabled = True

    def disable(self) -> None:
        if self.enabled:
            self.switches.append(False)
        self.enabled = False


@dataclass
class FakePrograms:
    hooks: dict[int, int] = field(default_factory=dict)
    slots: dict[tuple[int, int], int] = field(default_factory=dict)
    npol: dict[int, int] = field(default_factory=dict)
    pcfg: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    configs: set[int] = field(default_factory=set)
    attached: set[str] = field(default_factory=lambda: {"sched/sched_process_exec"})
    # policies that must stay visible, each as the set of its acceptable config IDs
    must_see: list[set[int]] = field(default_factory=list)
    writes: int = 0
    records: FakeRecords = field(default_factory=FakeRecords)

    def reachable(self, hook: int) -> list[int | None]:
        """What a program sees on ``hook``: unfiltered slots, then filtered policies'."""
        out = [self.slots.get((hook, i)) for i in range(self.hooks.get(hook, 0))]
        if self.npol.get(hook, 0) or self.hooks.get(hook, 0):
            for (h, _pid), configs in sorted(self.pcfg.items()):
                if h == hook:
                    out += configs
        return out

    def check(self) -> None:
        self.writes += 1
        visible_all: set[int | None] = set()
        for hook in self.hooks:
            visible = self.reachable(hook)
            for config in visible:
                assert config is None or config in self.configs, "entry -> missing config"
            visible_all |= set(visible)
        for alternatives in self.must_see:
            assert alternatives & visible_all, "a surviving policy vanished mid-sync"

    def attach(self, tp: str, cfg: object = None) -> None:
        self.attached.add(tp)

    def detach(self, tp: str) -> None:
        self.attached.discard(tp)

    def write_config(self, config_id: int, cfg: HookConfig) -> None:
        # a change selector never runs without the process records it compares with
        assert self.records.enabled or not needs_records([cfg])
        self.configs.add(config_id)
        self.check()

    def delete_config(self, config_id: int, cfg: HookConfig) -> None:
        self.configs.discard(config_id)
        self.check()

    def write_slot(self, hook: int, slot: int, config: int, policy_id: int, cfg: Any) -> None:
        self.slots[(hook, slot)] = config
        self.check()

    def delete_slot(self, hook: int, slot: int) -> None:
        self.slots.pop((hook, slot), None)
        self.check()

    def write_policy_hook(self, hook: int, policy_id: int, entries: Any) -> None:
        self.pcfg[(hook, policy_id)] = [config for config, _cfg in entries]
        self.check()

    def delete_policy_hook(self, hook: int, policy_id: int) -> None:
        self.pcfg.pop((hook, policy_id), None)
        self.check()

    def write_hook(self, hook: int, n: int, npol: int, *masks: int) -> None:
        self.hooks[hook] = n
        self.npol[hook] = npol
        self.check()

    def read_stats(self) -> dict[tuple[int, int], int]:
        return {}

    def delete_stats(self, ids: Any) -> None:
        pass

    def map_memlock(self) -> dict[str, int]:
        return {}


def manager() -> tuple[ProgramManager, FakePrograms]:
    m = ProgramManager(
        pin_dir=Path("/nonexistent"),
        node_name="n",
        resolve=lambda c: None,
        events_out=None,
        metrics=Metrics(),
    )
    fake = FakePrograms()
    m._programs = fake
    m._unavailable = None
    m.features = NodeFeatures(None, "no kprobes", "no override", "no lsm", Path("/x"))
    m._format = fmt  # type: ignore[method-assign]
    return m, fake


def policy(
    name: str, binary: str = "/bin/x", *, filtered: bool = True, hook: str = "exec"
) -> Policy:
    tp: dict[str, Any] = {"subsystem": "sched", "event": "sched_process_exec"}
    if hook == "lseek":
        tp = {"subsystem": "syscalls", "event": "sys_enter_lseek"}
    else:
        tp["selectors"] = [{"matchBinaries": [{"operator": "NotIn", "values": [binary]}]}]
    spec: dict[str, Any] = {"tracepoints": [tp]}
    if filtered:
        spec["podSelector"] = {"matchLabels": {"app": name}}
    return parse_policy(
        {"kind": "TracingPolicy", "metadata": {"name": name, "uid": name}, "spec": spec}
    )


def visible(fake: FakePrograms, hook: int = layout.HOOK_EXEC) -> list[int]:
    return [c for c in fake.reachable(hook) if c is not None]


@pytest.mark.parametrize("filtered", [True, False])
def test_add_change_remove_keeps_survivors_visible_at_every_write(filtered: bool) -> None:
    m, fake = manager()
    st = m.sync([(policy(n, filtered=filtered), i + 1) for i, n in enumerate("abc")])
    assert {s.state for s in st.values()} == {"loaded"}
    a, b, c = visible(fake)
    # c's new config gets the next ID (new policies are written in name order: c, d).
    fake.must_see = [{a}, {c, c + 1}]
    # b removed, c changed (new config), a unchanged, d added
    m.sync(
        [
            (policy("a", filtered=filtered), 1),
            (policy("c", "/bin/y", filtered=filtered), 3),
            (policy("d", filtered=filtered), 4),
        ]
    )
    now = visible(fake)
    assert now[0] == a and len(now) == 3 and b not in now and c not in now
    assert b not in fake.configs and c not in fake.configs
    # entries past the count (unfiltered) or of removed policies (filtered) are deleted
    assert len(fake.pcfg if filtered else fake.slots) == 3
    assert not (fake.slots if filtered else fake.pcfg)


def test_sync_is_idempotent_and_writes_nothing_when_unchanged() -> None:
    m, fake = manager()
    m.sync([(policy("a"), 1)])
    writes = fake.writes
    m.sync([(policy("a"), 1)])
    assert fake.writes == writes


def test_policy_id_change_reloads() -> None:
    m, fake = manager()
    m.sync([(policy("a"), 1)])
    (first,) = visible(fake)
    m.sync([(policy("a"), 7)])
    (second,) = visible(fake)
    assert first != second and fake.configs == {second}


def test_filtered_policy_without_id_is_pending_and_unfiltered_gets_zero() -> None:
    m, fake = manager()
    st = m.sync([(policy("a"), 0), (policy("g", filtered=False), 99)])
    assert st["a"].state == "pending"
    assert st["g"].state == "loaded" and st["g"].policy_id == 0
    assert len(visible(fake)) == 1


def test_sys_enter_tracepoints_attach_and_detach_on_demand() -> None:
    m, fake = manager()
    m.sync([(policy("l", hook="lseek"), 1)])
    assert "syscalls/sys_enter_lseek" in fake.attached
    assert visible(fake, 8)
    m.sync([])
    assert fake.attached == {"sched/sched_process_exec"}
    assert fake.hooks[8] == 0 and not fake.slots and not fake.configs and not fake.pcfg


def test_unfiltered_policies_past_the_bound_are_errors_for_the_extra_ones_only() -> None:
    m, _fake = manager()
    many = [(policy(f"p{i:03d}", filtered=False), 0) for i in range(layout.MAX_ANY + 2)]
    st = m.sync(many)
    states = [st[p.uid].state for p, _ in many]
    assert states.count("loaded") == layout.MAX_ANY
    assert states[-2:] == ["error", "error"]
    assert "without a selector already loaded" in st[f"p{layout.MAX_ANY:03d}"].reasons[0]


def test_filtered_policies_have_no_per_hook_ceiling() -> None:
    m, fake = manager()
    many = [(policy(f"p{i:04d}"), i + 1) for i in range(1000)]
    st = m.sync(many)
    assert {s.state for s in st.values()} == {"loaded"}
    assert len(fake.pcfg) == 1000 and fake.npol[layout.HOOK_EXEC] == 1000


def test_too_many_entries_of_one_policy_on_one_hook_is_an_error() -> None:
    m, _fake = manager()
    tp = {"subsystem": "sched", "event": "sched_process_exec"}
    p = parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": "dup", "uid": "dup"},
            "spec": {
                "podSelector": {"matchLabels": {"a": "b"}},
                "tracepoints": [tp] * (layout.MAX_PER_HOOK + 1),
            },
        }
    )
    st = m.sync([(p, 1)])
    assert st["dup"].state == "error" and "at most" in st["dup"].reasons[0]
    ok = p.model_copy(update={"uid": "ok"})
    ok.spec.model_extra["tracepoints"] = [tp] * layout.MAX_PER_HOOK  # type: ignore[index]
    assert m.sync([(ok, 1)])["ok"].state == "loaded"


def test_unavailable_programs_report_every_hooked_policy() -> None:
    m, _ = manager()
    m._programs = None
    m._unavailable = "tracefs is not mounted"
    st = m.sync([(policy("a"), 1)])
    assert st["a"].state == "unsupported"
    assert "tracefs is not mounted" in st["a"].reasons[0]


def test_event_record() -> None:
    m, _ = manager()
    m.sync([(policy("a"), 5)])
    info = next(iter(m._infos.values()))
    raw = RawEvent(
        ktime_ns=1_000_000_000,
        cgroup_id=42,
        pid=10,
        tid=11,
        config=1,
        policy_id=5,
        hook=layout.HOOK_EXEC,
        sel=0,
        actions=3,
        flags=layout.EV_PATH_LONG,
        values=(10, 9, 0, 0, 0, 0, 0, 0),
        comm="x",
        path="/bin/z",
        string="",
    )
    rec = event_record(raw, node="n1", info=info, pod=("ns", "p", "c"), wall_offset_ns=0)
    assert rec["time"] == "1970-01-01T00:00:01.000000Z"
    assert (rec["namespace"], rec["pod"], rec["container"]) == ("ns", "p", "c")
    assert rec["action"] == "sigkill" and rec["policy"] == "TracingPolicy/a"
    assert rec["binary"] == "/bin/z" and rec["binary_truncated"] is True
    assert rec["hook"] == "sched/sched_process_exec"
    rec = event_record(raw, node="n1", info=None, pod=None, wall_offset_ns=0)
    assert rec["pod"] is None and rec["policy"] is None and rec["args"] == []


@pytest.mark.parametrize(
    ("error", "full"),
    [
        ("policy 3: new inner map (max_entries 8) cannot take cgroup 9 (E2BIG)", True),
        ("selects 9 containers, over the limit of 8 per policy; 1 are not filtered in", True),
        ("policy 3: 9 cgroup IDs do not fit in a new inner map of max_entries 8", True),
        ("policy 3: Update failed: EPERM", False),
    ],
)
def test_map_full_classification(error: str, full: bool) -> None:
    assert is_map_full(error) is full


def test_formats_fixture_is_used() -> None:
    assert ("sched", "sched_process_exec") in FORMATS


def test_pod_index_resolves_cgroups_to_pods() -> None:
    from tpfilter.interfaces import ContainerRef
    from tpfilter.pods import Container, Pod
    from tpfilter.programs.podindex import PodIndex

    class Finder:
        def cgroup_id(self, ref: ContainerRef) -> int | None:
            if ref.container_id == "containerd://bad":
                raise ValueError("malformed")
            return {"containerd://a": 100, "containerd://b": 200}.get(ref.container_id)

        def forget(self, ref: ContainerRef) -> None:
            pass

    def container(name: str, cid: str) -> Container:
        return Container(name=name, image="img", ref=ContainerRef("uid", "BestEffort", cid))

    pod = Pod(
        namespace="shop",
        name="web-1",
        uid="uid",
        containers=(
            container("nginx", "containerd://a"),
            container("side", "containerd://b"),
            container("new", "containerd://c"),  # no cgroup yet
            container("odd", "containerd://bad"),
        ),
    )
    index = PodIndex(Finder())
    index.update([pod])
    assert index(100) == ("shop", "web-1", "nginx")
    assert index(200) == ("shop", "web-1", "side")
    assert index(300) is None and len(index) == 2
    index.update([])
    assert index(100) is None


def test_process_records_live_as_long_as_a_policy_compares_with_them() -> None:
    from test_programs_tasksel import TaskKernel

    m, fake = manager()
    m._kernel = TaskKernel()
    changes = policy("uts-changes", hook="lseek")
    tp = changes.spec.model_extra["tracepoints"][0]  # type: ignore[index]
    tp["selectors"] = [{"matchNamespaceChanges": [{"operator": "In", "values": ["Uts"]}]}]
    plain = policy("plain")
    assert m.sync([(plain, 1)])["plain"].state == "loaded"
    assert fake.records.switches == []  # no change selector: no records, no cost
    statuses = m.sync([(plain, 1), (changes, 2)])
    assert statuses["uts-changes"].state == "loaded", statuses
    assert fake.records.switches == [True]
    m.sync([(plain, 1), (changes, 2)])  # unchanged: nothing switches
    m.sync([(plain, 1)])
    assert fake.records.switches == [True, False]


def test_records_that_cannot_be_made_fail_only_the_policies_that_need_them() -> None:
    from test_programs_tasksel import TaskKernel

    m, fake = manager()
    m._kernel = TaskKernel()
    fake.records.fail = "raw tracepoints refused"
    changes = policy("uts-changes", hook="lseek")
    tp = changes.spec.model_extra["tracepoints"][0]  # type: ignore[index]
    tp["selectors"] = [{"matchNamespaceChanges": [{"operator": "In", "values": ["Uts"]}]}]
    statuses = m.sync([(policy("plain"), 1), (changes, 2)])
    assert statuses["plain"].state == "loaded"
    assert statuses["uts-changes"].state == "error"
    assert "raw tracepoints refused" in statuses["uts-changes"].reasons[0]
