"""How BPF programs get ``policy_filter.h``: inlined into their source, plus the cflags.

Why inlined and not ``#include``d: bcc rewrites map calls (``m.lookup(&k)`` becomes
``bpf_map_lookup_elem(<map fd>, &k)``) only in the main source file. A map call in an
#included header is left as a call through a struct member, which the verifier rejects
("unknown opcode 8d"), and bcc refuses map calls inside macros. So :func:`expand_source`
replaces the line ``#include "policy_filter.h"`` with the header's text, between ``#line``
directives so that compiler errors still name the header and the program's own lines.
The header itself refuses a real #include (``__INCLUDE_LEVEL__``) with a clear message.

The header lives in the repository's top-level ``bpf/`` directory, next to (not inside)
the Python package, because it is C shared by every program tpfilter or a user compiles.
That directory is found in three situations, tried in this order:

1. ``$TPFILTER_BPF_INCLUDE`` - an explicit override (packagers, odd layouts);
2. ``<package>/bpf`` - an installed wheel that ships the header as package data;
3. ``<repo>/bpf`` - a source checkout or editable install (this file is
   ``<repo>/operator/tpfilter/bpfsrc.py``).

The pin path goes to the compiler as a macro rather than being written into the header so
that tests (unique pin dirs) and the agent (``--pin-dir``) compile the same source. So does
the node's PID namespace (:func:`node_pid_namespace`): the check tells a container's own
processes from the runtime's by it, and it is a constant of the node for the agent's life.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tpfilter.bpfmaps import DEFAULT_MAX_POLICIES, DEFAULT_PIN_DIR, OUTER_PIN_NAME

__all__ = [
    "ENV_INCLUDE",
    "HEADER",
    "BccSource",
    "PidNamespace",
    "bcc_source",
    "cflags",
    "expand_source",
    "include_dir",
    "node_pid_namespace",
    "outer_pin_path",
]

HEADER = "policy_filter.h"
ENV_INCLUDE = "TPFILTER_BPF_INCLUDE"


def _candidates() -> list[Path]:
    here = Path(__file__).resolve().parent
    found: list[Path] = []
    if env := os.environ.get(ENV_INCLUDE):
        found.append(Path(env))
    found.append(here / "bpf")
    found.append(here.parent.parent / "bpf")
    return found


def include_dir() -> Path:
    """The directory holding ``policy_filter.h`` (absolute), for ``-I``."""
    candidates = _candidates()
    for directory in candidates:
        if (directory / HEADER).is_file():
            return directory.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"{HEADER} not found (tried {tried}); set ${ENV_INCLUDE}")


def outer_pin_path(pin_dir: Path = DEFAULT_PIN_DIR) -> Path:
    """The bpffs path of the outer map that ``PinnedFilterMaps(pin_dir=...)`` uses."""
    return Path(pin_dir) / OUTER_PIN_NAME


@dataclass(frozen=True, slots=True)
class PidNamespace:
    """A PID namespace as bpf_get_ns_current_pid_tgid() names it: nsfs device and inode."""

    dev: int  # the kernel's dev_t (MKDEV: major << 20 | minor), not stat()'s encoding
    ino: int


def node_pid_namespace(ns_link: Path = Path("/proc/self/ns/pid")) -> PidNamespace:
    """The node's PID namespace: the agent's own, since it runs with hostPID (the chart
    sets it; run on the host, it is the host's).

    ``/proc/1/ns/pid`` would say the same where readable, but is not everywhere (a
    sandbox's PID 1 may refuse it even to root); our own link always is.
    """
    st = os.stat(ns_link)
    return PidNamespace(dev=os.major(st.st_dev) << 20 | os.minor(st.st_dev), ino=st.st_ino)


def cflags(
    pin_dir: Path = DEFAULT_PIN_DIR,
    *,
    max_policies: int = DEFAULT_MAX_POLICIES,
    node_pidns: PidNamespace | None = None,
) -> list[str]:
    """Compiler flags for a bcc program that includes ``policy_filter.h``.

    For ``bcc.BPF(src_file=..., cflags=cflags(pin_dir))``. bcc hands these to clang as
    argv, not through a shell, so the quotes around the path are part of the macro value
    and must not be escaped further. ``node_pidns`` defaults to :func:`node_pid_namespace`.
    """
    pidns = node_pidns or node_pid_namespace()
    pin = outer_pin_path(pin_dir)
    text = str(pin)
    if not pin.is_absolute() or any(c in text for c in '"\\\n'):
        raise ValueError(f"pin path must be absolute and free of quotes/backslashes: {text!r}")
    return [
        f"-I{include_dir()}",
        f'-DTPF_FILTER_PIN="{text}"',
        f"-DTPF_MAX_POLICIES={max_policies}",
        f"-DTPF_NODE_PIDNS_DEV={pidns.dev}ULL",
        f"-DTPF_NODE_PIDNS_INO={pidns.ino}ULL",
    ]


# `#include "policy_filter.h"` or `#include <policy_filter.h>`, alone on its line.
_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*[<"]policy_filter\.h[>"][ \t]*$', re.M)


def _c_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expand_source(text: str, *, filename: str = "program.c") -> str:
    """``text`` with its ``#include "policy_filter.h"`` lines replaced by the header.

    ``filename`` is what the ``#line`` directive after the header calls the program, for
    error messages. Text without such an include is returned unchanged.
    """
    header_path = include_dir() / HEADER
    header = header_path.read_text(encoding="utf-8")
    if not header.endswith("\n"):
        header += "\n"

    def inline(match: re.Match[str]) -> str:
        # The line after the include is this many newlines into the original text.
        next_line = text.count("\n", 0, match.start()) + 2
        return (
            f"#line 1 {_c_string(str(header_path))}\n{header}"
            f"#line {next_line} {_c_string(filename)}"
        )

    return _INCLUDE_RE.sub(inline, text)


@dataclass(frozen=True, slots=True)
class BccSource:
    """What to pass to ``bcc.BPF(text=..., cflags=...)``."""

    text: str
    cflags: list[str]


def bcc_source(
    src_file: Path,
    *,
    pin_dir: Path = DEFAULT_PIN_DIR,
    max_policies: int = DEFAULT_MAX_POLICIES,
    node_pidns: PidNamespace | None = None,
    extra_cflags: tuple[str, ...] = (),
) -> BccSource:
    """A program file ready for bcc: header inlined, pin macro set.

    ``-I`` of the program's own directory is added because bcc compiles ``text=`` as a
    virtual file, so relative includes would otherwise not find the program's neighbours.
    """
    src_file = Path(src_file).resolve()
    text = expand_source(src_file.read_text(encoding="utf-8"), filename=str(src_file))
    flags = [
        f"-I{src_file.parent}",
        *cflags(pin_dir, max_policies=max_policies, node_pidns=node_pidns),
        *extra_cflags,
    ]
    return BccSource(text=text, cflags=flags)
