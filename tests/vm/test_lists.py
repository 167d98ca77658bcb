"""spec.lists on Debian's stock kernel: one kprobe entry, ``call: "list:dups"``, attached to
each syscall of a ``syscalls`` list (dup, dup2, dup3), with InMap/NotInMap selectors, loaded
by the agent's own ProgramManager.

The selectors look at the first argument, a file descriptor number no normal program uses
(777, 778, 780: the snippet first makes them with dup2 of /dev/null), so what they catch is
the test's own process. The syscalls are called through libc (Python's os.dup is
fcntl(F_DUPFD_CLOEXEC)); glibc's dup, dup2 and dup3 are the syscalls of their names on
x86-64.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kernelkit import Cgroups, Env

from tpfilter.models import Policy

# The conftest fixtures' types (tests/vm/conftest.py)
RunPy = Callable[[Path | None, str], int]
MakePolicy = Callable[..., Policy]
Load = Callable[[Env, Policy, int], None]
POLICY_ID = 35
KILLED = -9
SETUP = "import ctypes; libc = ctypes.CDLL(None); os.dup2(os.open('/dev/null', 0), {0}); "
CALLS = {  # the list's syscall -> a snippet calling it on fd {0}
    "dup": SETUP + "libc.dup({0})",
    "dup2": SETUP + "libc.dup2({0}, 900)",
    "dup3": SETUP + "libc.dup3({0}, 900, os.O_CLOEXEC)",
}
OUTSIDE = SETUP + "os.close({0})"  # close(2) is not in the list


def dups_policy(policy: MakePolicy) -> Policy:
    return policy(
        "dup-list",
        lists=[{"name": "dups", "type": "syscalls", "values": ["sys_dup", "dup2", "dup3"]}],
        kprobes=[
            {
                "call": "list:dups",
                "args": [{"index": 0, "type": "int", "label": "fd"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 0, "operator": "InMap", "values": ["777:778"]}],
                        "matchActions": [{"action": "Sigkill"}],
                    },
                    {
                        "matchArgs": [
                            {"index": 0, "operator": "InMap", "values": ["780"]},
                            {"index": 0, "operator": "NotInMap", "values": ["0:779", "781"]},
                        ]
                    },
                ],
            }
        ],
    )


def test_a_syscalls_list_kills_and_posts_on_each_syscall_only_where_selected(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: MakePolicy, load: Load
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-dups", "c")
    load(loaded, dups_policy(policy), POLICY_ID)
    (status,) = loaded.manager.statuses().values()
    assert status.hooks == tuple(f"kprobe/__x64_sys_{name} (kprobe)" for name in CALLS)
    for name, snippet in CALLS.items():
        assert run_py(cg, snippet.format(777)) == KILLED, name
        assert run_py(cg, snippet.format(778)) == KILLED, name
        assert run_py(cg, snippet.format(779)) == 0, name  # not in the set
        assert run_py(other, snippet.format(777)) == 0, name  # another container
        assert run_py(None, snippet.format(777)) == 0, name  # the host
    assert run_py(cg, OUTSIDE.format(777)) == 0  # a syscall outside the list
    loaded.clear_events()
    for name, snippet in CALLS.items():
        assert run_py(cg, snippet.format(780)) == 0, name  # posted, not killed
        assert run_py(other, snippet.format(780)) == 0, name
        assert run_py(None, snippet.format(780)) == 0, name
    events = [e for e in loaded.lines() if e["action"] == "post"]
    got = sorted((e["hook"], e["args"], e["pod"]) for e in events)
    assert got == [(f"kprobe/__x64_sys_{name}", [780], "pod-dups") for name in CALLS], events
    loaded.manager.sync([])
    assert run_py(cg, CALLS["dup"].format(777)) == 0  # deleting the policy lifts it
