"""The candidate index as a pure function of the desired state, and its write order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tpfilter.candidates import HOST_KEY, INDEX_MAX, apply, index_for, merged, stage
from tpfilter.ids import ALL_PODS_ID, HOST_PID_PODS_ID
from tpfilter.indexmap import decode, encode
from tpfilter.indexsync import left_out_errors


def test_the_index_inverts_the_inner_maps_without_the_reserved_sets() -> None:
    desired = {
        1: frozenset({10, 11}),
        2: frozenset({11, HOST_KEY}),
        ALL_PODS_ID: frozenset({10, 11, 12}),
        HOST_PID_PODS_ID: frozenset({12}),
    }
    b = index_for(desired)
    assert b.index == {10: (1,), 11: (1, 2), HOST_KEY: (2,)}
    assert b.left_out == {}


def test_past_the_bound_the_newest_policies_are_left_out_and_named() -> None:
    desired = {pid: frozenset({7}) for pid in range(1, INDEX_MAX + 3)}
    b = index_for(desired)
    assert b.index[7] == tuple(range(1, INDEX_MAX + 1))
    assert b.left_out == {7: (INDEX_MAX + 1, INDEX_MAX + 2)}
    errors = left_out_errors(b, {7: "default/web"})
    assert set(errors) == {INDEX_MAX + 1, INDEX_MAX + 2}
    assert "default/web" in errors[INDEX_MAX + 1]


def test_host_key_overflow_is_reported_as_host_processes() -> None:
    desired = {pid: frozenset({HOST_KEY}) for pid in range(1, INDEX_MAX + 2)}
    errors = left_out_errors(index_for(desired), {})
    assert list(errors) == [INDEX_MAX + 1] and "host processes" in errors[INDEX_MAX + 1]


def test_merged_keeps_new_first_within_the_bound() -> None:
    new = tuple(range(1, INDEX_MAX + 1))
    assert merged(new, (1000,)) == new  # no room: the leaving one goes
    assert merged((1, 2), (2, 3)) == (1, 2, 3)


def test_value_encoding_round_trips() -> None:
    assert decode(encode((5, 3))) == (3, 5)
    assert decode(encode(())) == ()


indexes = st.dictionaries(
    st.integers(1, 6), st.frozensets(st.integers(1, 60), min_size=1, max_size=60), max_size=5
).map(lambda d: {k: tuple(sorted(v)[:INDEX_MAX]) for k, v in d.items()})


@settings(max_examples=300, deadline=None)
@given(indexes, indexes)
def test_staged_writes_never_lose_a_pair_that_old_or_new_holds(
    old: dict[int, tuple[int, ...]], new: dict[int, tuple[int, ...]]
) -> None:
    steps = stage(old, new)
    during = apply(old, steps.before, ())
    after = apply(during, steps.after, steps.delete_after)
    assert after == new
    for ids in during.values():
        assert len(ids) <= INDEX_MAX and list(ids) == sorted(ids)
    for key in old.keys() | new.keys():
        have = set(during.get(key, ()))
        # every pair of the new index is there while the inner maps change
        assert set(new.get(key, ())) <= have
        # and every old pair too, unless the bound forced a leaving one out
        if len(set(old.get(key, ())) | set(new.get(key, ()))) <= INDEX_MAX:
            assert set(old.get(key, ())) <= have
    # the first step only adds
    for key, ids in steps.before.items():
        assert set(old.get(key, ())) <= set(ids) or len(ids) == INDEX_MAX
