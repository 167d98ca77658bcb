"""What a killed real node leaves on the host, and how the next node takes it back.

Why this exists: a real node (:mod:`tpfilter_dev.realnode`) is killed with its test run
(a CI time limit, the end of a session, SIGKILL) and then cannot undo what it made. The
kernel keeps it: the node's address on ``lo``, its CNI bridge, one network namespace per
pod (``/run/netns/cni-*``, each holding a veth pair), the ``kubepods`` cgroups, mounts under
its work directory. The next run on the same machine found ``100.96.0.1`` on ``lo`` and
refused to start (a CI run failed on exactly that). A node now looks before it starts:

* a live node's daemons (kubelet, containerd, etcd, ... whose command line names a node
  work directory) mean another node really runs: it is left alone and the start refused;
* anything else of that footprint is a dead node's: it is removed, and what was removed is
  returned so the caller can say so.

The footprint is a value (:class:`NodeFootprint`) so that a test can make and reclaim a
footprint of its own names beside a live node, with the same code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")  # where containerd's CRI (and `ip netns`) pins namespaces
# /proc/PID/comm is cut to 15 bytes: "kube-controller-manager" reads "kube-controller".
NODE_DAEMONS = frozenset(
    {"kubelet", "containerd", "etcd", "kube-apiserver", "kube-scheduler", "kube-controller"}
)


@dataclass(frozen=True, kw_only=True)
class NodeFootprint:
    """The names a node's run gives to what it makes on the host."""

    address: str  # a /32 on lo
    bridge: str
    workdir_prefix: str  # tempfile.mkdtemp(prefix=...) in the temp directory
    cgroup_root: str  # the top cgroup directory in every hierarchy
    netns_prefix: str  # pod network namespaces in NETNS_DIR

    def workdirs(self, *, keep: Path | None = None) -> list[Path]:
        found = Path(tempfile.gettempdir()).glob(f"{self.workdir_prefix}*")
        return sorted(w for w in found if w != keep)

    def marker(self) -> str:
        """What every daemon's command line of such a node contains (its work directory)."""
        return f"/{self.workdir_prefix}"


def _cmdline(pid: str) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        return raw.replace(b"\0", b" ").decode(errors="replace")
    return ""


def _comm(pid: str) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def live_daemons(footprint: NodeFootprint) -> list[str]:
    """``"PID comm"`` of each running daemon of a node with this footprint."""
    marker = footprint.marker()
    return [
        f"{pid} {_comm(pid)}"
        for pid in os.listdir("/proc")
        if pid.isdigit() and _comm(pid) in NODE_DAEMONS and marker in _cmdline(pid)
    ]


def reclaim(footprint: NodeFootprint, *, keep: Path | None = None) -> list[str]:
    """Remove a dead node's footprint; return what was there. Call only when
    :func:`live_daemons` is empty (a live node's footprint is its own). ``keep`` is the
    caller's own new work directory."""
    removed: list[str] = []
    removed += _kill_leftover_processes(footprint)
    removed += _unmount_workdirs(footprint.workdirs(keep=keep))
    removed += remove_unused_netns(footprint)
    if _run("ip", "link", "show", footprint.bridge).returncode == 0:
        _run("ip", "link", "del", footprint.bridge)
        removed.append(f"bridge {footprint.bridge}")
    if f" {footprint.address}/32 " in _run("ip", "-4", "addr", "show", "dev", "lo").stdout:
        _run("ip", "addr", "del", f"{footprint.address}/32", "dev", "lo")
        removed.append(f"address {footprint.address} on lo")
    removed += remove_cgroups(footprint.cgroup_root)
    for workdir in footprint.workdirs(keep=keep):
        shutil.rmtree(workdir, ignore_errors=True)
        removed.append(f"work directory {workdir}")
    return removed


def remove_unused_netns(footprint: NodeFootprint) -> list[str]:
    """Unpin the pod network namespaces no process is in any more (the veth pairs go with
    them). Pods' sandboxes are killed without CRI's StopPodSandbox, so nobody else does."""
    if not NETNS_DIR.is_dir():
        return []
    procs = (p for p in Path("/proc").iterdir() if p.name.isdigit())
    in_use = {_ns_inode(proc / "ns" / "net") for proc in procs}
    removed = []
    for pinned in sorted(NETNS_DIR.glob(f"{footprint.netns_prefix}*")):
        if _ns_inode(pinned) in in_use:
            continue
        _run("umount", "-l", str(pinned))
        with contextlib.suppress(OSError):
            pinned.unlink()
            removed.append(f"network namespace {pinned.name}")
    return removed


def remove_cgroups(root_name: str) -> list[str]:
    """rmdir ``root_name`` (deepest first) in every cgroup hierarchy: empty once its
    processes are gone. A live process keeps its directory (it stays, and is not hidden)."""
    removed = []
    for root in _cgroup_mounts():
        top = root / root_name
        if not top.is_dir():
            continue
        for _ in range(50):  # a dying process's cgroup can take a moment to empty
            dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for d in [*dirs, top]:
                with contextlib.suppress(OSError):
                    d.rmdir()
            if not top.exists():
                removed.append(f"cgroup {top}")
                break
            time.sleep(0.1)
    return removed


def _kill_leftover_processes(footprint: NodeFootprint) -> list[str]:
    """Shims of the dead containerd (their command line names its socket) and whatever still
    runs in the node's cgroups (containers whose shim died first)."""
    marker = footprint.marker()
    pids = {
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and _comm(pid).startswith("containerd-shim") and marker in _cmdline(pid)
    }
    for root in _cgroup_mounts():
        top = root / footprint.cgroup_root
        for procs in top.rglob("cgroup.procs") if top.is_dir() else ():
            with contextlib.suppress(OSError):
                pids.update(int(p) for p in procs.read_text().split())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed process keeps its cgroup and mounts until reaped
    return [f"process {pid}" for pid in sorted(pids)]


def _unmount_workdirs(workdirs: list[Path]) -> list[str]:
    prefixes = tuple(f"{w}/" for w in workdirs)
    if not prefixes:
        return []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        targets = [line.split()[4] for line in f]
    mounted = sorted((t for t in targets if t.startswith(prefixes)), key=len, reverse=True)
    for target in mounted:
        _run("umount", "-l", target)
    return [f"mount {t}" for t in mounted]


def _cgroup_mounts() -> list[Path]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split() for line in f]
    return [Path(m[4]) for m in mounts if "cgroup" in m[m.index("-") + 1]]


def _ns_inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except OSError:
        return -1


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True)
