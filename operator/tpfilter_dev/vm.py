"""Boot Debian's own kernel in QEMU and run one command in it, for what this machine's
kernel cannot do (kprobes, kretprobes, BPF LSM, fmod_ret).

The kernel, guest root and initramfs are built and cached by ``scripts/build-vm.sh``
(``${TPFILTER_CACHE:-/var/cache/tpfilter}/vm/current.env`` names them). The guest root is
shared read-only over virtio-9p, the repository at ``/src`` (writable: the same files the
host sees) and a per-run directory at ``/job``; the guest's init (written here) mounts
proc, sysfs, tmpfs, securityfs, bpffs, debugfs, tracefs and cgroup2, runs the command in
``/src`` with ``/opt/tpfilter/bin`` (the project's dependencies) first in PATH and
``PYTHONPATH=/src/operator``, prints the exit status on the serial console and powers off.
QEMU runs under a timeout and is killed, with its process group, when it passes.

Software emulation only (``-accel tcg``): this machine's /dev/kvm is a nested paravirtual
hypervisor that cannot run the stock kernel (docs in /work/shared/notes/vm-kernel.md).

    python -m tpfilter_dev.vm [--timeout S] COMMAND...     # e.g. pytest -q tests/vm
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXIT_MARK = "TPF-VM-EXIT="
IN_VM_ENV = "TPFILTER_IN_VM"


def cache_dir() -> Path:
    return Path(os.environ.get("TPFILTER_CACHE", "/var/cache/tpfilter")) / "vm"


@dataclass(frozen=True, slots=True)
class VmImage:
    kernel_version: str
    kernel: Path
    root: Path
    initrd: Path

    @classmethod
    def current(cls, cache: Path | None = None) -> VmImage | None:
        """The newest build of scripts/build-vm.sh, or None if there is none (complete)."""
        env = (cache or cache_dir()) / "current.env"
        if not env.is_file():
            return None
        values = dict(line.split("=", 1) for line in env.read_text().splitlines() if "=" in line)
        try:
            image = cls(
                values["KV"], Path(values["KERNEL"]), Path(values["ROOT"]), Path(values["INITRD"])
            )
        except KeyError:
            return None
        if not (image.kernel.is_file() and image.root.is_dir() and image.initrd.is_file()):
            return None
        return image


@dataclass(frozen=True, slots=True)
class VmResult:
    returncode: int  # the command's; -1: no exit status seen (timeout, crash)
    output: str  # the serial console
    seconds: float
    timed_out: bool


_INIT = """#!/bin/sh
export PATH=/opt/tpfilter/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8
export PYTHONPATH=/src/operator PYTHONDONTWRITEBYTECODE=1 {in_vm}=1 TERM=dumb PY_COLORS=0 NO_COLOR=1
mount -t proc proc /proc
mount -t sysfs sys /sys
for d in /tmp /run /var/tmp; do mount -t tmpfs tmpfs $d; done
mount -t securityfs none /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t debugfs none /sys/kernel/debug
mount -t tracefs none /sys/kernel/tracing
mount -t cgroup2 none /sys/fs/cgroup
echo 1 > /proc/sys/kernel/sysrq 2>/dev/null
ip link set lo up  # loopback only (tests serve metrics on 127.0.0.1)
cd /src
echo TPF-VM-START
/bin/sh /job/cmd.sh </dev/null
rc=$?
echo "$rc" > /job/rc
echo "{mark}$rc"
sync
echo o > /proc/sysrq-trigger
while :; do :; done  # until the power-off lands (the root is gone: no sleep binary)
"""


def qemu_argv(image: VmImage, job: Path, repo: Path, *, cpus: int, memory_mb: int) -> list[str]:
    def share(path: Path, tag: str) -> list[str]:
        return ["-virtfs", f"local,path={path},mount_tag={tag},security_model=none,id={tag}"]

    return [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max",
        "-smp", str(cpus), "-m", str(memory_mb),
        "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        *share(image.root, "root"), *share(repo, "src"), *share(job, "job"),
        "-append", "console=ttyS0 quiet panic=-1",
    ]  # fmt: skip


def run(
    command: str,
    *,
    timeout: float,
    image: VmImage | None = None,
    repo: Path = REPO,
    cpus: int = 2,
    memory_mb: int = 2048,
) -> VmResult:
    """Boot the VM, run ``command`` (a shell command line, in /src) as the guest's init,
    power off; the command's exit status and the console. Never outlives ``timeout``."""
    image = image or VmImage.current()
    if image is None:
        raise FileNotFoundError(f"no VM image in {cache_dir()}: run scripts/build-vm.sh")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tpfilter-vm-") as tmp:
        job = Path(tmp)
        (job / "init.sh").write_text(_INIT.format(in_vm=IN_VM_ENV, mark=EXIT_MARK))
        (job / "cmd.sh").write_text(command + "\n")
        proc = subprocess.Popen(
            qemu_argv(image, job, repo, cpus=cpus, memory_mb=memory_mb),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        try:
            raw, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            raw, _ = proc.communicate()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        output = raw.decode(errors="replace").replace("\r\n", "\n")
        rc = -1
        rc_file = job / "rc"
        if rc_file.is_file() and rc_file.read_text().strip().lstrip("-").isdigit():
            rc = int(rc_file.read_text())
        else:
            found = re.findall(rf"^{EXIT_MARK}(-?\d+)", output, re.MULTILINE)
            if found:
                rc = int(found[-1])
    return VmResult(rc, output, time.monotonic() - start, timed_out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    result = run(shlex.join(args.command) or "true", timeout=args.timeout)
    sys.stdout.write(result.output)
    print(
        f"vm: exit {result.returncode} in {result.seconds:.1f} s"
        + (" (timed out)" if result.timed_out else ""),
        file=sys.stderr,
    )
    return result.returncode if result.returncode >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
