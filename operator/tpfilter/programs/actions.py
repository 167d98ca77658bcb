"""A selector's ``matchActions`` -> what the programs do when it matches. Pure.

Only actions local to the task the program runs for are built: ``Post``/``NoPost`` (the
event), ``Sigkill`` and ``Signal`` (``bpf_send_signal`` to the current process), and
``Override`` (its ``argError`` is checked where the hook is known: tpfilter.programs.kprobes).
Every other action of the CRD is refused with its own reason (:data:`REFUSED`), which the
policy's status names and docs/policies.md repeats (tests/unit/test_policy_coverage.py
checks the two agree): a policy is never loaded with an action dropped, since an enforcing
policy without its action would let through what its author meant to stop.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tpfilter.programs.layout import Action
from tpfilter.programs.values import parse_int

MAX_SIGNAL = 64  # the kernel's _NSIG: bpf_send_signal refuses larger numbers

_NO_FD_TRACKING = (
    "not needed: an fd argument (type fd) is resolved to its file's path from the calling "
    "task's own file table when the hook runs, so tpfilter's programs keep no table of "
    "followed file descriptors (Tetragon's fdinstall map) to follow, unfollow or copy; "
    "remove the action"
)
_NETWORK = (
    "out of scope: it has a network side effect outside the node's programs (Tetragon "
    "runs it from user space); tpfilter's actions act only on the task in the kernel"
)
_ENFORCER = "spec.enforcers is not supported: there is no enforcer program to notify"
# action (lower case) -> why tpfilter refuses it
REFUSED: Mapping[str, str] = {
    "followfd": _NO_FD_TRACKING,
    "unfollowfd": _NO_FD_TRACKING,
    "copyfd": _NO_FD_TRACKING,
    "geturl": _NETWORK,
    "dnslookup": _NETWORK,
    "tracksock": (
        "tpfilter's programs keep no table of tracked sockets (Tetragon's socktrack map): "
        "network arguments are read from the hook's own sock/skb"
    ),
    "untracksock": (
        "tpfilter's programs keep no table of tracked sockets (Tetragon's socktrack map): "
        "network arguments are read from the hook's own sock/skb"
    ),
    "notifyenforcer": _ENFORCER,
    "cleanupenforcernotification": _ENFORCER,
    "set": (
        "writes a value into a policy's BPF map for later hooks (Tetragon's policy "
        "state): tpfilter's programs keep no per-policy state between hooks"
    ),
}


class Reasons(Protocol):
    """Where the compiler collects why a policy cannot run (argmatch.Errors)."""

    def add(self, where: str, what: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Actions:
    flags: Action = Action.POST
    signal: int = 0  # Signal's argSig, 0: none


def compile_actions(
    actions: Any, where: str, errors: Reasons, *, can_override: bool, hook_kind: str
) -> Actions:
    if actions is None:
        return Actions()
    if not isinstance(actions, list):
        errors.add(where, "must be a list")
        return Actions()
    post, kill, signal = True, False, 0
    for i, act in enumerate(actions):
        at = f"{where}[{i}]"
        if not isinstance(act, Mapping):
            errors.add(at, "not a mapping")
            continue
        name = str(act.get("action", ""))
        rest = {k: v for k, v in act.items() if k != "action"}
        lname = name.lower()
        if lname == "post":
            used = sorted(k for k, v in rest.items() if v not in (None, False, "", 0))
            if used:
                errors.add(at, f"Post with {', '.join(used)} is not supported")
        elif lname == "nopost":
            post = False
            if rest:
                errors.add(at, f"NoPost with {', '.join(sorted(rest))} is not supported")
        elif lname == "sigkill":
            kill = True
            if rest:
                errors.add(at, f"Sigkill with {', '.join(sorted(rest))} is not supported")
        elif lname == "signal":
            signal = _signal(act, rest, at, errors) or signal
        elif lname == "override":
            if not can_override:
                errors.add(
                    at,
                    f"Override cannot change the result of a {hook_kind}: it needs a "
                    "kprobe with override support or a BPF LSM program",
                )
            elif set(rest) - {"argError"}:
                errors.add(at, f"Override with {', '.join(sorted(set(rest) - {'argError'}))}")
        elif lname in REFUSED:
            errors.add(at, f"action {name}: {REFUSED[lname]}")
        else:
            errors.add(at, f"action {name!r} is not an action of the CRD")
    flags = (Action.POST if post else Action(0)) | (Action.SIGKILL if kill else Action(0))
    return Actions(flags | (Action.SIGNAL if signal else Action(0)), signal)


def _signal(act: Mapping[str, Any], rest: Mapping[str, Any], at: str, errors: Reasons) -> int:
    """Signal's ``argSig``: a signal number the kernel can send (1 .. 64)."""
    if set(rest) - {"argSig"}:
        errors.add(at, f"Signal with {', '.join(sorted(set(rest) - {'argSig'}))} is not supported")
    try:
        sig = parse_int(act.get("argSig", 0))
    except ValueError:
        errors.add(f"{at}.argSig", f"{act.get('argSig')!r} is not a signal number")
        return 0
    if not 1 <= sig <= MAX_SIGNAL:
        errors.add(f"{at}.argSig", f"{sig} is not a signal number (1 .. {MAX_SIGNAL})")
        return 0
    return sig
