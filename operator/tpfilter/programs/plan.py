"""What the compiler makes of a policy (and what it is told of the node): the values the
loader writes into the programs' maps. Pure data, apart from the compile step
(:mod:`tpfilter.programs.compiler`) so that the loader, the hook table, the events and the
per-type compilers (kprobes, lists, netargs, ...) share them without importing the
compiler itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tpfilter.programs import layout
from tpfilter.programs.binsel import bin_mask
from tpfilter.programs.layout import Action, BinOp, IntType, Kind, Op
from tpfilter.programs.tasksel import TASK_BIT, TaskFilter
from tpfilter.programs.tracefs import TracepointFormat


@dataclass(frozen=True, slots=True)
class NodeEnv:
    """What the node offers, as the compiler needs it."""

    tracepoint_format: Callable[[str, str], TracepointFormat | None]
    syscall_numbers: Mapping[str, int]
    kprobes: str | None = "kprobes are not available"  # None = available, else why not
    lsm: str | None = "BPF LSM programs are not available"
    tracepoints: str | None = None  # None = tracefs and the programs are there
    kernel: Any = None  # programs.btf.KernelBtf of the node (kprobes: functions, offsets)
    kprobe_hook: Callable[[str], int | None] | None = None  # a kernel function's hook ID
    syscall_prefix: str = "__x64_"  # the arch's syscall wrapper prefix (syscall: true)
    host_ns: Mapping[str, int | str] | None = None  # host_ns: the node's namespaces (hostns.py)


@dataclass(frozen=True, slots=True)
class ArgMatch:
    """One matchArgs entry, ready for the map."""

    kind: Kind
    src: int  # values[] index (INT) or strs[] index (USER_STR); 0 for PATH
    op: Op
    int_type: IntType = IntType.U64
    imm: int = 0  # GT/LT bound, Mask bits (already normalised, as u64)
    ints: tuple[int, ...] = ()  # Equal/NotEqual sets (normalised u64)
    strings: tuple[bytes, ...] = ()  # Equal/NotEqual/Prefix sets, Postfix: as written
    net: tuple[tuple[int, int, bytes], ...] = ()  # Kind.NET: LPM entries (netargs)


@dataclass(frozen=True, slots=True)
class Selector:
    bin_op: BinOp = BinOp.NONE
    binaries: tuple[bytes, ...] = ()
    args: tuple[ArgMatch, ...] = ()
    actions: Action = Action.POST
    error: int = 0  # Override's argError
    signal: int = 0  # Signal's argSig
    task: tuple[TaskFilter, ...] = ()  # matchPIDs/matchNamespaces/matchCapabilities (tasksel)
    ret_args: tuple[ArgMatch, ...] = ()  # matchReturnArgs, on values[0] (retsel)


@dataclass(frozen=True, slots=True)
class ArgSpec:
    """A declared argument, for the events: where its value is and what to call it."""

    index: int
    label: str
    kind: Kind
    src: int
    int_type: IntType = IntType.U64
    obj: str = ""  # Kind.OBJ: the kernel-object type (programs.objargs decodes it)


@dataclass(frozen=True, slots=True)
class HookConfig:
    """One hook entry (tracepoint) of a policy (programs/hooktable.py: where it goes)."""

    hook: int  # layout.HOOK_EXEC or a syscall number
    name: str  # "sched/sched_process_exec", "syscalls/sys_enter_openat"
    selectors: tuple[Selector, ...]
    args: tuple[ArgSpec, ...] = ()
    capture: int = layout.NO_CAPTURE  # strs[] index of a user string put in events
    message: str = ""
    tags: tuple[str, ...] = ()
    mechanism: str = ""  # how the node runs it, when not obvious from the name
    str_reader: tuple[int, int] = (layout.NO_READER, 0)  # kprobes: (arg, member offset)
    reader_kind: int = layout.READ_MEMBER  # what str_reader's argument is (layout.READ_*)
    buf_sizes: tuple[tuple[int, int], ...] = ()  # kprobes: char_buf (strs[] k, its size's values[])
    syscall: bool = False  # kprobe on the arch's syscall wrapper: the user's arguments
    returns: bool = False  # kprobe with return: true (a kretprobe sends the return value)
    kern_strs: int = 0  # kprobes: bit k, strs[k] is read from kernel memory
    override_lsm: str = ""  # the BPF LSM hook whose program returns this entry's Override
    net_readers: tuple[tuple[int, int, int], ...] = ()  # kprobes: (tuple, arg, netargs kind)
    obj_readers: tuple[tuple[int, int, tuple[tuple[int, ...], ...]], ...] = ()  # objargs
    str_add: tuple[tuple[int, int], ...] = ()  # kprobes: strs[k] at values[k] + offset

    @property
    def attach(self) -> str | None:
        """The tracepoint to attach the sys_enter program to; None for the exec hook."""
        return None if self.hook == layout.HOOK_EXEC else self.name

    @property
    def str_mask(self) -> int:
        """Bit k: strs[k] is compared by a selector (0: the binary)."""
        mask = 0
        for sel in self.selectors:
            if sel.bin_op is not BinOp.NONE:
                mask |= 1
            for arg in sel.args:
                if arg.kind is Kind.PATH:
                    mask |= 1
                elif arg.kind is Kind.USER_STR:
                    mask |= 1 << arg.src
            # the task's facts (tpf_task.h); matchBinaries' come from the BINARY stage
            mask |= TASK_BIT if any(not f.binary for f in sel.task) else 0
        return mask

    @property
    def rev_mask(self) -> int:
        mask = 0
        for sel in self.selectors:
            for arg in sel.args:
                if arg.op.postfix_set:
                    mask |= 1 << (0 if arg.kind is Kind.PATH else arg.src)
            mask |= TASK_BIT if any(f.follow for f in sel.task) else 0  # followForks' walk
        return mask

    @property
    def bin_mask(self) -> int:
        """tpf_hook.bin_mask: the binary stage's work for this entry (binsel.py)."""
        mask = 0
        for sel in self.selectors:
            mask |= bin_mask(sel.task)
        return mask

    @property
    def capture_mask(self) -> int:
        return 0 if self.capture == layout.NO_CAPTURE else 1 << self.capture


@dataclass(frozen=True, slots=True)
class PolicyPlan:
    configs: tuple[HookConfig, ...] = ()
    unsupported: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.unsupported
