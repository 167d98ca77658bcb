"""ReturnJoiner: events of return: true kprobes wait for their call's return record."""

from __future__ import annotations

from tpfilter.programs import layout
from tpfilter.programs.events import RawEvent
from tpfilter.programs.retjoin import ReturnJoiner


def ev(tid: int, hook: int, flags: int, values: tuple[int, ...] = (0, 7)) -> RawEvent:
    return RawEvent(0, 0, tid, tid, 1, 1, hook, 0, 1, flags, values, "c", "", "")


def test_an_event_without_a_return_goes_out_at_once() -> None:
    joiner = ReturnJoiner()
    plain = ev(1, 600, 0)
    assert joiner.feed(plain) == [plain]


def test_waiting_events_get_their_calls_return_value() -> None:
    joiner = ReturnJoiner()
    a = ev(1, 600, layout.EV_RET_WAIT)
    b = ev(1, 600, layout.EV_RET_WAIT, (0, 8))  # a second policy on the same call
    other = ev(2, 600, layout.EV_RET_WAIT)
    assert joiner.feed(a) == [] and joiner.feed(b) == [] and joiner.feed(other) == []
    out = joiner.feed(ev(1, 600, layout.EV_RETURN, (2**64 - 2, 0)))
    assert [e.values for e in out] == [(2**64 - 2, 7), (2**64 - 2, 8)]
    assert all(e.flags & layout.EV_RETURN for e in out)
    assert joiner.waiting == 1  # task 2's call has not returned
    assert joiner.feed(ev(1, 601, layout.EV_RETURN)) == []  # another function: nothing waits


def test_past_the_bound_the_oldest_go_out_without_a_value() -> None:
    joiner = ReturnJoiner(max_waiting=2)
    first = ev(1, 600, layout.EV_RET_WAIT)
    assert joiner.feed(first) == [] and joiner.feed(ev(2, 600, layout.EV_RET_WAIT)) == []
    assert joiner.feed(ev(3, 600, layout.EV_RET_WAIT)) == [first]
    assert not first.flags & layout.EV_RETURN


def test_the_record_shows_the_return_value_or_that_it_is_missing() -> None:
    from tpfilter.programs.events import RETURN_ARG, ConfigInfo, event_record
    from tpfilter.programs.layout import IntType, Kind
    from tpfilter.programs.plan import ArgSpec, HookConfig

    cfg = HookConfig(
        hook=600,
        name="kprobe/f",
        selectors=(),
        args=(ArgSpec(0, "fd", Kind.INT, 1, IntType.S32),
              ArgSpec(RETURN_ARG, "return", Kind.INT, 0, IntType.S32)),
        returns=True,
    )  # fmt: skip
    info = ConfigInfo("TracingPolicy/p", "uid", cfg)
    joiner = ReturnJoiner(max_waiting=1)
    joiner.feed(ev(1, 600, layout.EV_RET_WAIT))
    (joined,) = joiner.feed(ev(1, 600, layout.EV_RETURN, (2**64 - 2, 0)))
    record = event_record(joined, node="n", info=info, pod=None, wall_offset_ns=0)
    assert record["args"] == [7, -2] and "return_missing" not in record
    joiner.feed(ev(2, 600, layout.EV_RET_WAIT))
    (gave_up,) = joiner.feed(ev(3, 600, layout.EV_RET_WAIT))
    record = event_record(gave_up, node="n", info=info, pod=None, wall_offset_ns=0)
    assert record["args"] == [7, None] and record["return_missing"] is True
