"""The programs' events, from the ring buffer to JSON lines with their pods.

Apart from the manager because it runs on another thread (bcc's ring buffer callback, from
the manager's event reader) and owns what only it touches: the writer, the return-value
joiner (a ``return: true`` kprobe's entry event waits for its return), the boot-to-wall
clock offset. It asks the manager for one thing, a config's description, under the
manager's lock (``info``).
"""

from __future__ import annotations

import ctypes as ct
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tpfilter.programs.events import (
    ConfigInfo,
    EventWriter,
    RawEvent,
    boot_to_wall_offset_ns,
    event_record,
)
from tpfilter.programs.retjoin import ReturnJoiner

log = logging.getLogger(__name__)

Resolver = Callable[[int], "tuple[str, str, str] | None"]


class EventPump:
    def __init__(
        self,
        *,
        node: str,
        resolve: Resolver,
        out: TextIO | Path | None,
        info: Callable[[int], ConfigInfo | None],
    ) -> None:
        self._node = node
        self._resolve = resolve
        self._info = info
        self._writer = EventWriter(out)
        self._returns = ReturnJoiner()  # return: true events wait for their return value
        self._wall_offset = boot_to_wall_offset_ns()
        self._resolve_failed = False
        self.written = 0

    def feed(self, event_type: Any, data: Any) -> None:
        """One ring buffer record (``data``, a pointer to ``event_type``)."""
        raw = RawEvent.from_ctypes(ct.cast(data, ct.POINTER(event_type)).contents)
        for ev in self._returns.feed(raw):
            self._write(ev)

    def _write(self, raw: RawEvent) -> None:
        pod = None
        try:
            pod = self._resolve(raw.cgroup_id)
        except Exception:
            if not self._resolve_failed:
                log.exception("resolve(cgroup_id) failed; events go out without pods")
                self._resolve_failed = True
        record = event_record(
            raw, node=self._node, info=self._info(raw.config), pod=pod,
            wall_offset_ns=self._wall_offset,
        )  # fmt: skip
        self._writer.write(record)
        self.written += 1

    def close(self) -> None:
        self._writer.close()
