"""tpfilter.programs.changesel: matchNamespaceChanges and matchCapabilityChanges compiled
to mask tests of the change facts (pure); the facts themselves are checked on the kernel
(tests/kernel/test_changes_on_kernel.py)."""

from __future__ import annotations

from test_programs_tasksel import HOST, task_filters

from tpfilter.programs.changesel import ALL_CAPS, F_CAPS_CHANGED, F_NS_CHANGED
from tpfilter.programs.tasksel import CAP_NUMBERS, F_NS, NAMESPACES, TFF_MASK, TFF_NOTIN, TaskFilter


def ns_bit(*names: str) -> int:
    return sum(1 << NAMESPACES.index(n) for n in names)


def test_namespace_changes_in_tests_the_listed_and_notin_the_others() -> None:
    got = task_filters(
        matchNamespaceChanges=[
            {"operator": "In", "values": ["Mnt", "net"]},
            {"operator": "NotIn", "values": ["Pid", "PidForChildren"]},
        ]
    )
    everything_but_pid = ns_bit(*NAMESPACES) & ~ns_bit("Pid", "PidForChildren")
    assert got == (
        TaskFilter(F_NS_CHANGED, TFF_MASK, (ns_bit("Mnt", "Net"),), changes=True),
        TaskFilter(F_NS_CHANGED, TFF_MASK, (everything_but_pid,), changes=True),
    )


def test_capability_changes_in_and_notin_per_set() -> None:
    admin, raw = 1 << CAP_NUMBERS["CAP_SYS_ADMIN"], 1 << CAP_NUMBERS["CAP_NET_RAW"]
    got = task_filters(
        matchCapabilityChanges=[
            {"type": "Permitted", "operator": "In", "values": ["CAP_SYS_ADMIN", "cap_net_raw"]},
            {"operator": "NotIn", "values": ["CAP_SYS_ADMIN"], "isNamespaceCapability": True},
        ]
    )
    effective, permitted = F_CAPS_CHANGED + 0, F_CAPS_CHANGED + 2
    assert got == (
        TaskFilter(permitted, TFF_MASK, (admin | raw,), changes=True),
        # isNamespaceCapability: outside the node's user namespace only
        TaskFilter(F_NS + NAMESPACES.index("User"), TFF_NOTIN, (HOST["User"],)),
        # NotIn: CAP_SYS_ADMIN did not change, and another capability did
        TaskFilter(effective, TFF_MASK | TFF_NOTIN, (admin,), changes=True),
        TaskFilter(effective, TFF_MASK, (ALL_CAPS & ~admin,), changes=True),
    )


def test_changes_combine_with_the_other_task_filters() -> None:
    got = task_filters(
        matchPIDs=[{"operator": "NotIn", "values": [1]}],
        matchNamespaceChanges=[{"operator": "In", "values": ["Uts"]}],
    )
    assert [f.changes for f in got] == [False, True]
