"""Which hook kinds this node runs, and that a policy needing a missing one is reported.

The kprobe and LSM tests run the seed policy's hook kinds where the kernel can load them
and skip, naming the missing feature, where it cannot (this CI machine: no kprobes, BPF
LSM programs refused with EPERM).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from tpfilter.models import parse_policy
from tpfilter.programs.btf import KernelBtf
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.kprobes import KprobeHooks
from tpfilter.programs.plan import NodeEnv
from tpfilter.programs.probe import NodeFeatures, probe_features
from tpfilter.programs.tracefs import read_format, syscall_numbers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to probe BPF program types"),
]


@pytest.fixture(scope="module")
def features() -> NodeFeatures:
    return probe_features(lsm=True)


def _env(features: NodeFeatures) -> NodeEnv:
    tracefs = features.tracefs
    return NodeEnv(
        tracepoint_format=lambda s, e: read_format(tracefs, s, e) if tracefs else None,
        syscall_numbers=syscall_numbers(),
        kprobes=features.kprobes,
        lsm=features.lsm,
        tracepoints=features.tracepoints,
    )


def test_tracepoints_are_available(features: NodeFeatures) -> None:
    assert features.tracepoints is None
    assert features.tracefs is not None


def test_seed_policy_with_kprobe_override(features: NodeFeatures) -> None:
    """Where the node has kprobes, the seed compiles iff BPF LSM programs load (its
    Override's mechanism); loading it is tests/vm/test_seed_policy.py's (a stock kernel)."""
    if features.kprobes is not None:
        pytest.skip(f"missing kernel feature: kprobes ({features.kprobes})")
    seed = parse_policy(yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text()))
    env = replace(_env(features), kernel=KernelBtf.load_or_none(), kprobe_hook=KprobeHooks())
    plan = compile_spec(dict(seed.spec.model_extra or {}), env)
    assert plan.ok == (features.lsm is None), plan.unsupported


def test_lsm_policy(features: NodeFeatures) -> None:
    if features.lsm is not None:
        pytest.skip(f"missing kernel feature: BPF LSM programs ({features.lsm})")
    policy = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "data/valid/lsmhook-file-open.yaml").read_text()
    )
    env = replace(_env(features), kernel=KernelBtf.load_or_none(), kprobe_hook=KprobeHooks())
    plan = compile_spec(policy["spec"], env)
    if features.kprobes is not None:  # lsmhooks are evaluated by a kprobe at security_<hook>
        assert not plan.ok and any(features.kprobes in r for r in plan.unsupported)
        return
    # what this policy asks beyond the programs is named: imaHash (its matchBinaries runs
    # on every hook type since stop 18: tpfilter.programs.binsel)
    assert not plan.ok
    assert all("imaHash" in r for r in plan.unsupported), plan.unsupported
    selector = policy["spec"]["lsmhooks"][0]["selectors"][0]
    # without it, it compiles against this kernel's BTF: file_open at security_file_open,
    # the binary filter a task filter of the selector
    del selector["matchActions"][0]["imaHash"]
    plan = compile_spec(policy["spec"], env)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert (cfg.name, cfg.override_lsm) == ("kprobe/security_file_open", "file_open")
    assert cfg.selectors[0].task, cfg.selectors[0]


def test_missing_hook_kinds_are_reported_with_the_reason(features: NodeFeatures) -> None:
    seed = parse_policy(yaml.safe_load((EXAMPLES / "seed-policy.yaml").read_text()))
    plan = compile_spec(dict(seed.spec.model_extra or {}), _env(features))
    assert not plan.ok
    if features.kprobes is not None:
        assert any(features.kprobes in r for r in plan.unsupported)
