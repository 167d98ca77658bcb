"""Task-based selector filters: matchPIDs, matchNamespaces, matchCapabilities. Pure.

They ask about the task that made the call, not about the call's arguments, so every hook
type evaluates them with the same code (``bpf/programs/tpf_task.h``: the facts are read
from the current task once per event in the STRINGS stage, at offsets from the node's
BTF, and compared in the selector stage). Tetragon's semantics (its selectors page):

* ``matchPIDs``: ``In``/``NotIn`` the process's PID (its thread group ID) in the node's PID
  namespace, or with ``isNamespacePID`` in its own; ``followForks``: the process or one of
  its ancestors (by parent, :data:`ANCESTORS` processes in all; with ``isNamespacePID``
  only those seen from the process's PID namespace: the walk stops at the first parent
  outside it, e.g. the runtime). A followForks filter gets a node-wide ID when loaded
  (programs/follow.py: at most 64), its PIDs go into tpf_follow, and the program tests
  the ID's bit of the ancestors' lookups;
* ``matchNamespaces``: ``In``/``NotIn`` the inode number of one of the task's namespaces,
  or ``host_ns``: the node's (as the agent, which runs with hostPID, finds it);
* ``matchCapabilities``: ``In`` (any of) / ``NotIn`` (none of) the capabilities in the
  task's ``Effective``, ``Inheritable`` or ``Permitted`` set; ``isNamespaceCapability``:
  only a task outside the node's user namespace matches;
* the entries of each filter, and the filters, are ANDed with the rest of the selector.

``matchNamespaceChanges`` and ``matchCapabilityChanges`` compare the task with its process
record (:mod:`tpfilter.programs.changesel`): filters on facts of their own, built the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tpfilter.programs.taskbtf import OPTIONAL, task_offsets

MAX_FILTERS = 8  # per selector: tpf_task.h TPF_MAX_TFILTERS
MAX_VALUES = 4  # per filter entry: Tetragon's limit (MAX_SELECTOR_VALUES), TPF_TVALUES
TASK_BIT = 0x80  # tpf_hook.str_mask bit: the task facts are needed (TPF_STR_TASK)

# tpf_task.h: where each fact is (TPF_F_*), the filter flags (TPF_TFF_*)
F_NS, F_PID, F_NSPID, F_CAPS, F_FOLLOW = 0, 10, 11, 12, 15
FOLLOW_HOST, FOLLOW_NS = 1, 2  # tpf_follow_key.kind
ANCESTORS = 8  # TPF_ANC
TFF_NOTIN, TFF_MASK = 1, 2
SELT_FILTERS, SELT_RENEW = 1, 2  # tpf_sel.task: TPF_SELT_*
NO_FACT = (1 << 64) - 1  # TPF_NO_FACT

NAMESPACES = (
    "Uts",
    "Ipc",
    "Mnt",
    "Pid",
    "PidForChildren",
    "Net",
    "Time",
    "TimeForChildren",
    "Cgroup",
    "User",
)  # index = TPF_NS_*
# /proc/<pid>/ns/<link> of each, for host_ns
NS_LINKS = {
    "Uts": "uts",
    "Ipc": "ipc",
    "Mnt": "mnt",
    "Pid": "pid",
    "PidForChildren": "pid_for_children",
    "Net": "net",
    "Time": "time",
    "TimeForChildren": "time_for_children",
    "Cgroup": "cgroup",
    "User": "user",
}
CAP_SETS = {"effective": 0, "inheritable": 1, "permitted": 2}  # TPF_CAPS_*

# linux/capability.h
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_NUMBERS = {name: bit for bit, name in enumerate(CAPABILITIES)}

CHANGE_KEYS = ("matchNamespaceChanges", "matchCapabilityChanges")  # changesel.py
FILTER_KEYS = frozenset({"matchPIDs", "matchNamespaces", "matchCapabilities", *CHANGE_KEYS})


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """One tpf_tfilter (tpf_task.h): the fact ``first`` against the values."""

    first: int  # F_* + index
    flags: int = 0  # TFF_*
    values: tuple[int, ...] = ()  # PIDs, inode numbers; TFF_MASK: (capability bits,)
    follow: int = 0  # followForks: FOLLOW_HOST/FOLLOW_NS, values are its PIDs (tpf_follow)
    binary: int = 0  # matchBinaries (binsel.py): the set kind of ``strings`` (tpf_bin_*)
    strings: tuple[bytes, ...] = ()  # matchBinaries: its values
    changes: bool = False  # against the process record (changesel.py): renewed on a match


def _missing_namespace(name: str, offsets: Mapping[str, int]) -> str | None:
    optional = OPTIONAL.get("Time" if name.startswith("Time") else name)
    if optional and not all(d in offsets for d in optional):
        return f"namespace {name}: this kernel's BTF has no {name.lower()} namespace"
    return None


def entries(raw: Any, where: str, errors: Any) -> list[tuple[str, Mapping[str, Any]]] | None:
    if not isinstance(raw, list) or not raw:
        errors.add(where, "must be a non-empty list")
        return None
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            errors.add(f"{where}[{i}]", "not a mapping")
            return None
        out.append((f"{where}[{i}]", entry))
    return out


def op_flag(entry: Mapping[str, Any], at: str, errors: Any) -> int | None:
    op = str(entry.get("operator", ""))
    if op.lower() not in ("in", "notin"):
        errors.add(f"{at}.operator", f"{op!r} is not supported (In, NotIn)")
        return None
    return TFF_NOTIN if op.lower() == "notin" else 0


def _values(entry: Mapping[str, Any], at: str, errors: Any) -> list[Any] | None:
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        errors.add(f"{at}.values", "must be a non-empty list")
        return None
    if len(values) > MAX_VALUES:
        errors.add(f"{at}.values", f"at most {MAX_VALUES} values (Tetragon's limit)")
        return None
    return values


def extra_keys(entry: Mapping[str, Any], at: str, allowed: set[str], errors: Any) -> bool:
    extra = sorted(set(entry) - allowed)
    if extra:
        errors.add(at, f"{', '.join(extra)} not supported")
    return bool(extra)


def _pids(raw: Any, where: str, errors: Any) -> list[TaskFilter] | None:
    found = entries(raw, where, errors)
    if found is None:
        return None
    out = []
    for at, entry in found:
        keys = {"operator", "values", "followForks", "isNamespacePID"}
        if extra_keys(entry, at, keys, errors):
            return None
        flag = op_flag(entry, at, errors)
        values = _values(entry, at, errors)
        if flag is None or values is None:
            return None
        pids = []
        for v in values:
            try:
                pid = int(str(v), 10)
            except ValueError:
                pid = -1
            if not 0 <= pid < 1 << 32 or isinstance(v, bool):
                errors.add(f"{at}.values", f"{v!r} is not a process ID")
                return None
            pids.append(pid)
        for key in ("followForks", "isNamespacePID"):
            if not isinstance(entry.get(key, False), bool):
                errors.add(f"{at}.{key}", "must be true or false")
                return None
        if entry.get("followForks"):  # its bit in TPF_F_FOLLOW, given when loaded
            kind = FOLLOW_NS if entry.get("isNamespacePID") else FOLLOW_HOST
            out.append(TaskFilter(F_FOLLOW, flag | TFF_MASK, tuple(pids), kind))
            continue
        first = F_NSPID if entry.get("isNamespacePID") else F_PID
        out.append(TaskFilter(first, flag, tuple(pids)))
    return out


def _namespaces(
    raw: Any, where: str, errors: Any, offsets: Mapping[str, int], host_ns: Mapping[str, Any]
) -> list[TaskFilter] | None:
    found = entries(raw, where, errors)
    if found is None:
        return None
    out = []
    for at, entry in found:
        if extra_keys(entry, at, {"namespace", "operator", "values"}, errors):
            return None
        name = str(entry.get("namespace", ""))
        canon = {n.lower(): n for n in NAMESPACES}.get(name.lower())
        if canon is None:
            errors.add(f"{at}.namespace", f"{name!r} is not a namespace ({', '.join(NAMESPACES)})")
            return None
        why = _missing_namespace(canon, offsets)
        if why:
            errors.add(f"{at}.namespace", why)
            return None
        flag = op_flag(entry, at, errors)
        values = _values(entry, at, errors)
        if flag is None or values is None:
            return None
        inodes = []
        for v in values:
            if str(v) == "host_ns":
                host = host_ns.get(canon)
                if not isinstance(host, int):
                    errors.add(f"{at}.values", f"host_ns: the node's {canon} namespace: {host}")
                    return None
                inodes.append(host)
                continue
            try:
                inode = int(str(v), 10)
            except ValueError:
                inode = -1
            if not 0 < inode < 1 << 32 or isinstance(v, bool):
                errors.add(f"{at}.values", f"{v!r} is not a namespace inode number or host_ns")
                return None
            inodes.append(inode)
        out.append(TaskFilter(F_NS + NAMESPACES.index(canon), flag, tuple(inodes)))
    return out


def capability_set(entry: Mapping[str, Any], at: str, errors: Any) -> int | None:
    """TPF_CAPS_* of an entry's ``type`` (Effective when absent)."""
    ctype = str(entry.get("type") or "Effective")
    cap_set = CAP_SETS.get(ctype.lower())
    if cap_set is None:
        why = f"{ctype!r} is not supported (Effective, Inheritable, Permitted)"
        errors.add(f"{at}.type", why)
    return cap_set


