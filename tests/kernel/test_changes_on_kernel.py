"""matchNamespaceChanges and matchCapabilityChanges on the real kernel: the process records
(bpf/programs/tpf_procs.c, tpfilter/programs/procrecords.py) and the change facts
(tpf_task.h) seen deciding on a syscall tracepoint (lseek, whence 4444: nothing else calls
it).

Each process is started as a container's (tpfilter_dev.contain: forked after the policy
loaded, so the fork keeper recorded it), changes a namespace (``unshare``) or drops a
capability from its effective set (``capset``) and calls lseek: a selector on that change
kills it, one on another change does not; a process that changed nothing is never killed.
The record is taken at the clone and kept through exec (Tetragon's): ``unshare --uts``
that then execs python is a change. Also: a process already running when the records
started (recorded from /proc), a change reported once (the match renews the record), the
exit keeper, and the map made and freed with the policies that need it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, kernel_marks, skip_reason
from test_programs_syscalls import LSEEK_4444, PYTHON, lseek_policy
from test_tasksel_on_kernel import go, waiting

from tpfilter.programs.procrecords import RECORD, read_record
from tpfilter.programs.tasksel import CAP_NUMBERS, NAMESPACES
from tpfilter_dev import contain

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)

POLICY_ID = 53
CLONE_NEWUTS, CLONE_NEWIPC = 0x04000000, 0x08000000


def unshare(flags: int) -> str:
    return f"import ctypes\nassert ctypes.CDLL(None, use_errno=True).unshare({flags}) == 0\n"


def drop_effective(*caps: str) -> str:
    """capset: the capabilities leave the effective set (they stay permitted)."""
    mask = sum(1 << CAP_NUMBERS[c] for c in caps)
    return (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "class H(ctypes.Structure):\n"
        "    _fields_ = [('v', ctypes.c_uint32), ('pid', ctypes.c_int)]\n"
        "class D(ctypes.Structure):\n"
        "    _fields_ = [('e', ctypes.c_uint32), ('p', ctypes.c_uint32), ('i', ctypes.c_uint32)]\n"
        "h, d = H(0x20080522, 0), (D * 2)()\n"
        "assert libc.capget(ctypes.byref(h), d) == 0\n"
        f"d[0].e &= ~{mask & 0xFFFFFFFF}\n"
        f"d[1].e &= ~{mask >> 32}\n"
        "assert libc.capset(ctypes.byref(h), d) == 0\n"
    )


@pytest.fixture
def cg(loaded: Env, cgroups: Cgroups) -> Path:
    path, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-changes", "c")
    return path


def load(env: Env, name: str, *, actions: Sequence[str] = ("Sigkill",), **filters: Any) -> None:
    policy = lseek_policy(name, actions=[{"action": a} for a in actions], **filters)
    status = env.manager.sync([(policy, POLICY_ID)])[name]
    assert status.state == "loaded", status


def run(cgroup: Path, code: str, wrapper: Sequence[str] = ()) -> int:
    argv = contain.argv(cgroup, [*wrapper, PYTHON, "-S", "-c", code])
    return subprocess.run(argv, timeout=60).returncode


def test_namespace_changes_in_and_notin(loaded: Env, cg: Path) -> None:
    load(loaded, "uts-changed", matchNamespaceChanges=[{"operator": "In", "values": ["Uts"]}])
    assert run(cg, unshare(CLONE_NEWUTS) + LSEEK_4444) == -9
    assert run(cg, LSEEK_4444, ["unshare", "--uts"]) == -9  # before exec: still a change
    assert run(cg, unshare(CLONE_NEWIPC) + LSEEK_4444) == 0  # another namespace
    assert run(cg, LSEEK_4444) == 0  # no change
    load(loaded, "not-uts", matchNamespaceChanges=[{"operator": "NotIn", "values": ["Uts"]}])
    assert run(cg, unshare(CLONE_NEWUTS) + LSEEK_4444) == 0
    assert run(cg, unshare(CLONE_NEWIPC) + LSEEK_4444) == -9
    assert run(cg, LSEEK_4444) == 0


def test_capability_changes_in_and_notin(loaded: Env, cg: Path) -> None:
    admin = [{"type": "Effective", "values": ["CAP_SYS_ADMIN"]}]
    load(loaded, "admin-changed", matchCapabilityChanges=[{**admin[0], "operator": "In"}])
    assert run(cg, drop_effective("CAP_SYS_ADMIN") + LSEEK_4444) == -9
    assert run(cg, drop_effective("CAP_NET_RAW") + LSEEK_4444) == 0
    assert run(cg, LSEEK_4444) == 0
    load(loaded, "other-changed", matchCapabilityChanges=[{**admin[0], "operator": "NotIn"}])
    assert run(cg, drop_effective("CAP_NET_RAW") + LSEEK_4444) == -9
    assert run(cg, drop_effective("CAP_SYS_ADMIN", "CAP_NET_RAW") + LSEEK_4444) == 0
    assert run(cg, LSEEK_4444) == 0
    load(  # another set: the effective one changed, the permitted did not
        loaded,
        "permitted-changed",
        matchCapabilityChanges=[{**admin[0], "type": "Permitted", "operator": "In"}],
    )
    assert run(cg, drop_effective("CAP_SYS_ADMIN") + LSEEK_4444) == 0


def test_a_change_is_reported_once(loaded: Env, cg: Path) -> None:
    """The match renews the process's record: the second call sees no change."""
    load(
        loaded,
        "uts-once",
        actions=("Post",),
        matchNamespaceChanges=[{"operator": "In", "values": ["Uts"]}],
    )
    assert run(cg, unshare(CLONE_NEWUTS) + LSEEK_4444 + LSEEK_4444) == 0
    (event,) = loaded.lines()
    assert event["pod"] == "pod-changes" and event["action"] == "post"


def test_a_process_older_than_the_records_is_recorded_from_proc(loaded: Env, cg: Path) -> None:
    loaded.manager.sync([])
    assert not loaded.manager._programs.records.enabled  # nothing needs records
    proc, pid = waiting(cg, then=unshare(CLONE_NEWUTS) + LSEEK_4444)  # changes when told
    try:
        load(loaded, "uts-old", matchNamespaceChanges=[{"operator": "In", "values": ["Uts"]}])
        record = loaded.manager._programs.records.lookup(pid)
        assert record is not None and record == read_record(pid)
        assert RECORD.unpack(record)[NAMESPACES.index("Uts")] != 0
        assert go(proc) == -9
    finally:
        proc.kill()
        proc.wait()


def test_records_follow_processes_and_the_policies_that_need_them(loaded: Env, cg: Path) -> None:
    load(loaded, "uts-records", matchNamespaceChanges=[{"operator": "In", "values": ["Uts"]}])
    records = loaded.manager._programs.records
    assert records.enabled and records.count() > 1  # /proc's processes
    proc, pid = waiting(cg)  # forked now: the fork keeper's record
    try:
        assert records.lookup(pid) is not None
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 10
    while records.lookup(pid) is not None:  # the child dies with its helper (PDEATHSIG)
        assert time.monotonic() < deadline, "the exit keeper left the record"
        time.sleep(0.05)
    loaded.manager.sync([])
    assert not records.enabled  # freed with the last policy that compared with them
