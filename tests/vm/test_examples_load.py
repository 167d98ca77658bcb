"""Every policy under examples/ loads on a node with every kernel feature tpfilter uses
(Debian's stock kernel: kprobes, kretprobes, BPF LSM): the agent's own ProgramManager
compiles each one, attaches every hook it names and reports it ``loaded``, all of them at
once, and unloads them when they are gone. What each example then does is proved by the
feature's own guest tests (test_kprobe_hooks.py, test_seed_policy.py, ...)."""

from __future__ import annotations

from pathlib import Path

import yaml
from kernelkit import Env

from tpfilter.models import parse_policy

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
FIRST_ID = 40


def test_every_example_loads_with_all_its_hooks(env: Env) -> None:
    assert len(EXAMPLES) >= 2, EXAMPLES  # an empty glob would prove nothing
    policies = []
    for i, path in enumerate(EXAMPLES):
        doc = yaml.safe_load(path.read_text())
        doc["metadata"]["uid"] = f"example-{i}"  # as the API server would give each its own
        policies.append(parse_policy(doc))
    wanted = [(policy, FIRST_ID + i) for i, policy in enumerate(policies)]
    statuses = env.manager.sync(wanted)
    for path, policy in zip(EXAMPLES, policies, strict=True):
        status = statuses[policy.uid]
        assert status.state == "loaded", (path.name, status)
        assert status.hooks, (path.name, status)
    assert env.manager.sync([]) == {}
