"""Policy ID allocation and the node-local state file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tpfilter import statefile
from tpfilter.ids import MAX_ID, PolicyIds, PolicyRecord
from tpfilter.models import Policy, PolicyKind, parse_policy


def policy(name: str, uid: str, namespace: str | None = None) -> Policy:
    metadata: dict[str, Any] = {"name": name, "uid": uid}
    kind = "TracingPolicy"
    if namespace:
        metadata["namespace"] = namespace
        kind = "TracingPolicyNamespaced"
    return parse_policy({"kind": kind, "metadata": metadata, "spec": {"podSelector": {}}})


# --- IDs --------------------------------------------------------------------------------


def test_ids_start_at_one_and_increase() -> None:
    ids = PolicyIds()
    got = [ids.ensure(policy(f"p{i}", f"u{i}")).policy_id for i in range(5)]
    assert got == [1, 2, 3, 4, 5]
    assert 0 not in got
    assert len(ids) == 5


def test_ensure_is_idempotent() -> None:
    ids = PolicyIds()
    a = ids.ensure(policy("a", "ua"))
    assert ids.ensure(policy("a", "ua")) == a
    assert len(ids) == 1
    assert ids.get("ua") == a
    assert ids.get("nope") is None


def test_release_frees_but_does_not_reuse() -> None:
    ids = PolicyIds()
    a = ids.ensure(policy("a", "ua")).policy_id
    b = ids.ensure(policy("b", "ub")).policy_id
    ids.release("ua")
    assert ids.get("ua") is None
    assert len(ids) == 1
    c = ids.ensure(policy("c", "uc")).policy_id
    assert c not in (a, b)
    assert c > b
    # recreated under the same name, a new UID: a new policy, a new ID
    again = ids.ensure(policy("a", "ua2")).policy_id
    assert again > c


def test_release_unknown_is_noop() -> None:
    ids = PolicyIds()
    ids.ensure(policy("a", "ua"))
    ids.release("missing")
    assert len(ids) == 1


def test_rename_keeps_id() -> None:
    ids = PolicyIds()
    rid = ids.ensure(policy("old", "u1")).policy_id
    ids.ensure(policy("other", "u2"))
    renamed = ids.ensure(policy("new", "u1"))
    assert renamed.policy_id == rid
    assert renamed.name == "new"
    assert ids.get("u1") == renamed
    assert len(ids) == 2


def test_record_carries_key() -> None:
    ids = PolicyIds()
    rec = ids.ensure(policy("q", "u", namespace="ns"))
    assert rec.kind == "TracingPolicyNamespaced"
    assert rec.key.kind is PolicyKind.NAMESPACED
    assert rec.key.namespace == "ns" and rec.key.name == "q"


def test_iteration_sorted_by_id() -> None:
    records = [
        PolicyRecord(7, "u7", "TracingPolicy", None, "a"),
        PolicyRecord(3, "u3", "TracingPolicy", None, "b"),
    ]
    ids = PolicyIds(records)
    assert [r.policy_id for r in ids] == [3, 7]
    assert ids.next_id == 8
    assert ids.ensure(policy("c", "uc")).policy_id == 8


def test_next_id_respected_when_higher_than_records() -> None:
    ids = PolicyIds([PolicyRecord(3, "u3", "TracingPolicy", None, "b")], next_id=50)
    assert ids.ensure(policy("c", "uc")).policy_id == 50


def test_wrap_skips_zero_and_taken_ids() -> None:
    records = [
        PolicyRecord(1, "u1", "TracingPolicy", None, "one"),
        PolicyRecord(2, "u2", "TracingPolicy", None, "two"),
        PolicyRecord(MAX_ID - 1, "um", "TracingPolicy", None, "m"),
    ]
    ids = PolicyIds(records)
    assert ids.next_id == MAX_ID
    got = [ids.ensure(policy(f"n{i}", f"n{i}")).policy_id for i in range(3)]
    assert got == [MAX_ID, 3, 4]


def test_wrap_reuses_freed_only_after_wrap() -> None:
    ids = PolicyIds([PolicyRecord(5, "u5", "TracingPolicy", None, "five")], next_id=MAX_ID)
    ids.release("u5")
    assert ids.ensure(policy("a", "a")).policy_id == MAX_ID
    # now the counter has wrapped: 1.. are free again, including the released 5 later
    got = [ids.ensure(policy(f"n{i}", f"n{i}")).policy_id for i in range(6)]
    assert got == [1, 2, 3, 4, 5, 6]


def test_saved_counter_below_held_ids_is_kept_after_wrap() -> None:
    # after a wrap the counter is legitimately below a held ID: allocation continues there
    records = [
        PolicyRecord(2, "u2", "TracingPolicy", None, "two"),
        PolicyRecord(MAX_ID, "top", "TracingPolicy", None, "top"),
    ]
    ids = PolicyIds(records, next_id=2)
    assert ids.next_id == 2
    assert [ids.ensure(policy(f"n{i}", f"n{i}")).policy_id for i in range(2)] == [3, 4]


def test_all_ids_are_u32_and_nonzero() -> None:
    ids = PolicyIds(next_id=MAX_ID - 2)
    got = [ids.ensure(policy(f"n{i}", f"n{i}")).policy_id for i in range(6)]
    assert all(0 < i <= MAX_ID for i in got)
    assert len(set(got)) == 6


# --- state file -------------------------------------------------------------------------


def test_missing_file_is_empty(tmp_path: Path) -> None:
    ids = statefile.load(tmp_path / "nope.json")
    assert len(ids) == 0
    assert ids.next_id == 1


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "state.json"  # parents created
    ids = PolicyIds()
    for i in range(4):
        ids.ensure(policy(f"p{i}", f"u{i}", namespace="ns" if i % 2 else None))
    ids.release("u1")
    ids.ensure(policy("renamed", "u2", namespace="ns"))
    statefile.save(path, ids)
    loaded = statefile.load(path)
    assert list(loaded) == list(ids)
    assert loaded.next_id == ids.next_id == 5
    # the loaded allocator continues where the saved one stopped: no reuse of 2
    assert loaded.ensure(policy("new", "unew")).policy_id == 5
    data = json.loads(path.read_text())
    assert data["format"] == 1


def test_round_trip_keeps_next_id_after_released_top(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ids = PolicyIds()
    ids.ensure(policy("a", "ua"))
    ids.ensure(policy("b", "ub"))
    ids.release("ub")  # the highest ID is gone; the file must still remember it was used
    statefile.save(path, ids)
    assert statefile.load(path).ensure(policy("c", "uc")).policy_id == 3


def test_round_trip_after_wrap_keeps_next_id(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ids = PolicyIds([PolicyRecord(MAX_ID, "top", "TracingPolicy", None, "top")], next_id=1)
    ids.ensure(policy("a", "ua"))  # 1
    ids.ensure(policy("b", "ub"))  # 2
    ids.release("ua")
    assert ids.next_id == 3
    statefile.save(path, ids)
    loaded = statefile.load(path)
    assert loaded.next_id == 3
    assert loaded.ensure(policy("c", "uc")).policy_id == 3


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ids = PolicyIds()
    ids.ensure(policy("a", "ua"))
    statefile.save(path, ids)
    ids.ensure(policy("b", "ub"))
    statefile.save(path, ids)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert len(statefile.load(path)) == 2


def test_failed_save_keeps_old_file_and_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    ids = PolicyIds()
    ids.ensure(policy("a", "ua"))
    statefile.save(path, ids)
    before = path.read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "ENOSPC")

    monkeypatch.setattr(os, "replace", boom)
    ids.ensure(policy("b", "ub"))
    with pytest.raises(OSError):
        statefile.save(path, ids)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


@pytest.mark.parametrize("fmt", [0, 2, "1", None])
def test_unknown_format_rejected(tmp_path: Path, fmt: object) -> None:
    path = tmp_path / "state.json"
    data: dict[str, Any] = {"next_id": 1, "policies": []}
    if fmt is not None:
        data["format"] = fmt
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format"):
        statefile.load(path)


def test_file_written_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    ids = PolicyIds()
    ids.ensure(policy("q", "uq", namespace="ns"))
    statefile.save(path, ids)
    data = json.loads(path.read_text())
    assert data["next_id"] == 2
    assert data["policies"] == [
        {
            "policy_id": 1,
            "uid": "uq",
            "kind": "TracingPolicyNamespaced",
            "namespace": "ns",
            "name": "q",
        }
    ]
