"""Attaching the generic kprobe program (bpf/programs/tpf_kprobe.c) to a kernel function:
the function's address -> its hook ID (tpf_kfuncs), the hook's string reader (tpf_khooks)."""

from __future__ import annotations

import contextlib
import ctypes as ct
from typing import Any

from tpfilter.programs.compiler import HookConfig

# bpf_get_func_ip() of a kprobe is the probed address: the symbol's, or 4 bytes further
# on kernels with IBT, where the probe goes after the function's ENDBR instruction.
_ENDBR_LEN = 4


def _addresses(bpf: Any, function: str) -> list[int]:
    addr = int(bpf.ksymname(function.encode()))
    if addr <= 0:
        raise ValueError(f"no address for kernel function {function} in /proc/kallsyms")
    return [addr, addr + _ENDBR_LEN]


def kprobe_attach(programs: Any, function: str, cfg: HookConfig) -> None:
    bpf = programs.bpf
    if not programs.kprobes:
        raise RuntimeError("the kprobe program is not loaded on this node")
    khooks = bpf.get_table(b"tpf_khooks")
    leaf = khooks.Leaf()
    leaf.str_arg, leaf.str_off = cfg.str_reader
    khooks[ct.c_int(cfg.hook)] = leaf
    kfuncs = bpf.get_table(b"tpf_kfuncs")
    for addr in _addresses(bpf, function):
        kfuncs[kfuncs.Key(addr)] = kfuncs.Leaf(cfg.hook)
    bpf.attach_kprobe(event=function.encode(), fn_name=b"tpf_kprobe")


def kprobe_detach(programs: Any, function: str) -> None:
    bpf = programs.bpf
    bpf.detach_kprobe(event=function.encode())
    kfuncs = bpf.get_table(b"tpf_kfuncs")
    for addr in _addresses(bpf, function):
        with contextlib.suppress(KeyError):
            del kfuncs[kfuncs.Key(addr)]
    # A verdict a detached kprobe left (its LSM hook never ran) must not deny a later call.
    bpf.get_table(b"tpf_override").clear()
