"""matchReturnArgs and returnArgAction -> the return filter's map entries, and what is
refused with them (tpfilter.programs.retsel), without a kernel: the node's BTF is a fake
(test_programs_kprobes.FakeKernel). The filter itself runs in the return probe: tested in
the guest, tests/vm/test_return_args.py."""

from __future__ import annotations

from typing import Any

import pytest
from test_programs_kprobes import ENV

from tpfilter.programs import layout
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.events import RawEvent
from tpfilter.programs.layout import Action, IntType, Kind, Op
from tpfilter.programs.plan import ArgMatch
from tpfilter.programs.retjoin import ReturnJoiner
from tpfilter.programs.retsel import unsigned_order, write_return_filter

RETURN_INT = {"index": 0, "type": "int"}


def openat(selectors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    kp = {
        "call": "do_sys_openat2",
        "return": True,
        "args": [{"index": 1, "type": "string"}],
        "returnArg": RETURN_INT,
        "selectors": selectors,
        **extra,
    }
    return {"kprobes": [kp]}


def only_selector(spec: dict[str, Any]) -> Any:
    plan = compile_spec(spec, ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    (sel,) = cfg.selectors
    return sel


def test_lt_zero_is_a_signed_bound_on_the_return_value_and_holds_the_event() -> None:
    sel = only_selector(openat([{"matchReturnArgs": [{"operator": "LT", "values": ["0"]}]}]))
    assert sel.ret_args == (ArgMatch(Kind.INT, 0, Op.LT, IntType.S32, imm=0),)
    assert sel.actions == Action.POST | Action.RET_FILTER
    assert sel.args == ()  # the entry's matchArgs are apart


def test_equal_values_are_normalised_as_the_return_type() -> None:
    spec = openat(
        [
            {
                "matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/tmp"]}],
                "matchReturnArgs": [
                    {"index": 0, "operator": "Equal", "values": [-2, "-13"]},
                    {"operator": "NotEqual", "values": ["0x0"]},
                ],
            }
        ]
    )
    sel = only_selector(spec)
    eq, ne = sel.ret_args
    assert (eq.op, eq.ints) == (Op.EQ, tuple(sorted({2**64 - 2, 2**64 - 13})))
    assert (ne.op, ne.ints, ne.src) == (Op.NE, (0,), 0)
    assert len(sel.args) == 1


def test_gt_on_an_unsigned_return_and_a_return_arg_at_another_index() -> None:
    spec = openat(
        [{"matchReturnArgs": [{"index": 2, "operator": "GT", "values": [5, 9]}]}],
        returnArg={"index": 2, "type": "uint64"},
    )
    (m,) = only_selector(spec).ret_args
    assert (m.op, m.int_type, m.imm) == (Op.GT, IntType.U64, 5)  # ORed: the weakest bound


def test_return_arg_action_post_is_the_default_and_changes_nothing() -> None:
    plain = compile_spec(openat([]), ENV)
    posted = compile_spec(openat([], returnArgAction="Post"), ENV)
    assert posted.ok and posted.configs == plain.configs