def capability_mask(entry: Mapping[str, Any], at: str, errors: Any) -> int | None:
    """The bits of an entry's ``values``, CAP_* names (matchCapabilities and its changes)."""
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        errors.add(f"{at}.values", "must be a non-empty list")
        return None
    mask = 0
    for v in values:
        bit = CAP_NUMBERS.get(str(v).upper())
        if bit is None:
            why = f"{v!r} is not a capability (CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)"
            errors.add(f"{at}.values", why)
            return None
        mask |= 1 << bit
    return mask


def namespace_capability(
    entry: Mapping[str, Any], at: str, errors: Any, host_ns: Mapping[str, Any]
) -> list[TaskFilter] | None:
    """``isNamespaceCapability: true``: the filter that keeps the node's user namespace out
    (Tetragon: never matches there, In or NotIn); none when false."""
    nscap = entry.get("isNamespaceCapability", False)
    if not isinstance(nscap, bool):
        errors.add(f"{at}.isNamespaceCapability", "must be true or false")
        return None
    if not nscap:
        return []
    host = host_ns.get("User")
    if not isinstance(host, int):
        errors.add(f"{at}.isNamespaceCapability", f"needs the node's user namespace: {host}")
        return None
    return [TaskFilter(F_NS + NAMESPACES.index("User"), TFF_NOTIN, (host,))]


