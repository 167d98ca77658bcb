"""Constants shared with bpf/programs/tpf_programs.h.

The tunable sizes are passed to the compiler with -D (see :func:`cflags`), so the program
is built with exactly these values; the fixed ones must match the header (the kernel test
test_programs_exec.py checks the ctypes layout bcc derives from the compiled program).
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

from tpfilter.candidates import INDEX_MAX

NR_HOOKS = 1024
HOOK_EXEC = NR_HOOKS - 1  # sched/sched_process_exec; syscalls use their number
MAX_ANY = 32  # unfiltered entries (policy ID 0, every process) per hook
MAX_PER_HOOK = 4  # entries of one filtered policy on one hook
MAX_CANDS = MAX_ANY + 2 * INDEX_MAX  # candidates per event: 128, a power of two
MAX_KEPT = 128  # entries whose filter passed, per event; a power of two
MAX_SELECTORS = 8
MAX_ARGS = 5  # matchArgs entries per selector (Tetragon's documented limit)
NR_VALUES = 8
FILTER_BATCH = 16  # candidates per FILTER stage program run (tail calls: 128/16 = 8)
SELECT_BATCH = 8  # kept entries per SELECT stage program run (tail calls: 128/8 = 16)
MAX_CONFIG_ID = 0xFFFF_FFFF >> 8  # tpf_stats keys are (config << 8) | counter

STR_MAX = 256  # buffer incl. NUL
LPM_STR_MAX = 248
EQ_STR_MAX = STR_MAX - 2  # 255 bytes read means "maybe cut": equality needs <= 254
ARG_BINARY = 0xFF
NO_CAPTURE = 0xFF
NO_SELECTOR = 0xFF
NO_READER = 0xFF  # a kprobe hook that reads no string
READ_MEMBER = 0  # tpf_kprobe.c TPF_READ_*: strs[0] is a char * member of the struct ...
READ_FILE = 1  # ... the path name of a struct file *
READ_PATH = 2  # ... the path name of a struct path *
READ_FD = 3  # ... the path name of the file an fd is open on in the calling task
READ_DENTRY = 4  # ... the name of a struct dentry * up to its file system's root
READ_KIOCB = 5  # ... the path name of the struct file * at str_off of a struct kiocb *

# Value slots of the exec hook (values[]), and where user strings live (strs[k]).
EXEC_PID = 0
EXEC_OLD_PID = 1
PATH_STR = 0  # strs[0]: the binary


class Kind(IntEnum):
    INT = 1
    PATH = 2
    USER_STR = 3  # a string at the pointer values[src] (user memory, or kernel: kern_strs)
    NOP = 4  # declared, never read (type nop): reported as null, never compared
    NET = 5  # a network argument's tuple ev.net[src] (tpfilter.programs.netargs)
    OBJ = 6  # a kernel object, reported only: ev.obj[src] or values[src] (programs.objargs)


class IntType(IntEnum):
    """How the program sees an integer argument (tpf_programs.h TPF_T_*): its low ``bits``
    bits, sign-extended for the signed types, so comparisons are the C type's."""

    S64 = 1
    U64 = 2
    S32 = 3
    U32 = 4
    S8 = 5
    U8 = 6
    S16 = 7
    U16 = 8

    @property
    def signed(self) -> bool:
        return self in (IntType.S64, IntType.S32, IntType.S16, IntType.S8)

    @property
    def bits(self) -> int:
        return _INT_BITS[self]

    def of(self, raw: int) -> int:
        """The value of a raw u64 register/field as this type (the event's number)."""
        low = raw & ((1 << self.bits) - 1)
        return low - (1 << self.bits) if self.signed and low >> (self.bits - 1) else low

    def u64(self, value: int) -> int:
        """The u64 the program compares for ``value`` (a policy's number), ValueError if the
        type cannot hold it (unsigned or signed spelling: ``-1`` and ``0xff`` are one u8)."""
        if not -(1 << (self.bits - 1)) <= value < (1 << self.bits):
            raise ValueError(f"{value} does not fit in {self.bits} bits")
        return self.of(value) & 0xFFFF_FFFF_FFFF_FFFF