def test_a_selector_without_match_return_args_posts_at_the_entry_as_before() -> None:
    sel = only_selector(openat([{"matchActions": [{"action": "Post"}]}]))
    assert sel.ret_args == () and sel.actions == Action.POST


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (
            openat(
                [
                    {
                        "matchReturnArgs": [{"operator": "LT", "values": [0]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ]
            ),
            "spec.kprobes[0].selectors[0].matchActions: Sigkill acts at the function's "
            "entry, before the return value is known",
        ),
        (
            openat(
                [
                    {
                        "matchReturnArgs": [{"operator": "LT", "values": [0]}],
                        "matchActions": [{"action": "Signal", "argSig": 10}],
                    }
                ]
            ),
            "matchActions: Signal acts at the function's entry",
        ),
        (
            openat(
                [
                    {
                        "matchReturnArgs": [{"operator": "LT", "values": [0]}],
                        "matchActions": [{"action": "NoPost"}],
                    }
                ]
            ),
            "matchActions: NoPost: matchReturnArgs only decides whether the event is posted",
        ),
        (
            openat([{"matchReturnArgs": [{"operator": "Prefix", "values": ["/x"]}]}]),
            "selectors[0].matchReturnArgs[0]: operator 'Prefix' is not supported on integers",
        ),
        (
            openat([{"matchReturnArgs": [{"operator": "Equal", "values": []}]}]),
            "selectors[0].matchReturnArgs[0]: values must be a non-empty list",
        ),
        (
            openat([{"matchReturnArgs": [{"index": 1, "operator": "LT", "values": [0]}]}]),
            "selectors[0].matchReturnArgs[0].index: 1: matchReturnArgs compares the "
            "returnArg (index 0)",
        ),
        (
            openat([{"matchReturnArgs": [{"operator": "Equal", "values": [1 << 40]}]}]),
            "matchReturnArgs[0]: bad integer value",
        ),
        (
            openat([{"matchReturnArgs": [{"operator": "LT", "values": [0]}]}], returnArg={}),
            "selectors[0].matchReturnArgs: needs return: true and a returnArg",
        ),
        (
            {
                "kprobes": [
                    {
                        "call": "do_sys_openat2",
                        "selectors": [{"matchReturnArgs": [{"operator": "LT", "values": [0]}]}],
                    }
                ]
            },
            "selectors[0].matchReturnArgs: needs return: true",
        ),
        (
            openat([{"matchReturnArgs": [{"operator": "LT", "values": [0]}] * 6}]),
            "matchReturnArgs: more than 5 entries",
        ),
        (
            openat([], returnArgAction="TrackSock"),
            "spec.kprobes[0].returnArgAction: TrackSock is not supported: it records the "
            "process owning the returned socket",
        ),
        (openat([], returnArgAction="UntrackSock"), "returnArgAction: UntrackSock is not"),
        (openat([], returnArgAction="Sigkill"), "returnArgAction: 'Sigkill' is not supported"),
        (
            {"kprobes": [{"call": "do_sys_openat2", "returnArgAction": "Post"}]},
            "spec.kprobes[0].returnArgAction: needs return: true",
        ),
        (
            openat([{"matchReturnActions": [{"action": "Post"}]}]),
            "matchReturnActions not supported on kprobes",
        ),
    ],
)
def test_what_is_refused_with_return_filters_is_said(spec: dict[str, Any], reason: str) -> None:
    plan = compile_spec(spec, ENV)
    assert not plan.ok and plan.configs == ()
    assert any(reason in r for r in plan.unsupported), plan.unsupported


def test_override_beside_match_return_args_is_refused_too() -> None:
    spec = {
        "kprobes": [
            {
                "call": "security_file_open",
                "return": True,
                "args": [{"index": 0, "type": "file"}],
                "returnArg": RETURN_INT,
                "selectors": [
                    {
                        "matchReturnArgs": [{"operator": "Equal", "values": [0]}],
                        "matchActions": [{"action": "Override", "argError": -1}],
                    }
                ],
            }
        ]
    }
    plan = compile_spec(spec, ENV)
    assert any("Override acts at the function's entry" in r for r in plan.unsupported)


class FakeTable:
    """A bcc table as write_return_filter uses it: Key/Leaf types and item access."""

    class Key(tuple[int, int]):
        def __new__(cls, config: int, sel: int) -> FakeTable.Key:
            return super().__new__(cls, (config, sel))

    class Leaf:
        class Arg:
            kind = src = type = op = imm = 0

        def __init__(self) -> None:
            self.nargs = self.shift = self.sign = 0
            self.args = [self.Arg() for _ in range(layout.MAX_ARGS)]

    def __init__(self) -> None:
        self.items: dict[Any, Any] = {}

    def __setitem__(self, key: Any, leaf: Any) -> None:
        self.items[key] = leaf

    def __delitem__(self, key: Any) -> None:
        del self.items[key]


def test_write_return_filter_keys_the_value_sets_apart_from_match_args() -> None:
    table = FakeTable()

    class Bpf:
        def get_table(self, name: bytes) -> FakeTable:
            assert name == b"tpf_rsels"
            return table

    sets: list[tuple[int, int, int, bool]] = []

    def write_sets(config: int, s: int, j: int, arg: ArgMatch, *, delete: bool) -> None:
        sets.append((config, s, j, delete))

    lt = ArgMatch(Kind.INT, 0, Op.LT, IntType.S32, imm=0)
    eq = ArgMatch(Kind.INT, 0, Op.EQ, IntType.S32, ints=(2**64 - 2,))
    write_return_filter(Bpf(), 7, 1, (lt, eq), write_sets)
    leaf = table.items[(7, 1)]
    assert (leaf.nargs, leaf.shift, leaf.sign) == (2, 32, 1)  # int: 32-bit, signed
    assert leaf.args[0].imm == 1 << 63  # LT 0, signed: compared unsigned with sign flipped
    assert [(a.kind, a.src, a.type, a.op) for a in leaf.args[:2]] == [
        (Kind.INT, 0, IntType.S32, Op.LT),
        (Kind.INT, 0, IntType.S32, Op.EQ),
    ]
    assert sets == [(7, 1, layout.ARG_RET, False), (7, 1, layout.ARG_RET + 1, False)]
    write_return_filter(Bpf(), 7, 1, (lt, eq), write_sets, delete=True)
    assert table.items == {} and sets[2:] == [
        (7, 1, layout.ARG_RET, True),
        (7, 1, layout.ARG_RET + 1, True),
    ]
    write_return_filter(Bpf(), 7, 2, (), write_sets)  # no filter: nothing written
    assert table.items == {} and len(sets) == 4


def test_an_event_posted_at_the_return_goes_out_as_it_is() -> None:
    joiner = ReturnJoiner()
    done = RawEvent(
        0,
        0,
        5,
        5,
        1,
        1,
        600,
        0,
        9,
        layout.EV_RETURN | layout.EV_RET_DONE,
        (2**64 - 2, 7),
        "c",
        "",
        "",
    )
    waiting = RawEvent(0, 0, 5, 5, 2, 1, 600, 0, 1, layout.EV_RET_WAIT, (0, 7), "c", "", "")
    assert joiner.feed(waiting) == []
    assert joiner.feed(done) == [done]  # not taken for the return record of the call
    assert joiner.waiting == 1


@pytest.mark.parametrize("int_type", [IntType.S32, IntType.S64])
@pytest.mark.parametrize("op", [Op.GT, Op.LT])
def test_signed_bounds_keep_their_order_when_compared_unsigned(int_type: IntType, op: Op) -> None:
    """What the return probe does (tpf_retsel.c): v ^ flip against the stored bound."""
    values = [-(2**31), -13, -1, 0, 1, 2, 3, 2**31 - 1]
    for bound in values:
        arg = ArgMatch(Kind.INT, 0, op, int_type, imm=bound % 2**64)
        for value in values:
            got = (value % 2**64) ^ (1 << 63)
            stored = unsigned_order(arg)
            assert (got > stored if op is Op.GT else got < stored) == (
                value > bound if op is Op.GT else value < bound
            )
    unsigned = ArgMatch(Kind.INT, 0, Op.GT, IntType.U64, imm=5)
    assert unsigned_order(unsigned) == 5
