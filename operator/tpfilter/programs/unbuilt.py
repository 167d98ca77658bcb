"""Why tpfilter's programs refuse what the CRD allows: one reason per spec field, kprobe
field, selector filter, matchArgs operator and argument type that is not built. Pure data.

The compiler puts the reason into the refusal (the policy's Accepted condition and its
status name the field and say why), and docs/policies.md's coverage tables say the same
(tests/unit/test_policy_coverage.py keeps the tables and the verdicts in step). A value not
listed here gets a plain "not supported". Refused actions are in tpfilter.programs.actions.
"""

from __future__ import annotations

from collections.abc import Mapping

SPEC_FIELDS: Mapping[str, str] = {
    "uprobes": "user-space probes: tpfilter's programs attach to the kernel only",
    "usdts": "user-space probes: tpfilter's programs attach to the kernel only",
    "fentries": (
        "fentry programs: the kprobe program serves the same kernel functions (write a kprobe)"
    ),
    "enforcers": (
        "Tetragon's enforcer programs: Override through the BPF LSM hook of a security_* "
        "function or an lsmhook is the mechanism here"
    ),
    "loader": (
        "Tetragon's loader sensor (mmaps of executables for its process cache): tpfilter "
        "keeps no process cache"
    ),
    "selectorsMacros": "named selectors shared by hooks: not built (write the selector out)",
}

KPROBE_FIELDS: Mapping[str, str] = {
    "data": "values read from other places than the arguments: not built",
    "ignore": "a kprobe on a function the node lacks is refused, never skipped",
}

SELECTOR_FIELDS: Mapping[str, str] = {
    "matchData": "goes with the kprobe field data, which is not built",
    "macros": "goes with spec.selectorsMacros, which is not built",
    "matchParentBinaries": "not built",
}

OPERATORS: Mapping[str, str] = {
    "inrange": "integer ranges: not built (GT and LT in two matchArgs entries make one range)",
    "notinrange": "integer ranges: not built (NotEqual, or GT/LT selectors, instead)",
    "substring": (
        "a match anywhere in a string needs a loop over every offset in the program: not "
        "built (Prefix and Postfix are one lookup each)"
    ),
    "substringigncase": (
        "a match anywhere in a string needs a loop over every offset in the program: not "
        "built (Prefix and Postfix are one lookup each)"
    ),
    "celexpr": "CEL is evaluated by Tetragon in user space; tpfilter decides in the kernel",
    "filetype": "the inode type of a file or path argument: not built",
    "notfiletype": "the inode type of a file or path argument: not built",
    "capabilitiesgained": "compares a cred argument with the task's capabilities: not built",
}

ARG_TYPES: Mapping[str, str] = {
    "char_iovec": (
        "a user iovec array gathered into one buffer: not built (char_buf reads one buffer)"
    ),
    "const_buf": "a buffer of a size fixed by the policy: not built (char_buf, sizeArgIndex)",
    "sockaddr_un": "an AF_UNIX address: not built (sockaddr reads IPv4 and IPv6)",
    "syscall64": "the ID of a raw_syscalls tracepoint: raw tracepoints are not supported",
    "auto": "on a kprobe, name the type: tpfilter does not take it from BTF",
}


def reason(table: Mapping[str, str], name: str, fallback: str) -> str:
    """``name``'s reason in ``table`` (by the CRD's spelling or lower case), else ``fallback``."""
    return table.get(name) or table.get(name.lower()) or fallback