_INT_BITS = {
    IntType.S64: 64, IntType.U64: 64, IntType.S32: 32, IntType.U32: 32,
    IntType.S16: 16, IntType.U16: 16, IntType.S8: 8, IntType.U8: 8,
}  # fmt: skip


class Op(IntEnum):
    EQ = 1
    NE = 2
    PREFIX = 3
    POSTFIX = 4
    GT = 5
    LT = 6
    MASK = 7
    NOTPREFIX = 8
    NOTPOSTFIX = 9
    # network arguments (bpf/programs/tpf_net.h TPF_OP_*; imm bit 0: Not…)
    SADDR = 10
    DADDR = 11
    SPORT = 12
    DPORT = 13
    PROTOCOL = 14
    FAMILY = 15
    STATE = 16

    @property
    def prefix_set(self) -> bool:
        """Its values go into the Prefix trie (tpf_prefix)."""
        return self in (Op.PREFIX, Op.NOTPREFIX)

    @property
    def postfix_set(self) -> bool:
        """Its values go reversed into the Postfix trie (tpf_postfix); needs the reverse."""
        return self in (Op.POSTFIX, Op.NOTPOSTFIX)


class BinOp(IntEnum):
    NONE = 0
    IN = 1
    NOT_IN = 2


class Action(IntFlag):
    POST = 1
    SIGKILL = 2
    OVERRIDE = 4  # kprobes on security_* functions: the BPF LSM hook returns argError
    SIGNAL = 8  # bpf_send_signal(tpf_sel.sig)
    RET_FILTER = 16  # matchReturnArgs: the event is posted at the return, if it matches


class Stat(IntEnum):
    MATCH = 0
    POST = 1
    SIGKILL = 2
    DROP = 3
    ERROR = 4
    SIGNAL = 5
    RECORD_LOST = 6  # config 0: a new process got no process record (the map is full)


EV_PATH_LONG = 1
EV_STR_SET = 2
EV_KILL_FAILED = 4
EV_RET_WAIT = 8  # a kprobe entry with return: true: its return record follows
EV_RETURN = 16  # the return record (values[0]: the return value)
EV_RET_DONE = 32  # held for matchReturnArgs, posted at the return with its value: complete
ARG_RET = 0x80  # tpf_ints argument of matchReturnArgs entry j: ARG_RET + j


def cflags(*, exec_offsets: tuple[int, int, int] | None = None) -> list[str]:
    """-D flags that make the compiled program use this module's sizes."""
    flags = [
        f"-DTPF_NR_HOOKS={NR_HOOKS}",
        f"-DTPF_MAX_ANY={MAX_ANY}",
        f"-DTPF_INDEX_MAX={INDEX_MAX}",
        f"-DTPF_MAX_CANDS={MAX_CANDS}",
        f"-DTPF_MAX_KEPT={MAX_KEPT}",
        f"-DTPF_MAX_PER_HOOK={MAX_PER_HOOK}",
        f"-DTPF_MAX_SELECTORS={MAX_SELECTORS}",
        f"-DTPF_MAX_ARGS={MAX_ARGS}",
        f"-DTPF_NR_VALUES={NR_VALUES}",
        f"-DTPF_FILTER_BATCH={FILTER_BATCH}",
        f"-DTPF_SELECT_BATCH={SELECT_BATCH}",
    ]
    if exec_offsets is not None:
        filename, pid, old_pid = exec_offsets
        flags += [
            f"-DTPF_EXEC_FILENAME_OFF={filename}",
            f"-DTPF_EXEC_PID_OFF={pid}",
            f"-DTPF_EXEC_OLD_PID_OFF={old_pid}",
        ]
    return flags