def _capabilities(
    raw: Any, where: str, errors: Any, host_ns: Mapping[str, Any]
) -> list[TaskFilter] | None:
    found = entries(raw, where, errors)
    if found is None:
        return None
    out = []
    for at, entry in found:
        if extra_keys(entry, at, {"type", "operator", "values", "isNamespaceCapability"}, errors):
            return None
        cap_set = capability_set(entry, at, errors)
        if cap_set is None:
            return None
        flag = op_flag(entry, at, errors)
        if flag is None:
            return None
        mask = capability_mask(entry, at, errors)
        if mask is None:
            return None
        nscap = namespace_capability(entry, at, errors, host_ns)
        if nscap is None:
            return None
        out += nscap
        out.append(TaskFilter(F_CAPS + cap_set, flag | TFF_MASK, (mask,)))
    return out


def compile_task_filters(
    raw: Mapping[str, Any], where: str, kernel: Any, host_ns: Mapping[str, Any] | None, errors: Any
) -> tuple[TaskFilter, ...] | None:
    """A selector's task filters (empty: none), or None after adding the reasons to
    ``errors`` (a ``argmatch.Errors``). ``host_ns``: namespace name -> the node's inode
    number, or why it is not known."""
    if not any(raw.get(k) for k in FILTER_KEYS):
        return ()
    offsets = task_offsets(kernel)
    if isinstance(offsets, str):
        used = ", ".join(k for k in sorted(FILTER_KEYS) if raw.get(k))
        errors.add(f"{where}.{used}", f"needs the task's struct offsets: {offsets}")
        return None
    hosts = host_ns or {}
    out: list[TaskFilter] = []
    from tpfilter.programs import changesel  # it builds on this module's filters

    for key in ("matchPIDs", "matchNamespaces", "matchCapabilities", *CHANGE_KEYS):
        if not raw.get(key):
            continue
        at = f"{where}.{key}"
        if key == "matchPIDs":
            got = _pids(raw[key], at, errors)
        elif key == "matchNamespaces":
            got = _namespaces(raw[key], at, errors, offsets, hosts)
        elif key == "matchCapabilities":
            got = _capabilities(raw[key], at, errors, hosts)
        elif key == "matchNamespaceChanges":
            got = changesel.namespace_changes(raw[key], at, errors)
        else:
            got = changesel.capability_changes(raw[key], at, errors, hosts)
        if got is None:
            return None
        out += got
    if len(out) > MAX_FILTERS:
        why = f"more than {MAX_FILTERS} task filters (matchPIDs, matchNamespaces, ...) in all"
        errors.add(where, why)
        return None
    return tuple(out)


def sel_task_flags(filters: Sequence[TaskFilter]) -> int:
    """tpf_sel.task: whether the selector has task filters, and whether a match renews the
    process record (it compared the task with it: changesel.py)."""
    renew = SELT_RENEW if any(f.changes for f in filters) else 0
    return (SELT_FILTERS | renew) if filters else 0


def needs_records(configs: Iterable[Any]) -> bool:
    """Whether any selector of these hook entries compares with the process records."""
    return any(f.changes for cfg in configs for sel in cfg.selectors for f in sel.task)


def fill_tsel(
    leaf: Any,
    filters: tuple[TaskFilter, ...],
    follow_ids: Sequence[int],
    bin_ids: Sequence[int] = (),
) -> Any:
    """``leaf`` (bcc's ctypes struct tpf_tsel) set to ``filters``; ``follow_ids``: the IDs
    of its followForks filters, in order (programs/follow.py); ``bin_ids``: of its
    matchBinaries filters (programs/binids.py)."""
    leaf.n = len(filters)
    ids, bids = iter(follow_ids), iter(bin_ids)
    for i, f in enumerate(filters):
        out = leaf.f[i]
        out.first, out.flags = f.first, f.flags
        if f.follow or f.binary:  # the filter's bit
            values: tuple[int, ...] = (1 << next(ids if f.follow else bids),)
        else:
            values = f.values
        for k in range(MAX_VALUES):  # unused values repeat the first: no count to check
            out.vals[k] = values[k] if k < len(values) else values[0]
    return leaf
