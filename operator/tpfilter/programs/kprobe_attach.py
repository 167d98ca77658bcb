"""Attaching the generic kprobe program (bpf/programs/tpf_kprobe.c) to a kernel function:
the function's address -> its hook ID (tpf_kfuncs), how the hook reads its arguments
(tpf_khooks), the return probe of ``return: true`` entries and the BPF LSM Override
program of an Override entry (tpfilter.programs.lsm_override).

What a hook reads is the function's (syscall wrapper or not, which arguments are kernel
strings), so every entry on it agrees; ``return: true`` is an entry's: once one entry of
a function wants the return, every posted event of that function waits for it (and gets
the return value) until the function is detached."""

from __future__ import annotations

import contextlib
import ctypes as ct
from typing import Any

from tpfilter.programs import layout
from tpfilter.programs.plan import HookConfig

# bpf_get_func_ip() of a kprobe is the probed address: the symbol's, or 4 bytes further
# on kernels with IBT, where the probe goes after the function's ENDBR instruction.
_ENDBR_LEN = 4


def _addresses(bpf: Any, function: str) -> list[int]:
    addr = int(bpf.ksymname(function.encode()))
    if addr <= 0:
        raise ValueError(f"no address for kernel function {function} in /proc/kallsyms")
    return [addr, addr + _ENDBR_LEN]


_KH_SYSCALL = 1  # tpf_kprobe.c TPF_KH_*
_KH_RETURN = 2


def kprobe_attach(programs: Any, function: str, cfg: HookConfig, *, attached: bool) -> None:
    """Make ``function``'s probes serve ``cfg`` (``attached``: the kprobe already is)."""
    bpf = programs.bpf
    if not programs.kprobes:
        raise RuntimeError("the kprobe program is not loaded on this node")
    if cfg.override_lsm:
        programs.lsm_overrides.ensure(cfg.override_lsm, cfg.hook)
    khooks = bpf.get_table(b"tpf_khooks")
    key = ct.c_int(cfg.hook)
    leaf = khooks[key] if attached else khooks.Leaf()
    if cfg.str_reader[0] != layout.NO_READER or not attached:
        leaf.str_arg, leaf.str_off = cfg.str_reader
        leaf.reader = cfg.reader_kind
    if not attached:
        ct.memset(ct.addressof(leaf.buf_size), 0xFF, ct.sizeof(leaf.buf_size))
    for k, size_src in cfg.buf_sizes:
        leaf.buf_size[k] = size_src
    leaf.kern_strs |= cfg.kern_strs
    for slot, arg, kind in cfg.net_readers:  # the function's parameters: entries agree
        leaf.net_arg[slot], leaf.net_kind[slot] = arg, kind
    for slot, arg, reads in cfg.obj_readers:  # so are the object arguments (objargs)
        spec = leaf.obj[slot]
        spec.arg, spec.nfields = arg, len(reads)
        for i, (off, hop, size, dst, flags) in enumerate(reads):
            f = spec.f[i]
            f.off, f.hop, f.size, f.dst, f.flags = off, hop, size, dst, flags
    for k, offset in cfg.str_add:
        leaf.str_add[k] = offset
    leaf.flags |= (_KH_SYSCALL if cfg.syscall else 0) | (_KH_RETURN if cfg.returns else 0)
    khooks[key] = leaf
    if cfg.returns and function not in programs.kretprobes:
        bpf.attach_kretprobe(event=function.encode(), fn_name=b"tpf_kretprobe")
        programs.kretprobes.add(function)
    if attached:
        return
    kfuncs = bpf.get_table(b"tpf_kfuncs")
    for addr in _addresses(bpf, function):
        kfuncs[kfuncs.Key(addr)] = kfuncs.Leaf(cfg.hook)
    bpf.attach_kprobe(event=function.encode(), fn_name=b"tpf_kprobe")


def kprobe_detach(programs: Any, function: str) -> None:
    bpf = programs.bpf
    bpf.detach_kprobe(event=function.encode())
    if function in programs.kretprobes:
        bpf.detach_kretprobe(event=function.encode())
        programs.kretprobes.discard(function)
    hook = function.removeprefix("security_")
    if hook != function and hook in programs.lsm_overrides.hooks:
        programs.lsm_overrides.release(hook)
    kfuncs = bpf.get_table(b"tpf_kfuncs")
    hooks = set()
    for addr in _addresses(bpf, function):
        with contextlib.suppress(KeyError):
            hooks.add(int(kfuncs[kfuncs.Key(addr)].value))
            del kfuncs[kfuncs.Key(addr)]
    for name in (b"tpf_retwait", b"tpf_retpend"):  # calls in flight: their returns go unseen
        table = bpf.get_table(name)
        for key in [k for k in table if k.hook in hooks]:
            with contextlib.suppress(KeyError):
                del table[key]
    # A verdict a detached kprobe left (its LSM hook never ran) must not deny a later call.
    bpf.get_table(b"tpf_override").clear()
