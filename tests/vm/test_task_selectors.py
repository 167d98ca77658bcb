"""matchPIDs, matchNamespaces and matchCapabilities on a kprobe, on Debian's stock kernel:
the selector code is the tracepoints' (bpf/programs/tpf_task.h, run by the kprobe-typed
stage programs), so what tests/kernel/test_tasksel_on_kernel.py proves on a tracepoint is
proved here on a syscall kprobe (``lseek``, whence 4444: no normal program uses it).

Each filter is seen to kill the process it names and to spare the one it does not, so an
ignored or inverted filter fails. Processes run as a container's (tpfilter_dev.contain),
through ``unshare``/``setpriv`` for the namespaces and capabilities the test needs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, emptied_after
from test_changes_on_kernel import drop_effective
from test_programs_syscalls import LSEEK_4444, PYTHON
from test_tasksel_on_kernel import FORKED, KILLED_CHILD

from tpfilter.models import parse_policy
from tpfilter_dev import contain

POLICY_ID = 37


@pytest.fixture
def cg(env: Env, cgroups: Cgroups) -> Iterator[Path]:
    with emptied_after(env) as e:
        path, cg_id = cgroups()
        e.maps.install(POLICY_ID, {cg_id}, max_entries=8)
        yield path


def load(env: Env, name: str, **filters: Any) -> None:
    policy = parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {
                "podSelector": {"matchLabels": {"app": name}},
                "kprobes": [
                    {
                        "call": "sys_lseek",
                        "syscall": True,
                        "args": [{"index": 2, "type": "int", "label": "whence"}],
                        "selectors": [
                            {
                                "matchArgs": [
                                    {"index": 2, "operator": "Equal", "values": ["4444"]}
                                ],
                                **filters,
                                "matchActions": [{"action": "Sigkill"}],
                            }
                        ],
                    }
                ],
            },
        }
    )
    (status,) = env.manager.sync([(policy, POLICY_ID)]).values()
    assert status.state == "loaded", status
    assert any("kprobe" in h for h in status.hooks), status.hooks


def lseek(cgroup: Path, wrapper: Sequence[str] = (), pid_ns: str = "new", before: str = "") -> int:
    """lseek(4444) by python in the container, after the code ``before``."""
    code = before + LSEEK_4444
    argv = contain.argv(cgroup, [*wrapper, PYTHON, "-S", "-c", code], pid_ns=pid_ns)
    return subprocess.run(argv, timeout=300).returncode


def test_kprobe_match_namespaces_host_ns(env: Env, cg: Path) -> None:
    net = {"namespace": "Net", "values": ["host_ns"]}
    load(env, "kp-net-host", matchNamespaces=[{**net, "operator": "In"}])
    assert lseek(cg) == -9
    assert lseek(cg, ["unshare", "--net"]) == 0
    load(env, "kp-net-not-host", matchNamespaces=[{**net, "operator": "NotIn"}])
    assert lseek(cg) == 0
    assert lseek(cg, ["unshare", "--net"]) == -9


def test_kprobe_namespace_changes(env: Env, cg: Path) -> None:
    """matchNamespaceChanges on a kprobe, on Debian's kernel: the process records (made,
    kept by the fork/exit raw tracepoints, freed) and the change facts of the kprobe stages.
    `unshare` changes the namespace and then execs python: a change since the clone."""
    load(env, "kp-uts-changed", matchNamespaceChanges=[{"operator": "In", "values": ["Uts"]}])
    assert lseek(cg, ["unshare", "--uts"]) == -9
    assert lseek(cg, ["unshare", "--ipc"]) == 0
    assert lseek(cg) == 0
    load(env, "kp-not-uts", matchNamespaceChanges=[{"operator": "NotIn", "values": ["Uts"]}])
    assert lseek(cg, ["unshare", "--ipc"]) == -9
    assert lseek(cg, ["unshare", "--uts"]) == 0
    assert lseek(cg) == 0


def test_kprobe_capability_changes(env: Env, cg: Path) -> None:
    """matchCapabilityChanges on a kprobe: the process drops a capability from its effective
    set (capset) after its clone, then calls lseek."""
    admin = {"type": "Effective", "values": ["CAP_SYS_ADMIN"]}
    load(env, "kp-admin-changed", matchCapabilityChanges=[{**admin, "operator": "In"}])
    assert lseek(cg, before=drop_effective("CAP_SYS_ADMIN")) == -9
    assert lseek(cg, before=drop_effective("CAP_NET_RAW")) == 0
    assert lseek(cg) == 0


def test_kprobe_match_capabilities(env: Env, cg: Path) -> None:
    cap = {"type": "Effective", "values": ["CAP_SYS_ADMIN"]}
    no_admin = ["setpriv", "--bounding-set=-sys_admin"]
    load(env, "kp-cap-in", matchCapabilities=[{**cap, "operator": "In"}])
    assert lseek(cg) == -9
    assert lseek(cg, no_admin) == 0
    load(env, "kp-cap-notin", matchCapabilities=[{**cap, "operator": "NotIn"}])
    assert lseek(cg) == 0
    assert lseek(cg, no_admin) == -9
    load(
        env,
        "kp-nscap",
        matchCapabilities=[{**cap, "operator": "In", "isNamespaceCapability": True}],
    )
    assert lseek(cg) == 0
    assert lseek(cg, ["unshare", "--user", "--map-root-user"]) == -9


def test_kprobe_match_pids_in_its_own_pid_namespace(env: Env, cg: Path) -> None:
    nspid_1 = {"values": [1], "isNamespacePID": True}
    load(env, "kp-nspid-1", matchPIDs=[{**nspid_1, "operator": "In"}])
    assert lseek(cg) == -9
    assert lseek(cg, FORKED) == 0
    load(env, "kp-nspid-not-1", matchPIDs=[{**nspid_1, "operator": "NotIn"}])
    assert lseek(cg) == 0
    assert lseek(cg, FORKED) == KILLED_CHILD


def test_kprobe_follow_forks_in_the_namespace(env: Env, cg: Path) -> None:
    """Tetragon's example: not a descendant of the container's PID 1 (`kubectl exec`)."""
    holder = subprocess.Popen(contain.argv(cg, ["sleep", "600"]))
    try:
        contain.wait_started(cg, timeout=120)
        nspid = {"values": [0, 1], "isNamespacePID": True, "followForks": True}
        load(env, "kp-exec-not-from-1", matchPIDs=[{**nspid, "operator": "NotIn"}])
        assert lseek(cg, pid_ns="join") == -9
        assert lseek(cg, FORKED) == 0
        load(env, "kp-from-1", matchPIDs=[{**nspid, "operator": "In"}])
        assert lseek(cg, pid_ns="join") == 0
        assert lseek(cg, FORKED) == KILLED_CHILD
    finally:
        holder.kill()
        holder.wait()
