"""What the running kernel says about its tracepoints and syscalls (tracefs, uapi headers).

Tracepoint argument indexes in a TracingPolicy are positions in the tracepoint's format
file, common fields included (Tetragon's convention): for ``sched/sched_process_exec``
index 4 is ``filename``; for ``syscalls/sys_enter_*`` index 4 is ``__syscall_nr`` and 5 on
are the syscall's arguments. The format comes from the running kernel, never from
headers, so offsets are right whatever headers bcc compiles with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "TRACEFS_CANDIDATES",
    "Field",
    "TracepointFormat",
    "find_tracefs",
    "parse_format",
    "parse_syscall_table",
    "read_format",
    "syscall_numbers",
    "unistd_candidates",
]

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
UNISTD_CANDIDATES = (
    Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    Path("/usr/include/asm/unistd_64.h"),
)
# The same table in kernel headers (the agent image and the chart's /lib/modules mount have
# these, not linux-libc-dev): generated uapi of the build tree.
_KERNEL_UNISTD = "arch/x86/include/generated/uapi/asm/unistd_64.h"


def unistd_candidates(release: str, usr_src: Path = Path("/usr/src")) -> list[Path]:
    """Where the syscall table may be, best first: the running kernel's own headers, the
    libc's uapi copy, then any kernel headers installed (newest first). Syscall numbers are
    ABI, never changed: an older table only lacks the newer syscalls."""
    installed = sorted(usr_src.glob(f"linux-headers-*/{_KERNEL_UNISTD}"), reverse=True)
    return [Path(f"/lib/modules/{release}/build") / _KERNEL_UNISTD, *UNISTD_CANDIDATES, *installed]


@dataclass(frozen=True, slots=True)
class Field:
    """One ``field:`` line of a format file."""

    decl: str  # the C declaration, e.g. "__data_loc char[] filename"
    name: str
    offset: int
    size: int
    signed: bool

    @property
    def is_data_loc(self) -> bool:
        return self.decl.startswith("__data_loc")

    @property
    def is_char_pointer(self) -> bool:
        """``char *`` / ``const char *`` (a user string for syscall arguments)."""
        base = self.decl[: self.decl.rfind(self.name)].replace("const", "").split()
        return base == ["char", "*"]


@dataclass(frozen=True, slots=True)
class TracepointFormat:
    subsystem: str
    event: str
    id: int
    fields: tuple[Field, ...]

    def field(self, index: int) -> Field | None:
        return self.fields[index] if 0 <= index < len(self.fields) else None

    def by_name(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


_FIELD_RE = re.compile(
    r"^\s*field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
    r"\s*signed:(?P<signed>\d+);"
)


def parse_format(text: str, subsystem: str = "", event: str = "") -> TracepointFormat:
    """Parse a tracefs ``format`` file. Raises ValueError if it has no fields."""
    fields: list[Field] = []
    event_id = -1
    for line in text.splitlines():
        if line.startswith("ID:"):
            event_id = int(line.split(":", 1)[1])
            continue
        m = _FIELD_RE.match(line)
        if not m:
            continue
        decl = m["decl"].strip()
        # The name is the last identifier, before any array brackets.
        name_m = re.search(r"([A-Za-z_][A-Za-z0-9_]*)\s*(\[[^\]]*\])?\s*$", decl)
        if not name_m:
            raise ValueError(f"cannot parse field declaration {decl!r}")
        fields.append(
            Field(
                decl=decl,
                name=name_m[1],
                offset=int(m["off"]),
                size=int(m["size"]),
                signed=m["signed"] == "1",
            )
        )
    if not fields:
        raise ValueError("no fields in format")
    return TracepointFormat(subsystem=subsystem, event=event, id=event_id, fields=tuple(fields))


def find_tracefs() -> Path | None:
    """The mounted tracefs with an ``events`` directory, or None."""
    for candidate in TRACEFS_CANDIDATES:
        if (candidate / "events").is_dir():
            return candidate
    return None


def read_format(tracefs: Path, subsystem: str, event: str) -> TracepointFormat | None:
    """The format of ``subsystem/event`` on this kernel, or None if it has no such event."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", subsystem) or not re.fullmatch(r"[A-Za-z0-9_]+", event):
        return None
    try:
        text = (tracefs / "events" / subsystem / event / "format").read_text()
    except OSError:
        return None
    return parse_format(text, subsystem, event)


def parse_syscall_table(text: str) -> dict[str, int]:
    """``__NR_name number`` defines of an asm/unistd_64.h."""
    table: dict[str, int] = {}
    for m in re.finditer(r"^#define\s+__NR_([a-z0-9_]+)\s+(\d+)\s*$", text, re.M):
        table[m[1]] = int(m[2])
    return table


@lru_cache(maxsize=1)
def syscall_numbers() -> Mapping[str, int]:
    """Syscall name -> number for this architecture (x86-64), from the uapi header.

    The sys_enter tracepoints report the number, not the name, and tracefs does not list
    the mapping; the uapi header does (Debian's linux-libc-dev, or the generated copy in
    kernel headers: :func:`unistd_candidates`). Empty if no header is found: sys_enter
    hooks are then reported unsupported.
    """
    for candidate in unistd_candidates(os.uname().release):
        try:
            return parse_syscall_table(candidate.read_text())
        except OSError:
            continue
    return {}
