"""``matchReturnArgs`` and ``returnArgAction`` of kprobes with ``return: true``. Pure, but
for :func:`write_return_filter`, which the loader calls with its bcc table.

Tetragon evaluates ``matchReturnArgs`` in its return probe: a call whose return value does
not match posts no event. tpfilter does the same in the kernel (bpf/programs/tpf_retsel.c):
the selector decides at the function's entry, its event is held there, and the return
probe posts it with the value only if the value matches this selector's
``matchReturnArgs`` (all entries ANDed, the values of one ORed, as ``matchArgs``). The
filter is map entries written at policy load (``tpf_rsels``, and ``tpf_ints`` for
Equal/NotEqual sets), so nothing is compiled per policy; filtering in user space would
still pay for every event and would observe what the policy says to drop.

The value is compared as the ``returnArg``'s type, with the integer operators of
``matchArgs`` (Equal, NotEqual, GT, LT, Mask): the compiler takes only integer return
types. What cannot depend on the return value is refused beside it: ``Sigkill``,
``Signal`` and ``Override`` act at the entry, before the value exists (a policy that
reads "kill when the open fails" would kill on every open), and with ``NoPost`` there is
nothing for the filter to decide.

``returnArgAction``: ``Post`` is what every return probe does (the event carries the value),
so it is accepted and changes nothing (Tetragon 1.x accepted it likewise; its later
releases refuse it). ``TrackSock``/``UntrackSock`` record which process owns the socket a
function returns, for Tetragon to attribute later socket events to it: tpfilter attributes
no socket events, so they are refused, as is any other action.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tpfilter.programs import layout
from tpfilter.programs.argmatch import Errors, Source, compile_match_arg
from tpfilter.programs.layout import Action, Kind, Op
from tpfilter.programs.plan import ArgMatch, ArgSpec

_SOCKET_TRACKING = frozenset({"tracksock", "untracksock"})
_SIGN_BIT = 1 << 63


def compile_return_arg_action(kp: Mapping[str, Any], where: str, errors: Errors) -> None:
    """Check ``returnArgAction`` (only ``Post``, the default, is accepted)."""
    raw = kp.get("returnArgAction")
    if raw in (None, ""):
        return
    at = f"{where}.returnArgAction"
    name = str(raw).lower()
    if not kp.get("return"):
        errors.add(at, "needs return: true")
    elif name in _SOCKET_TRACKING:
        errors.add(
            at,
            f"{raw} is not supported: it records the process owning the returned socket "
            "so that Tetragon can attribute later socket events to it; tpfilter's "
            "programs attribute no socket events",
        )
    elif name != "post":
        errors.add(at, f"{raw!r} is not supported (Post is: the event carries the value)")


def _return_index(kp: Mapping[str, Any]) -> int:
    ret = kp.get("returnArg")
    index = ret.get("index", 0) if isinstance(ret, Mapping) else 0
    try:
        return int(index or 0)
    except (TypeError, ValueError):
        return 0


def _refusals(actions: Action) -> list[str]:
    why = []
    acting = ((Action.SIGKILL, "Sigkill"), (Action.SIGNAL, "Signal"), (Action.OVERRIDE, "Override"))
    for action, name in acting:
        if actions & action:
            why.append(
                f"{name} acts at the function's entry, before the return value is known: "
                "it cannot depend on matchReturnArgs"
            )
    if not actions & Action.POST:
        why.append("NoPost: matchReturnArgs only decides whether the event is posted")
    return why


def compile_return_selector(
    raw: Mapping[str, Any],
    at: str,
    kp: Mapping[str, Any],
    ret: ArgSpec | None,
    actions: Action,
    errors: Errors,
) -> tuple[tuple[ArgMatch, ...], Action] | None:
    """A selector's ``matchReturnArgs`` (on values[0], the return value) and its actions
    (``RET_FILTER`` added when it has some); None when refused (reasons in ``errors``)."""
    entries = raw.get("matchReturnArgs")
    if entries in (None, []):
        return (), actions
    where = f"{at}.matchReturnArgs"
    if ret is None:
        errors.add(where, "needs return: true and a returnArg (the type the value is read as)")
        return None
    if not isinstance(entries, list):
        errors.add(where, "must be a list")
        return None
    ok = True
    if len(entries) > layout.MAX_ARGS:
        errors.add(where, f"more than {layout.MAX_ARGS} entries")
        ok = False
    for why in _refusals(actions):
        errors.add(f"{at}.matchActions", why)
        ok = False
    index = _return_index(kp)
    sources = {index: Source(Kind.INT, 0, ret.int_type)}  # the value is values[0]
    matches: list[ArgMatch] = []
    for j, entry in enumerate(entries):
        got = None
        if isinstance(entry, Mapping) and str(entry.get("index", index)) != str(index):
            errors.add(
                f"{where}[{j}].index",
                f"{entry.get('index')!r}: matchReturnArgs compares the returnArg (index {index})",
            )
        else:  # the index may be left out: there is one value
            entry = {**entry, "index": index} if isinstance(entry, Mapping) else entry
            got = compile_match_arg(entry, f"{where}[{j}]", sources, errors)
        if got is None:
            ok = False
        else:
            matches.append(got)
    return (tuple(matches), actions | Action.RET_FILTER) if ok else None


def write_return_filter(
    bpf: Any,
    config: int,
    s: int,
    ret_args: Sequence[ArgMatch],
    write_sets: Callable[..., None],
    *,
    delete: bool = False,
) -> None:
    """Selector ``s``'s matchReturnArgs into ``tpf_rsels`` and its value sets (as argument
    ``ARG_RET + j`` of ``tpf_ints``). Written before the selector that uses it and deleted
    after it (the loader's order), so a held event never meets half a filter."""
    if not ret_args:
        return
    table = bpf.get_table(b"tpf_rsels")
    key = table.Key(config, s)
    if delete:
        with contextlib.suppress(KeyError):
            del table[key]
    for j, arg in enumerate(ret_args):
        write_sets(config, s, layout.ARG_RET + j, arg, delete=delete)
    if delete:
        return
    leaf = table.Leaf()
    leaf.nargs = len(ret_args)
    int_type = ret_args[0].int_type  # the returnArg's: every entry's
    leaf.shift = 64 - int_type.bits  # the program keeps the low bits
    leaf.sign = 1 if int_type.signed else 0
    for j, arg in enumerate(ret_args):
        a = leaf.args[j]
        a.kind, a.src, a.type, a.op = int(arg.kind), arg.src, int(arg.int_type), int(arg.op)
        a.imm = unsigned_order(arg)
    table[key] = leaf


def unsigned_order(arg: ArgMatch) -> int:
    """The bound the return probe compares unsigned: a signed GT/LT bound with its sign bit
    flipped (x < y signed iff x ^ 2**63 < y ^ 2**63 unsigned, both 64-bit)."""
    if arg.op in (Op.GT, Op.LT) and arg.int_type.signed:
        return arg.imm ^ _SIGN_BIT
    return arg.imm
