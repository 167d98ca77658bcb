"""Join the events of a ``return: true`` kprobe to the return record of their call. Pure.

The selectors of a return probe run at the function's entry, where Sigkill and Override
can still act; the event is posted there too, flagged ``EV_RET_WAIT``, and waits. When the
function returns, tpf_kretprobe (bpf/programs/tpf_kprobe.c) sends a record with the
function's hook, the task and the return value; the waiting events of that task and hook
go out with the value in ``values[0]`` (what a ``returnArg`` reads). A call is not nested
in another call of the same function by the same task here (the kernel does not recurse
through the functions policies hook), so (task, hook) names one call.

A selector with ``matchReturnArgs`` has its event held in the kernel and posted by the
return probe only if the value matches (bpf/programs/tpf_retsel.c): it comes complete,
flagged ``EV_RET_DONE``, and goes out as it is.

Bounded: a return that never comes (the task died inside the call; the kernel's limit of
return probes in flight was passed; the ring buffer was full) must not hold events
forever: past ``max_waiting`` calls the oldest go out without a return value.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from tpfilter.programs import layout
from tpfilter.programs.events import RawEvent


class ReturnJoiner:
    def __init__(self, *, max_waiting: int = 4096) -> None:
        self._waiting: OrderedDict[tuple[int, int], list[RawEvent]] = OrderedDict()
        self._max = max_waiting

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def feed(self, ev: RawEvent) -> list[RawEvent]:
        """The events to write now. One that got its return value carries ``EV_RETURN``;
        one still flagged ``EV_RET_WAIT`` without it gave up waiting."""
        key = (ev.tid, ev.hook)
        if ev.flags & layout.EV_RET_DONE:  # matchReturnArgs: posted at the return, complete
            return [ev]
        if ev.flags & layout.EV_RETURN:
            value = ev.values[0]
            return [
                replace(e, values=(value, *e.values[1:]), flags=e.flags | layout.EV_RETURN)
                for e in self._waiting.pop(key, [])
            ]
        if not ev.flags & layout.EV_RET_WAIT:
            return [ev]
        self._waiting.setdefault(key, []).append(ev)
        out: list[RawEvent] = []
        while len(self._waiting) > self._max:
            out += self._waiting.popitem(last=False)[1]
        return out
