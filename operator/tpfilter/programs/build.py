"""Compile the policy programs for this node's kernel and load their tail-call stages.

Why apart from :mod:`tpfilter.programs.loader`: what is compiled depends on the node (its
BTF offsets, whether kprobes load, which optional readers the kernel allows), and that
decision is made once, here; the loader then only attaches and writes maps. Each optional
reader is compiled only when the node can run it, so a node without kprobes never asks the
verifier about kprobe programs, and its stage slot stays empty (the program ends there).

Only this module and the loader's siblings that are handed ``Built.bpf`` touch bcc.
"""

from __future__ import annotations

import ctypes as ct
import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpfilter import bpfsrc
from tpfilter.bpfsrc import bcc_source, node_pid_namespace
from tpfilter.programs import layout
from tpfilter.programs.binsel import binary_cflags
from tpfilter.programs.fileargs import fd_cflags
from tpfilter.programs.netargs import net_cflags
from tpfilter.programs.pathwalk import path_cflags
from tpfilter.programs.taskbtf import task_cflags
from tpfilter.programs.tracefs import TracepointFormat

log = logging.getLogger(__name__)

ENV_SOURCE = "TPFILTER_PROGRAMS_SOURCE"

# Stage numbers are the C side's (tpf_programs.c TPF_STAGE_*, tpf_kprobe.c TPF_STAGE_*).
_STAGES = (("tpf_stage_filter", 0), ("tpf_stage_select", 1), ("tpf_stage_strings", 2))
_KSTAGE_PATH = 3  # kprobes only, when the path walk is compiled
_KSTAGE_NET = 4  # kprobes only, when the network readers are
_KSTAGE_OBJ = 5  # kprobes only, the kernel-object reader
_STAGE_BINARY = 6  # every hook type, when matchBinaries is compiled in
# raw tracepoint -> the program that keeps the process records there (tpf_procs.c)
RECORD_KEEPERS = {"sched_process_fork": "tpf_rec_fork", "sched_process_exit": "tpf_rec_exit"}


def program_source() -> Path:
    """tpf_programs.c: $TPFILTER_PROGRAMS_SOURCE, else bpf/programs/ beside
    policy_filter.h (the package's copy when installed, the repository's in a checkout)."""
    env = os.environ.get(ENV_SOURCE)
    return Path(env) if env else bpfsrc.include_dir() / "programs" / "tpf_programs.c"


def exec_offsets(fmt: TracepointFormat) -> tuple[int, int, int]:
    """Offsets of filename (data_loc), pid and old_pid in sched_process_exec's record."""
    got = []
    for name in ("filename", "pid", "old_pid"):
        f = fmt.by_name(name)
        if f is None:
            raise ValueError(f"sched_process_exec has no field {name}")
        got.append(f.offset)
    return got[0], got[1], got[2]


@dataclass(frozen=True, slots=True)
class LoadReport:
    compile_seconds: float
    load_seconds: float
    rss_after_bytes: int  # peak RSS of the process after compiling and loading
    rss_now_bytes: int = 0  # resident right after loading (what the agent keeps)


@dataclass(frozen=True, slots=True)
class Built:
    bpf: Any  # bcc.BPF
    binaries: bool  # matchBinaries compiled in (tpf_binary.c)
    report: LoadReport


def build(*, pin_dir: Path, exec_format: TracepointFormat, kprobes: bool, kernel: Any) -> Built:
    """Compile for this node and fill ``tpf_stages`` (and ``tpf_kstages``)."""
    from bcc import BPF

    node_pidns = node_pid_namespace()
    # Said once, because a wrong one fails quietly: run without hostPID, the agent's
    # own namespace is not the node's, and the runtime's processes in a container's
    # cgroup are then taken for the container's (bpf/policy_filter.h).
    log.info(
        "node PID namespace (the agent's own: the DaemonSet runs with hostPID): "
        "inode %d on nsfs device %d",
        node_pidns.ino,
        node_pidns.dev,
    )
    paths = path_cflags(kernel)  # the path walk: file/path args, executables
    paths += fd_cflags(kernel) if paths and kprobes else []  # ... and fd args (file table)
    binary = binary_cflags(kernel)  # matchBinaries (tpf_binary.c)
    nets = net_cflags(kernel) if kprobes else []  # sock/socket/sockaddr/skb args
    src = bcc_source(
        program_source(),
        pin_dir=pin_dir,
        node_pidns=node_pidns,
        extra_cflags=(
            *layout.cflags(exec_offsets=exec_offsets(exec_format)),
            *(["-DTPF_WITH_KPROBES", *nets] if kprobes else []),
            *paths,
            *task_cflags(kernel),  # matchPIDs/matchNamespaces/matchCapabilities
            *binary,
        ),
    )
    t0 = time.monotonic()
    files = [name for name, wanted in _extra_sources(kprobes, bool(nets), bool(binary)) if wanted]
    # bcc makes programs only of functions in its main text: the other files are appended
    text = src.text + "".join((program_source().parent / f).read_text() for f in files)
    bpf: Any = BPF(text=text.encode(), cflags=src.cflags)
    t1 = time.monotonic()
    tracepoint_stages = [(name, index, True) for name, index in _STAGES]
    tracepoint_stages.append(("tpf_stage_binary", _STAGE_BINARY, bool(binary)))
    _fill(bpf, b"tpf_stages", BPF.TRACEPOINT, tracepoint_stages)
    bpf.load_func(b"tpf_exec", BPF.TRACEPOINT)
    bpf.load_func(b"tpf_sys_enter", BPF.TRACEPOINT)
    for keeper in RECORD_KEEPERS.values():
        bpf.load_func(keeper.encode(), BPF.RAW_TRACEPOINT)
    if kprobes:
        kprobe_stages = [(n.replace("_stage", "_kstage"), i, True) for n, i in _STAGES]
        kprobe_stages += [
            ("tpf_kstage_path", _KSTAGE_PATH, bool(paths)),
            ("tpf_kstage_net", _KSTAGE_NET, bool(nets)),
            ("tpf_kstage_obj", _KSTAGE_OBJ, True),
            ("tpf_kstage_binary", _STAGE_BINARY, bool(binary)),
        ]
        _fill(bpf, b"tpf_kstages", BPF.KPROBE, kprobe_stages)
        bpf.load_func(b"tpf_kprobe", BPF.KPROBE)
        bpf.load_func(b"tpf_kretprobe", BPF.KPROBE)
    t2 = time.monotonic()
    report = LoadReport(t1 - t0, t2 - t1, _rss_bytes(), _rss_now_bytes())
    return Built(bpf=bpf, binaries=bool(binary), report=report)


def _extra_sources(kprobes: bool, nets: bool, binary: bool) -> list[tuple[str, bool]]:
    return [
        ("tpf_retsel.c", kprobes),  # matchReturnArgs
        ("tpf_kprobe.c", kprobes),
        ("tpf_obj.c", kprobes),  # the kernel-object reader
        ("tpf_net.c", kprobes and nets),
        ("tpf_binary.c", binary),  # after tpf_kprobe.c: its kprobe stage uses tpf_kstages
        ("tpf_procs.c", True),  # the process records' keepers (procrecords.py attaches them)
    ]


def _fill(bpf: Any, array: bytes, prog_type: int, stages: list[tuple[str, int, bool]]) -> None:
    table = bpf.get_table(array)
    for name, index, compiled in stages:
        if compiled:
            fn = bpf.load_func(name.encode(), prog_type)
            table[ct.c_int(index)] = ct.c_int(fn.fd)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss_now_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
