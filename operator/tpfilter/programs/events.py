"""Ring-buffer events -> JSON lines. Pure except for the output it writes to."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tpfilter.programs import layout
from tpfilter.programs.layout import Action, IntType, Kind
from tpfilter.programs.netargs import decode_tuple
from tpfilter.programs.objargs import capability, decode_copy
from tpfilter.programs.plan import ArgSpec, HookConfig

log = logging.getLogger(__name__)

RETURN_ARG = -1  # ArgSpec.index of a kprobe's returnArg (values[0])
Resolver = Callable[[int], "tuple[str, str, str] | None"]


@dataclass(frozen=True, slots=True)
class ConfigInfo:
    """What an event's config ID stands for."""

    policy: str  # "TracingPolicy/name" or "TracingPolicyNamespaced/ns/name"
    policy_uid: str
    config: HookConfig


@dataclass(frozen=True, slots=True)
class RawEvent:
    """The fields of struct tpf_event, decoded."""

    ktime_ns: int
    cgroup_id: int
    pid: int
    tid: int
    config: int
    policy_id: int
    hook: int
    sel: int
    actions: int
    flags: int
    values: tuple[int, ...]
    comm: str
    path: str
    string: str
    net: tuple[dict[str, Any] | None, ...] = ()  # the network arguments' tuples (netargs)
    obj: tuple[Any, ...] = ()  # the object arguments' copies (struct tpf_obj_copy, objargs)

    @classmethod
    def from_ctypes(cls, ev: Any) -> RawEvent:
        return cls(
            ktime_ns=int(ev.ktime_ns),
            cgroup_id=int(ev.cgroup_id),
            pid=int(ev.pid),
            tid=int(ev.tid),
            config=int(ev.config),
            policy_id=int(ev.policy_id),
            hook=int(ev.hook),
            sel=int(ev.sel),
            actions=int(ev.actions),
            flags=int(ev.flags),
            values=tuple(int(v) for v in ev.values),
            comm=bytes(ev.comm).split(b"\0", 1)[0].decode(errors="replace"),
            path=bytes(ev.path).split(b"\0", 1)[0].decode(errors="replace"),
            string=bytes(ev.str).split(b"\0", 1)[0].decode(errors="replace"),
            net=tuple(decode_tuple(t) for t in ev.net),
            obj=tuple(ev.obj),
        )


def boot_to_wall_offset_ns() -> int:
    """Add to a bpf_ktime_get_boot_ns() value to get Unix time in ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _int_value(raw: int, int_type: IntType) -> int:
    return int_type.of(raw)


def _arg_value(ev: RawEvent, spec: ArgSpec, capture: int) -> Any:
    if spec.index == RETURN_ARG and not ev.flags & layout.EV_RETURN:
        return None  # the return never came (tpfilter.programs.retjoin)
    if spec.kind is Kind.PATH:
        return ev.path
    if spec.kind is Kind.NOP:
        return None
    if spec.kind is Kind.NET:
        return ev.net[spec.src] if spec.src < len(ev.net) else None
    if spec.kind is Kind.OBJ and spec.obj == "capability":
        return capability(ev.values[spec.src])
    if spec.kind is Kind.OBJ:
        return decode_copy(spec.obj, ev.obj[spec.src]) if spec.src < len(ev.obj) else None
    if spec.kind is Kind.USER_STR:
        if spec.src == capture and ev.flags & layout.EV_STR_SET:
            return ev.string
        return None
    return _int_value(ev.values[spec.src], spec.int_type)


def action_name(actions: int) -> str:
    if actions & Action.SIGKILL:
        return "sigkill"
    return "signal" if actions & Action.SIGNAL else "post"


def event_record(
    ev: RawEvent,
    *,
    node: str,
    info: ConfigInfo | None,
    pod: tuple[str, str, str] | None,
    wall_offset_ns: int,
) -> dict[str, Any]:
    """The JSON object of one event."""
    when = datetime.fromtimestamp((ev.ktime_ns + wall_offset_ns) / 1e9, tz=UTC)
    namespace, pod_name, container = pod if pod is not None else (None, None, None)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "node": node,
        "namespace": namespace,
        "pod": pod_name,
        "container": container,
        "cgroup_id": ev.cgroup_id,
        "pid": ev.pid,
        "tid": ev.tid,
        "comm": ev.comm,
        "binary": (ev.path or None)
        if info is None or not info.config.name.startswith("kprobe/")
        else None,
        "policy": info.policy if info else None,
        "policy_uid": info.policy_uid if info else None,
        "hook": info.config.name if info else None,
        "selector": None if ev.sel == layout.NO_SELECTOR else ev.sel,
        "action": action_name(ev.actions),
    }
    if info is not None:
        record["args"] = [_arg_value(ev, a, info.config.capture) for a in info.config.args]
        record["arg_labels"] = [a.label for a in info.config.args]
        if info.config.message:
            record["message"] = info.config.message
        if info.config.tags:
            record["tags"] = list(info.config.tags)
    else:
        record["args"] = []
    if ev.flags & layout.EV_PATH_LONG:
        record["binary_truncated"] = True
    if ev.flags & layout.EV_KILL_FAILED:
        record["action_failed"] = True
    if ev.flags & layout.EV_RET_WAIT and not ev.flags & layout.EV_RETURN:
        record["return_missing"] = True
    return record


class EventWriter:
    """Writes JSON lines to a stream (stdout by default) or appends them to a file."""

    def __init__(self, out: TextIO | Path | None) -> None:
        import sys

        self._lock = threading.Lock()
        self._owned: TextIO | None = None
        if isinstance(out, Path):
            self._owned = open(out, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._out: TextIO = self._owned
        else:
            self._out = out if out is not None else sys.stdout

    def write(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":"), sort_keys=False)
        with self._lock:
            self._out.write(line + "\n")
            self._out.flush()

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None
