"""tests/vm runs INSIDE the VM that tpfilter_dev.vm boots (Debian's stock kernel: kprobes,
BPF LSM, fmod_ret). On the host these files are not collected: tests/kernel/test_vm_suite.py
boots the VM and runs this directory there, failing if any guest test fails.

Fixtures for guest tests: ``env`` (a started ProgramManager, per module), ``cgroups``
(scratch "containers"), ``loaded`` (env, emptied after the test), and the helpers
``run_py(cgroup or None, statement) -> exit status``, ``policy(name, **spec)`` and
``load(env, policy, policy_id)``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tpfilter_dev.vm import IN_VM_ENV

if not os.environ.get(IN_VM_ENV):
    collect_ignore_glob = ["test_*.py"]
else:  # the kernel tests' helpers (scratch cgroups, pin dirs, a started ProgramManager)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
    import subprocess
    from collections.abc import Callable, Iterator
    from typing import Any

    import pytest
    from kernelkit import Cgroups, Env, cgroup2_mount, emptied_after, program_env

    from tpfilter.models import Policy, parse_policy
    from tpfilter_dev import contain

    # A Python snippet's exit status: the errno of what it tried, 0 if it worked (-9: killed).
    TRY = (
        "import os, sys, socket\ntry:\n    {}\nexcept OSError as e:\n    sys.exit(e.errno)\n"
        "sys.exit(0)\n"
    )

    def _run_py(cgroup: Path | None, statement: str) -> int:
        """Run ``statement`` in a process of ``cgroup`` (a new PID namespace, as a runtime
        starts a container's) or, for None, on the host; its exit status (TRY)."""
        command = ["/usr/bin/python3", "-S", "-c", TRY.format(statement)]
        argv = command if cgroup is None else contain.argv(cgroup, command, pid_ns="new")
        return subprocess.run(argv, capture_output=True, timeout=120).returncode

    def _policy(name: str, **spec: Any) -> Policy:
        """A TracingPolicy selecting pods labelled app=<name> (the test installs which
        cgroups that is: ``env.maps.install(policy_id, {cgroup_id})``)."""
        return parse_policy(
            {
                "kind": "TracingPolicy",
                "metadata": {"name": name, "uid": name},
                "spec": {"podSelector": {"matchLabels": {"app": name}}, **spec},
            }
        )

    def _load(env: Env, p: Policy, policy_id: int) -> None:
        """Sync the agent's ProgramManager to exactly ``p``; it must load."""
        (status,) = env.manager.sync([(p, policy_id)]).values()
        assert status.state == "loaded", status

    @pytest.fixture
    def run_py() -> Callable[[Path | None, str], int]:
        return _run_py

    @pytest.fixture
    def policy() -> Callable[..., Policy]:
        return _policy

    @pytest.fixture
    def load() -> Callable[[Env, Policy, int], None]:
        return _load

    @pytest.fixture
    def loaded(env: Env) -> Iterator[Env]:
        """The module's env, emptied (no policy, no event) after the test."""
        with emptied_after(env) as e:
            yield e

    @pytest.fixture(scope="module")
    def env() -> Iterator[Env]:
        """A started ProgramManager with BPF LSM probed (Override), one compile a module."""
        with program_env(probe_lsm=True) as e:
            yield e

    @pytest.fixture(scope="module")
    def cgroups(env: Env) -> Iterator[Cgroups]:
        """Scratch cgroup2 directories ("containers"), removed after the module."""
        mount = cgroup2_mount()
        assert mount is not None
        made = Cgroups(mount)
        try:
            yield made
        finally:
            made.close()
