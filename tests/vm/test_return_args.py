"""matchReturnArgs on Debian's stock kernel (kretprobes): the return probe compares the
return value with the selector's filter and posts the call's event, with the value, only
if it matches (bpf/programs/tpf_retsel.c). In a selected container, another container and
the host, as tests/vm/test_kprobe_hooks.py runs its processes; paths under /tmp/tpf-r...
are only this test's, so the events are its own.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernelkit import Cgroups, Env

from tpfilter.models import Policy

POLICY_ID = 31
OTHER_POLICY_ID = 32
RunPy = Callable[[Path | None, str], int]


def openat(*selectors: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "call": "openat",
            "syscall": True,
            "return": True,
            "args": [{"index": 1, "type": "string", "label": "path"}],
            "returnArg": {"index": 0, "type": "int"},
            "returnArgAction": "Post",
            "selectors": list(selectors),
        }
    ]


def prefix(value: str) -> list[dict[str, Any]]:
    return [{"index": 1, "operator": "Prefix", "values": [value]}]


def seen(env: Env) -> list[tuple[str, str, int | None, str | None]]:
    """(policy, path, return value, pod) of this test's events (paths under /tmp/tpf-r)."""
    return [
        (e["policy"], e["args"][0], e["args"][1], e["pod"])
        for e in env.lines()
        if str(e["args"][0]).startswith("/tmp/tpf-r") and "return_missing" not in e
    ]


def test_lt_zero_posts_the_failed_opens_of_the_selected_container_only(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: Callable[..., Policy]
) -> None:
    (cg, cg_id), (other, other_id) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-fail", "c")
    loaded.pods[other_id] = ("ns", "pod-other", "c")
    p = policy(
        "open-fails",
        kprobes=openat(
            {
                "matchArgs": prefix("/tmp/tpf-rlt"),
                "matchReturnArgs": [{"index": 0, "operator": "LT", "values": ["0"]}],
            }
        ),
    )
    (status,) = loaded.manager.sync([(p, POLICY_ID)]).values()
    assert status.state == "loaded", status
    assert run_py(cg, "open('/tmp/tpf-rlt-missing')") == errno.ENOENT
    assert run_py(cg, "open('/tmp/tpf-rlt-made', 'w')") == 0  # a success: no event
    assert run_py(other, "open('/tmp/tpf-rlt-other')") == errno.ENOENT  # not selected
    assert run_py(None, "open('/tmp/tpf-rlt-host')") == errno.ENOENT  # the host
    assert seen(loaded) == [
        ("TracingPolicy/open-fails", "/tmp/tpf-rlt-missing", -errno.ENOENT, "pod-fail")
    ]


def test_equal_errno_and_gt_selectors_beside_a_policy_without_a_return_filter(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: Callable[..., Policy]
) -> None:
    """Selector 0: EISDIR only; selector 1: file descriptors above 2 (successes); another
    policy on the same calls, without matchReturnArgs, posts every one at the entry and gets
    the value from the return record: both kinds of waiting share the call."""
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.maps.install(OTHER_POLICY_ID, {cg_id}, max_entries=8)
    Path("/tmp/tpf-req-dir").mkdir(exist_ok=True)
    filtered = policy(
        "open-returns",
        kprobes=openat(
            {
                "matchArgs": prefix("/tmp/tpf-req"),
                "matchReturnArgs": [{"operator": "Equal", "values": [-errno.EISDIR]}],
            },
            {
                "matchArgs": prefix("/tmp/tpf-rgt"),
                "matchReturnArgs": [{"operator": "GT", "values": [2]}],
                "matchActions": [{"action": "Post"}],
            },
        ),
    )
    every = policy("open-all", kprobes=openat({"matchArgs": prefix("/tmp/tpf-r")}))
    statuses = loaded.manager.sync([(filtered, POLICY_ID), (every, OTHER_POLICY_ID)])
    assert {s.state for s in statuses.values()} == {"loaded"}, statuses
    assert run_py(cg, "open('/tmp/tpf-req-dir', 'w')") == errno.EISDIR
    assert run_py(cg, "open('/tmp/tpf-req-missing')") == errno.ENOENT  # not EISDIR
    assert run_py(cg, "open('/tmp/tpf-rgt-made', 'w')") == 0
    assert run_py(cg, "open('/tmp/tpf-rgt-missing')") == errno.ENOENT  # not > 2
    events = seen(loaded)
    mine = [(path, ret) for pol, path, ret, _ in events if pol == "TracingPolicy/open-returns"]
    assert mine[0] == ("/tmp/tpf-req-dir", -errno.EISDIR), events
    (made,) = mine[1:]
    assert made[0] == "/tmp/tpf-rgt-made" and made[1] > 2, events
    every_seen = {path: ret for pol, path, ret, _ in events if pol == "TracingPolicy/open-all"}
    assert every_seen["/tmp/tpf-req-dir"] == -errno.EISDIR
    assert every_seen["/tmp/tpf-req-missing"] == -errno.ENOENT
    assert every_seen["/tmp/tpf-rgt-missing"] == -errno.ENOENT
    assert every_seen["/tmp/tpf-rgt-made"] == made[1]  # the same call's value
    loaded.clear_events()
    loaded.manager.sync([])
    assert run_py(cg, "open('/tmp/tpf-req-dir', 'w')") == errno.EISDIR
    assert seen(loaded) == []  # deleted: nothing held, nothing posted
