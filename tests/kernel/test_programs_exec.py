"""The policy programs on the real kernel, as root: kill, spare, attribute, forget.

One ProgramManager (one bcc compile) serves the module; each test loads its policies with
``sync`` and the fixture syncs an empty list afterwards. Processes run in fresh cgroups
under the cgroup v2 mount (the child writes its PID to cgroup.procs before exec), the
filter maps live in a unique pin dir, and the "binaries" are copies of /usr/bin/true and
friends at unique paths. Every Sigkill policy here also requires the exec'd path to be
under the test's own directory (matchArgs Prefix), so even a bug cannot kill anything
else on the machine.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from kernelkit import Cgroups, Env, kernel_marks, run_in_cgroup, skip_reason

from tpfilter.models import Policy, parse_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)


def binary(env: Env, name: str, source: str = "/usr/bin/true") -> Path:
    path = env.root / name
    if not path.exists():
        shutil.copy(source, path)
    return path


def run(path: Path, cgroup: Path | None, *args: str) -> int:
    """Exec ``path`` (moved into ``cgroup`` before the exec); its return code (-9: killed)."""
    return run_in_cgroup([path, *args], cgroup)


def allow_only(env: Env, name: str, allowed: list[Path], *, labels: dict[str, str]) -> Policy:
    """The seed's intent on the exec tracepoint, limited to this test's directory."""
    return parse_policy(
        {
            "apiVersion": "cilium.io/v1alpha1",
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": f"uid-{name}"},
            "spec": {
                "podSelector": {"matchLabels": labels},
                "tracepoints": [
                    {
                        "subsystem": "sched",
                        "event": "sched_process_exec",
                        "args": [{"index": 4, "type": "string"}],
                        "selectors": [
                            {
                                "matchArgs": [
                                    {"index": 4, "operator": "Prefix", "values": [f"{env.root}/"]}
                                ],
                                "matchBinaries": [
                                    {"operator": "NotIn", "values": [str(p) for p in allowed]}
                                ],
                                "matchActions": [{"action": "Sigkill"}],
                            }
                        ],
                    }
                ],
            },
        }
    )


def test_denied_binary_is_killed_allowed_one_runs(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    ok, bad = binary(env, "allowed-a"), binary(env, "denied-a")
    env.maps.install(11, {cg_id}, max_entries=8)
    status = env.manager.sync([(allow_only(env, "p-a", [ok], labels={"app": "a"}), 11)])
    assert status["uid-p-a"].state == "loaded", status

    assert run(bad, cg) == -9
    assert run(ok, cg) == 0


def test_killed_before_it_runs_its_own_code(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    ok = binary(env, "touch-allowed", "/usr/bin/touch")
    bad = binary(env, "touch-denied", "/usr/bin/touch")
    env.maps.install(12, {cg_id}, max_entries=8)
    env.manager.sync([(allow_only(env, "p-touch", [ok], labels={"app": "t"}), 12)])

    marker_bad, marker_ok = env.root / "marker-bad", env.root / "marker-ok"
    assert run(bad, cg, str(marker_bad)) == -9
    assert not marker_bad.exists()  # touch never got to create it
    assert run(ok, cg, str(marker_ok)) == 0
    assert marker_ok.exists()


def test_unselected_cgroup_and_host_are_untouched(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    (selected, sel_id), (other, _) = cgroups(), cgroups()
    ok, bad = binary(env, "allowed-b"), binary(env, "denied-b")
    env.maps.install(13, {sel_id}, max_entries=8)
    env.manager.sync([(allow_only(env, "p-b", [ok], labels={"app": "b"}), 13)])

    assert run(bad, other) == 0
    assert run(bad, None) == 0  # the test's own (host) cgroup
    assert run(bad, selected) == -9


def test_two_policies_act_independently(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    (cg1, id1), (cg2, id2) = cgroups(), cgroups()
    one, two = binary(env, "only-one"), binary(env, "only-two")
    env.maps.install(21, {id1}, max_entries=8)
    env.maps.install(22, {id2}, max_entries=8)
    statuses = env.manager.sync(
        [
            (allow_only(env, "p-one", [one], labels={"app": "one"}), 21),
            (allow_only(env, "p-two", [two], labels={"app": "two"}), 22),
        ]
    )
    assert {s.state for s in statuses.values()} == {"loaded"}

    assert (run(one, cg1), run(two, cg1)) == (0, -9)
    assert (run(one, cg2), run(two, cg2)) == (-9, 0)


def test_deleting_the_policy_stops_enforcement_at_once(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    ok, bad = binary(env, "allowed-c"), binary(env, "denied-c")
    env.maps.install(14, {cg_id}, max_entries=8)
    keep = allow_only(env, "p-keep", [ok, bad], labels={"app": "k"})
    gone = allow_only(env, "p-gone", [ok], labels={"app": "c"})
    env.manager.sync([(keep, 14), (gone, 14)])
    assert run(bad, cg) == -9

    statuses = env.manager.sync([(keep, 14)])  # p-gone deleted
    assert set(statuses) == {"uid-p-keep"}
    assert run(bad, cg) == 0  # the very next exec
    assert run(ok, cg) == 0


def test_changing_the_policy_takes_effect_and_is_idempotent(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    a, b = binary(env, "change-a"), binary(env, "change-b")
    env.maps.install(15, {cg_id}, max_entries=8)
    env.manager.sync([(allow_only(env, "p-change", [a], labels={"app": "x"}), 15)])
    assert (run(a, cg), run(b, cg)) == (0, -9)
    env.manager.sync([(allow_only(env, "p-change", [b], labels={"app": "x"}), 15)])
    assert (run(a, cg), run(b, cg)) == (-9, 0)
    again = env.manager.sync([(allow_only(env, "p-change", [b], labels={"app": "x"}), 15)])
    assert again["uid-p-change"].state == "loaded"
    assert (run(a, cg), run(b, cg)) == (-9, 0)


def test_events_carry_the_pod_binary_policy_and_action(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    (cg, cg_id), (cg2, cg2_id) = cgroups(), cgroups()
    env.pods[cg_id] = ("shop", "web-1", "nginx")
    env.pods[cg2_id] = ("shop", "web-2", "sidecar")
    ok, bad = binary(env, "allowed-e"), binary(env, "denied-e")
    env.maps.install(16, {cg_id, cg2_id}, max_entries=8)
    env.manager.sync([(allow_only(env, "p-events", [ok], labels={"app": "e"}), 16)])

    assert run(bad, cg) == -9
    assert run(bad, cg2) == -9
    assert run(ok, cg) == 0  # allowed: no event (no selector matched)
    events = env.lines()
    assert len(events) == 2, events
    first, second = events
    assert first["node"] == "test-node"
    assert (first["namespace"], first["pod"], first["container"]) == ("shop", "web-1", "nginx")
    assert (second["pod"], second["container"]) == ("web-2", "sidecar")
    assert first["binary"] == str(bad)
    assert first["args"] == [str(bad)]
    assert first["policy"] == "TracingPolicy/p-events"
    assert first["action"] == "sigkill"
    assert first["hook"] == "sched/sched_process_exec"
    assert first["cgroup_id"] == cg_id
    assert first["time"].endswith("Z")
    totals = env.manager.action_totals()
    assert totals[("TracingPolicy/p-events", "sched/sched_process_exec", "sigkill")] == 2


def test_unresolved_cgroup_still_gives_an_event(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    bad = binary(env, "denied-u")
    env.maps.install(17, {cg_id}, max_entries=8)
    env.manager.sync([(allow_only(env, "p-unres", [], labels={"app": "u"}), 17)])
    # An empty allow list is refused by the compiler; use one that allows nothing here.
    statuses = env.manager.statuses()
    assert statuses["uid-p-unres"].state == "unsupported"
    env.manager.sync(
        [(allow_only(env, "p-unres", [env.root / "nothing"], labels={"app": "u"}), 17)]
    )
    assert run(bad, cg) == -9
    (event,) = env.lines()
    assert (event["namespace"], event["pod"], event["container"]) == (None, None, None)


def test_post_nopost_and_unsupported_policies_side_by_side(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, cg_id = cgroups()
    env.pods[cg_id] = ("ns", "pod", "c")
    tool = binary(env, "posted")
    env.maps.install(18, {cg_id}, max_entries=8)

    def policy(name: str, actions: list[dict[str, Any]], extra: dict[str, Any]) -> Policy:
        return parse_policy(
            {
                "kind": "TracingPolicy",
                "metadata": {"name": name, "uid": name},
                "spec": {
                    "podSelector": {"matchLabels": {"app": "p"}},
                    "tracepoints": [
                        {
                            "subsystem": "sched",
                            "event": "sched_process_exec",
                            "args": [
                                {"index": 4, "type": "data_loc"},
                                {"index": 5, "type": "int32"},
                            ],
                            "message": "a posted binary ran",
                            "tags": ["test", "exec"],
                            "selectors": [
                                {
                                    "matchArgs": [
                                        {"index": 4, "operator": "Postfix", "values": ["/posted"]}
                                    ],
                                    "matchActions": actions,
                                }
                            ],
                        }
                    ],
                    **extra,
                },
            }
        )

    seed = parse_policy(yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text()))
    statuses = env.manager.sync(
        [
            (policy("posting", [{"action": "Post"}], {}), 18),
            (policy("silent", [{"action": "NoPost"}], {}), 18),
            (policy("odd", [{"action": "Post"}], {"uprobes": [{"path": "/bin/sh"}]}), 18),
            (seed, 18),
        ]
    )
    assert statuses["posting"].state == "loaded"
    assert statuses["silent"].state == "loaded"
    assert statuses["odd"].state == "unsupported"
    assert "uprobes" in statuses["odd"].reasons[0]
    assert statuses[seed.uid].state == "unsupported"
    assert any("kprobe" in r for r in statuses[seed.uid].reasons)

    assert run(tool, cg) == 0
    events = env.lines()
    assert [e["policy"] for e in events] == ["TracingPolicy/posting"]
    assert events[0]["action"] == "post"
    assert events[0]["args"][0] == str(tool)
    assert events[0]["args"][1] > 0  # the pid
    assert (events[0]["message"], events[0]["tags"]) == ("a posted binary ran", ["test", "exec"])
    totals = env.manager.action_totals()
    assert totals[("TracingPolicy/silent", "sched/sched_process_exec", "matched")] == 1
    assert ("TracingPolicy/silent", "sched/sched_process_exec", "post") not in totals


def test_unfiltered_policy_applies_everywhere(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    cg, _ = cgroups()
    ok, bad = binary(env, "allowed-g"), binary(env, "denied-g")
    body = allow_only(env, "p-global", [ok], labels={}).model_dump(by_alias=True)
    body["spec"].pop("podSelector")
    policy = parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": "p-global", "uid": "g"},
            "spec": body["spec"],
        }
    )
    assert not policy.filtered
    statuses = env.manager.sync([(policy, 0)])
    assert statuses["g"].policy_id == 0
    assert run(bad, cg) == -9
    assert run(bad, None) == -9
    assert run(ok, None) == 0


def test_filtered_policy_without_an_id_is_pending_not_global(loaded: Env, cgroups: Cgroups) -> None:
    env = loaded
    bad = binary(env, "denied-h")
    policy = allow_only(env, "p-noid", [env.root / "none"], labels={"app": "h"})
    statuses = env.manager.sync([(policy, 0)])
    assert statuses["uid-p-noid"].state == "pending"
    assert run(bad, None) == 0


def test_example_tracepoint_policy_loads(loaded: Env) -> None:
    example = yaml.safe_load((EXAMPLES / "seed-policy-tracepoint.yaml").read_text())
    example["metadata"]["uid"] = "example"
    statuses = loaded.manager.sync([(parse_policy(example), 31)])
    assert statuses["example"].state == "loaded", statuses["example"]
    assert statuses["example"].hooks == ("sched/sched_process_exec",)


def test_metrics_endpoint_reports_actions_and_filter_maps(loaded: Env, cgroups: Cgroups) -> None:
    import urllib.request

    from tpfilter.programs import Metrics

    env = loaded
    cg, cg_id = cgroups()
    bad = binary(env, "denied-m")
    env.maps.install(19, {cg_id}, max_entries=8)
    env.manager.sync([(allow_only(env, "p-metrics", [env.root / "none"], labels={"app": "m"}), 19)])
    assert run(bad, cg) == -9

    metrics = Metrics()
    metrics.add_collector(env.manager._collect_metrics)
    metrics.serve(0, "127.0.0.1")
    try:
        port = metrics._server[0].server_port
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        metrics.close()
    policy = 'policy="TracingPolicy/p-metrics"'
    assert (
        'tpfilter_policy_actions_total{action="sigkill",hook="sched/sched_process_exec",'
        f"{policy}}} 1.0"
    ) in text
    assert f'tpfilter_policy_map_cgroups{{{policy},policy_id="19"}} 1.0' in text
    assert f'tpfilter_policy_map_memlock_bytes{{{policy},policy_id="19"}}' in text
    assert 'tpfilter_program_map_memlock_bytes{map="tpf_sels"}' in text
    assert "tpfilter_candidate_index_entries 1.0" in text
    usage = env.maps.index.usage()
    assert f"tpfilter_candidate_index_memlock_bytes {float(usage.memlock)}" in text
