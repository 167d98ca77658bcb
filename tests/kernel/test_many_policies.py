"""Thousands of exec policies on one hook, each enforcing only where it selects.

Before the candidate index a hook held at most 128 policies and every exec ran the filter
check of each. Here ``TPFILTER_MANY_POLICIES`` (default 10,000) Sigkill policies are
loaded on sched/sched_process_exec, policy i selecting cgroup i mod ``CGROUPS`` (so each
cgroup is selected by N / CGROUPS policies, within the per-task bound) and killing only
its own binary. For a sample of policies, each binary is exec'd in its policy's cgroup
(killed), in another selected cgroup (runs), in a cgroup no policy selects (runs) and on
the host (runs). Maps and index are written as the engine writes them (index first).

Every Sigkill policy also requires the exec'd path to be under this module's directory
(matchArgs Prefix), so nothing else on the machine can be killed.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

from kernelkit import Env, kernel_marks, run_in_cgroup, skip_reason

from tpfilter.models import Policy, parse_policy

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)

N = int(os.environ.get("TPFILTER_MANY_POLICIES", "10000"))
CGROUPS = max(1, min(500, N // 20))
SAMPLE = 12


def kill_own_binary(root: Path, i: int) -> Policy:
    spec: dict[str, Any] = {
        "podSelector": {"matchLabels": {"many": str(i)}},
        "tracepoints": [
            {
                "subsystem": "sched",
                "event": "sched_process_exec",
                "args": [{"index": 4, "type": "string"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 4, "operator": "Prefix", "values": [f"{root}/"]}],
                        "matchBinaries": [{"operator": "In", "values": [f"{root}/bin-{i}"]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ],
    }
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": f"many-{i}", "uid": f"many-{i}"},
            "spec": spec,
        }
    )


def test_many_exec_policies_each_enforce_in_their_own_cgroup_only(
    loaded: Env, cgroups: Any
) -> None:
    env = loaded
    made = [cgroups() for _ in range(CGROUPS + 1)]
    selected, (unselected, _) = made[:CGROUPS], made[CGROUPS]
    t0 = time.monotonic()
    env.maps.install_many([(i + 1, {selected[i % CGROUPS][1]}, 8) for i in range(N)])
    t1 = time.monotonic()
    statuses = env.manager.sync([(kill_own_binary(env.root, i), i + 1) for i in range(N)])
    t2 = time.monotonic()
    bad = [s for s in statuses.values() if s.state != "loaded"]
    assert not bad, bad[:3]
    print(
        f"{N} policies on {CGROUPS} cgroups: maps+index {t1 - t0:.1f} s, programs {t2 - t1:.1f} s"
    )

    rnd = random.Random(N)
    for i in [0, N - 1, *rnd.sample(range(N), min(SAMPLE, N))]:
        binary = env.root / f"bin-{i}"
        if not binary.exists():
            shutil.copy("/usr/bin/true", binary)
        own = selected[i % CGROUPS][0]
        other = selected[(i + 1) % CGROUPS][0]
        assert run_in_cgroup([binary], own) == -9, f"policy {i} in its own cgroup"
        if CGROUPS > 1:
            assert run_in_cgroup([binary], other) == 0, f"policy {i} in another selected cgroup"
        assert run_in_cgroup([binary], unselected) == 0, f"policy {i} in an unselected cgroup"
        assert run_in_cgroup([binary], None) == 0, f"policy {i} on the host"

    # Deleting one policy's map stops it at once, its cgroup neighbours keep enforcing.
    i = N - 1
    env.maps.delete(i + 1)
    assert run_in_cgroup([env.root / f"bin-{i}"], selected[i % CGROUPS][0]) == 0
    j = i - CGROUPS if i >= CGROUPS else None
    if j is not None:
        shutil.copy("/usr/bin/true", env.root / f"bin-{j}")
        assert run_in_cgroup([env.root / f"bin-{j}"], selected[j % CGROUPS][0]) == -9
