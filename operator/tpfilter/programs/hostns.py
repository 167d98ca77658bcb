"""The node's own namespaces, which ``host_ns`` in ``matchNamespaces`` (and
``isNamespaceCapability``) stands for. I/O only; tasksel.py compiles with the answer.

The agent runs with hostPID (the chart sets it), so PID 1 is the node's init and
``/proc/1/ns/<type>`` names the node's namespace of each type, whatever namespaces the
agent's own container has (its mount, UTS, network namespace may be its own). The PID
namespace is taken from the agent itself, as everywhere else in tpfilter
(``tpfilter.bpfsrc.node_pid_namespace``): with hostPID it is the node's, and it is readable
where ``/proc/1/ns/pid`` may not be.
"""

from __future__ import annotations

import os
from pathlib import Path

from tpfilter.programs.tasksel import NS_LINKS


def host_namespaces(proc: Path = Path("/proc")) -> dict[str, int | str]:
    """Namespace name (``Uts``, ``Net``, ...) -> the node's inode number, or why unknown."""
    out: dict[str, int | str] = {}
    for name, link in NS_LINKS.items():
        path = proc / ("self" if name == "Pid" else "1") / "ns" / link
        try:
            out[name] = os.stat(path).st_ino
        except OSError as exc:
            out[name] = f"{path} cannot be read ({exc.strerror or exc})"
    return out
