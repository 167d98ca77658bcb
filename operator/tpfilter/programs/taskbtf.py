"""Where tpf_task.h finds a task's facts (namespaces, PIDs, credentials): struct member
offsets from the node's BTF, compiled into the programs as -D flags. Kept apart from
tasksel.py, which compiles the selectors and asks only whether the facts are there.
"""

from __future__ import annotations

from typing import Any

from tpfilter.programs import btf

# -D name -> (struct, member): what tpf_task.h reads. The optional ones (namespace types a
# kernel may be built without) leave their namespace unreadable, and refused.
MEMBERS = {
    "TPF_TOFF_TASK_NSPROXY": ("task_struct", "nsproxy"),
    "TPF_TOFF_TASK_CRED": ("task_struct", "cred"),
    "TPF_TOFF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
    "TPF_TOFF_TASK_REAL_PARENT": ("task_struct", "real_parent"),
    "TPF_TOFF_TASK_TGID": ("task_struct", "tgid"),
    "TPF_TOFF_TASK_THREAD_PID": ("task_struct", "thread_pid"),
    "TPF_TOFF_PID_LEVEL": ("pid", "level"),
    "TPF_TOFF_PID_NUMBERS": ("pid", "numbers"),
    "TPF_TOFF_UPID_NR": ("upid", "nr"),
    "TPF_TOFF_UPID_NS": ("upid", "ns"),
    "TPF_TOFF_NS_INUM": ("ns_common", "inum"),
    "TPF_TOFF_NSPROXY_UTS": ("nsproxy", "uts_ns"),
    "TPF_TOFF_NSPROXY_IPC": ("nsproxy", "ipc_ns"),
    "TPF_TOFF_NSPROXY_MNT": ("nsproxy", "mnt_ns"),
    "TPF_TOFF_NSPROXY_PIDC": ("nsproxy", "pid_ns_for_children"),
    "TPF_TOFF_NSPROXY_NET": ("nsproxy", "net_ns"),
    "TPF_TOFF_UTS_NS": ("uts_namespace", "ns"),
    "TPF_TOFF_IPC_NS": ("ipc_namespace", "ns"),
    "TPF_TOFF_MNT_NS": ("mnt_namespace", "ns"),
    "TPF_TOFF_PIDNS_NS": ("pid_namespace", "ns"),
    "TPF_TOFF_NET_NS": ("net", "ns"),
    "TPF_TOFF_USER_NS": ("user_namespace", "ns"),
    "TPF_TOFF_CRED_USER_NS": ("cred", "user_ns"),
    "TPF_TOFF_CRED_CAP_EFFECTIVE": ("cred", "cap_effective"),
    "TPF_TOFF_CRED_CAP_INHERITABLE": ("cred", "cap_inheritable"),
    "TPF_TOFF_CRED_CAP_PERMITTED": ("cred", "cap_permitted"),
}
OPTIONAL = {
    "Time": {
        "TPF_TOFF_NSPROXY_TIME": ("nsproxy", "time_ns"),
        "TPF_TOFF_NSPROXY_TIMEC": ("nsproxy", "time_ns_for_children"),
        "TPF_TOFF_TIME_NS": ("time_namespace", "ns"),
    },
    "Cgroup": {
        "TPF_TOFF_NSPROXY_CGROUP": ("nsproxy", "cgroup_ns"),
        "TPF_TOFF_CGROUP_NS": ("cgroup_namespace", "ns"),
    },
}


def task_offsets(kernel: Any) -> dict[str, int] | str:
    """The offsets by -D name (optional namespaces where the kernel has them), or why the
    task filters cannot be compiled for this kernel."""
    out = btf.offsets(kernel, MEMBERS)
    if isinstance(out, str):
        return out
    upid_size = kernel.struct_size("upid")
    if upid_size is None:
        return "no struct upid in this kernel's BTF"
    out["TPF_TSIZE_UPID"] = upid_size
    for members in OPTIONAL.values():
        found = btf.offsets(kernel, members)
        if not isinstance(found, str):
            out.update(found)
    return out


def task_cflags(kernel: Any) -> list[str]:
    """-D flags that compile the task filters in; none where they cannot be."""
    return btf.feature_cflags("TPF_WITH_TASK", task_offsets(kernel))
