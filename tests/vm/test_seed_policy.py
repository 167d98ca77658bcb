"""The UNCHANGED seed policy (examples/seed-policy.yaml: a kprobe on
security_bprm_creds_for_exec, matchArgs NotEqual on the linux_binprm's file name, Override
argError -1) on Debian's stock kernel, loaded by the agent's own ProgramManager (one bcc
compile) with the filter map and candidate index written as the engine writes them.

Processes start as a runtime starts a container's (tpfilter_dev.contain: in the cgroup,
in a new PID namespace): there, execve("/usr/bin/true") fails with EPERM, while sleep and
cat run; a container of another cgroup, a node process that entered the selected cgroup
and a plain host process are untouched; deleting the policy lifts it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from kernelkit import Cgroups, Env

from tpfilter.models import parse_policy
from tpfilter_dev import contain

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed-policy.yaml"
POLICY_ID = 21


def run(
    cgroup: Path | None, *command: str, pid_ns: str = "new"
) -> subprocess.CompletedProcess[str]:
    argv = list(command) if cgroup is None else contain.argv(cgroup, command, pid_ns=pid_ns)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def selected(env: Env, cgroups: Cgroups) -> Path:
    cg, cg_id = cgroups()
    env.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    return cg


@pytest.fixture(scope="module")
def other(cgroups: Cgroups) -> Path:
    return cgroups()[0]


def seed() -> object:
    return parse_policy(yaml.safe_load(SEED.read_text()))


def test_before_the_policy_true_runs_in_the_selected_container(selected: Path) -> None:
    assert run(selected, "/usr/bin/true").returncode == 0


def test_seed_policy_loads_with_kprobe_and_lsm_override(env: Env, selected: Path) -> None:
    policy = seed()
    statuses = env.manager.sync([(policy, POLICY_ID)])
    status = statuses[policy.uid]  # type: ignore[attr-defined]
    assert status.state == "loaded", status
    assert status.hooks == (
        "kprobe/security_bprm_creds_for_exec (Override: BPF LSM bprm_creds_for_exec; kprobe)",
    )


def test_true_fails_with_eperm_in_the_selected_container(env: Env, selected: Path) -> None:
    got = run(selected, "/usr/bin/true")
    assert got.returncode == 127, (got.returncode, got.stderr)
    assert "[Errno 1] Operation not permitted" in got.stderr


@pytest.mark.parametrize("command", [["/usr/bin/sleep", "0"], ["/usr/bin/cat", "/dev/null"]])
def test_allowed_binaries_run_in_the_selected_container(
    env: Env, selected: Path, command: list[str]
) -> None:
    got = run(selected, *command)
    assert got.returncode == 0, got.stderr


def test_other_container_node_process_and_host_are_untouched(
    env: Env, selected: Path, other: Path
) -> None:
    assert run(other, "/usr/bin/true").returncode == 0  # a container the policy does not select
    # a process of the node (its PID namespace) that entered the selected cgroup
    assert run(selected, "/usr/bin/true", pid_ns="node").returncode == 0
    assert run(None, "/usr/bin/true").returncode == 0  # the host
    # and the policy still holds where it applies
    assert run(selected, "/usr/bin/true").returncode == 127


def test_deleting_the_policy_lifts_it(env: Env, selected: Path) -> None:
    assert env.manager.sync([]) == {}
    got = run(selected, "/usr/bin/true")
    assert got.returncode == 0, got.stderr
