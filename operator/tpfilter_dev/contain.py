"""Run a command the way a container runtime runs a container's process: in the container's
cgroup and in the pod's own PID namespace (unless the pod has ``hostPID: true``).

Why it exists: ``policy_filter_check()`` tells a container's own processes from processes
of the node that only entered the container's cgroup (the runtime itself, a host tool) by
their PID namespace (``bpf/policy_filter.h``). Tests, the kubelet stand-in, benchmarks and
the local run therefore start "container" processes like runc does, or they would be
testing the runtime's case instead of the container's.

The steps are runc's, done by this helper process::

    write our PID to <cgroup>/cgroup.procs     # the helper is now in the container's
                                               # cgroup, still in the node's namespace
    new:  unshare(CLONE_NEWPID)                # a container start
    join: setns(<a container process's PID namespace>)   # `kubectl exec`
    node: (nothing)                            # a hostPID pod
    fork; the child execs the command          # new: as PID 1 of the namespace
          (with --nested a/b: first moves itself into <cgroup>/a, then <cgroup>/a/b,
          making them: a container process escaping into child cgroups)

and the helper waits and ends as the child ended (the same exit code, or killed by the same
signal), so callers see the command's own status: -9 from ``subprocess`` means the command
was SIGKILLed. Both die with their parent (PR_SET_PDEATHSIG), so a killed caller leaves
nothing running.

    python -m tpfilter_dev.contain [--nested A/B] CGROUP_DIR {new,join,node} COMMAND [ARG...]
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
MODES = ("new", "join", "node")


def argv(
    cgroup: Path,
    command: Sequence[str | Path],
    *,
    pid_ns: str = "new",
    nested: Sequence[str] = (),
) -> list[str]:
    """The argv that runs ``command`` as a process of the container whose cgroup is
    ``cgroup``; ``pid_ns`` is one of :data:`MODES`, ``nested`` the child cgroups it moves
    down into before exec (see the module docstring)."""
    if pid_ns not in MODES:
        raise ValueError(f"pid_ns must be one of {MODES}, not {pid_ns!r}")
    options = ["--nested", "/".join(nested)] if nested else []
    return [
        sys.executable,
        "-m",
        "tpfilter_dev.contain",
        *options,
        str(cgroup),
        pid_ns,
        *map(str, command),
    ]


def container_process(cgroup: Path) -> int:
    """The PID of a process of ``cgroup`` that is in a PID namespace other than ours (the
    container's own, to join) and has exec'd its command: between fork and exec a child
    still has its launcher's command line, and a Sigkill policy must meet the command's
    exec, not miss it because someone acted on a process that was not started yet."""
    ours = os.stat("/proc/self/ns/pid").st_ino
    for pid in (cgroup / "cgroup.procs").read_text().split():
        try:
            if os.stat(f"/proc/{pid}/ns/pid").st_ino == ours:
                continue
            parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            # empty: in the middle of exec (the new mm has no arguments yet), not started
            if cmdline and cmdline != _cmdline(parent):
                return int(pid)
        except (FileNotFoundError, ProcessLookupError):  # it exited meanwhile
            continue
    raise LookupError(f"no started process of {cgroup} has a PID namespace of its own")


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def wait_started(cgroup: Path, *, timeout: float = 10.0) -> int:
    """Wait until a process started with ``new`` in ``cgroup`` has exec'd its command in
    its namespace (the helper takes a Python start, ~0.1 s); returns its PID. `kubectl
    exec` (``join``) needs it. The new command line shows while the kernel is still
    finishing that exec (its sched_process_exec tracepoint may not have fired yet): a
    caller that must not race the exec's programs waits for a sign from the command."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return container_process(cgroup)
        except LookupError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _libc_call(name: str, *args: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _die_with_parent() -> None:
    _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL)


def _enter_pid_namespace(cgroup: Path, mode: str) -> None:
    if mode == "new":
        _libc_call("unshare", CLONE_NEWPID)
    elif mode == "join":
        fd = os.open(f"/proc/{container_process(cgroup)}/ns/pid", os.O_RDONLY)
        try:
            _libc_call("setns", fd, CLONE_NEWPID)
        finally:
            os.close(fd)


def _end_like(status: int) -> None:
    """Exit as a child that ended with wait ``status`` did."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those cannot be caught anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _move_down(cgroup: Path, nested: str) -> None:
    """Move this process into each cgroup of the path ``nested`` below ``cgroup`` in turn."""
    here = cgroup
    for name in filter(None, nested.split("/")):
        here = here / name
        here.mkdir(exist_ok=True)
        (here / "cgroup.procs").write_text("0")  # 0: the writer itself, in any namespace


def main(args: Sequence[str]) -> None:
    nested = ""
    if args[:1] == ["--nested"] and len(args) > 1:
        nested, args = args[1], args[2:]
    if len(args) < 3 or args[1] not in MODES:
        sys.exit(
            f"usage: python -m tpfilter_dev.contain [--nested A/B] CGROUP_DIR "
            f"{{{','.join(MODES)}}} CMD..."
        )
    cgroup, mode, command = Path(args[0]), args[1], list(args[2:])
    _die_with_parent()
    (cgroup / "cgroup.procs").write_text(str(os.getpid()))
    _enter_pid_namespace(cgroup, mode)
    child = os.fork()
    if child == 0:
        try:
            _die_with_parent()
            _move_down(cgroup, nested)
            os.execvp(command[0], command)
        except OSError as exc:
            print(f"contain: {command[0]}: {exc}", file=sys.stderr)
            os._exit(127)
    _, status = os.waitpid(child, 0)
    _end_like(status)


if __name__ == "__main__":
    main(sys.argv[1:])
