"""The node's own namespaces, which ``host_ns`` in ``matchNamespaces`` (and
``isNamespaceCapability``) stands for. I/O only; tasksel.py compiles with the answer.

The agent runs with hostPID (the chart sets it), so PID 1 is the node's init and
``/proc/1/ns/<type>`` names the node's namespace of each type, whatever namespaces the
agent's own container has (its mount, UTS, network namespaces are its pod's). Where PID 1's
links cannot be read (a sandbox's PID 1 may refuse them even to root: the case of an agent
run directly on a machine, not in a pod) the agent's own namespace is taken and the
fallback logged, as ``tpfilter.bpfsrc.node_pid_namespace`` does for the PID namespace.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tpfilter.programs.tasksel import NS_LINKS

log = logging.getLogger(__name__)


def host_namespaces(proc: Path = Path("/proc")) -> dict[str, int | str]:
    """Namespace name (``Uts``, ``Net``, ...) -> the node's inode number, or why unknown."""
    out: dict[str, int | str] = {}
    fallback = []
    for name, link in NS_LINKS.items():
        try:
            out[name] = os.stat(proc / "1" / "ns" / link).st_ino
            continue
        except OSError as exc:
            why = f"{proc}/1/ns/{link} cannot be read ({exc.strerror or exc})"
        try:
            out[name] = os.stat(proc / "self" / "ns" / link).st_ino
            fallback.append(name)
        except OSError as exc:
            out[name] = f"{why}, nor {proc}/self/ns/{link} ({exc.strerror or exc})"
    if fallback:
        log.warning(
            "host_ns: PID 1's namespaces cannot be read; the agent's own are taken for %s "
            "(right where the agent runs on the node itself, not in a pod)",
            ", ".join(fallback),
        )
    return out
