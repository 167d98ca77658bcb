"""A node's report split into shards when one object would not fit, and merged back: pure.

One object per node (docs/status.md says why) has a ceiling: etcd refuses a request
larger than 1.5 MiB, about 6,000 policies at 240 B an entry. Past a budget the agent
splits its entries over ``k`` objects, ``k`` the smallest power of two that makes every
shard fit; an entry goes to shard ``hash(uid) mod k`` with a hash that does not change
between processes or versions, so a policy stays in its shard while ``k`` is unchanged and
a change to one policy rewrites one shard, not the whole report.

Names: shard 0 of ``k = 1`` is the object named after the node (what every node writes
below the budget, and what older agents wrote); for ``k > 1`` shard ``i`` is
``<node>.shard-<i>-of-<k>``. Every shard carries ``nodeName`` and, for ``k > 1``,
``shard: {index, count}``, which the admission rule and the controller read.

The controller merges a node's shards (:func:`choose`): only one consistent set, never a
mix of two ``k`` (an agent changing ``k`` writes the new set before it deletes the old,
so a reader may see both for a moment; a mix would count a policy twice or not at all).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tpfilter.nodereport import Entry, summary

GROUP: Final = "tpfilter.io"
VERSION: Final = "v1alpha1"
KIND: Final = "TracingPolicyNodeReport"
PLURAL: Final = "tracingpolicynodereports"

# The budget of one shard's JSON. etcd refuses requests over 1.5 MiB (its default
# --max-request-bytes); the API server adds metadata (managedFields grow with every field
# manager, timestamps, uid) and a patch's JSON may be written with other separators than
# ours. 1 MiB leaves a third of the limit for all of that.
REPORT_MAX_BYTES: Final = 1024 * 1024
MAX_SHARDS: Final = 256  # past this a node has ~1.5 million policies: not worth a shard more
SHARD_INFIX: Final = ".shard-"


def to_rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def shard_name(node: str, index: int, count: int) -> str:
    return node if count == 1 else f"{node}{SHARD_INFIX}{index}-of-{count}"


def shard_of(uid: str, count: int) -> int:
    """The shard of a policy: a stable hash (not Python's salted ``hash``) modulo ``count``."""
    digest = hashlib.blake2b(uid.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def shard_body(
    node: str, entries: Sequence[Entry], at: float, *, index: int = 0, count: int = 1
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": shard_name(node, index, count)},
        "nodeName": node,
    }
    if count > 1:
        body["shard"] = {"index": index, "count": count}
    body.update(writeTime=to_rfc3339(at), summary=summary(entries), policies=list(entries))
    return body


def _size(entry: Entry) -> int:
    return len(json.dumps(entry, separators=(",", ":")))


def split(
    node: str,
    entries: Sequence[Entry],
    *,
    max_bytes: int = REPORT_MAX_BYTES,
    max_shards: int = MAX_SHARDS,
) -> list[list[Entry]]:
    """The entries of each shard (index = position), ``k = len(result)`` the smallest power
    of two whose every shard's JSON is at most ``max_bytes`` (``max_shards`` if none is).

    Sizes are of compact JSON: each entry once, then sums per candidate ``k``; the empty
    body is measured with a full summary and the longest shard name and time stamp.
    """
    sizes = [_size(e) for e in entries]
    count = 1
    while True:
        groups: list[list[Entry]] = [[] for _ in range(count)]
        totals = [0] * count
        for entry, size in zip(entries, sizes, strict=True):
            i = shard_of(str(entry["uid"]), count)
            groups[i].append(entry)
            totals[i] += size + 1  # and its comma
        empty = shard_body(node, [], 0.0, index=count - 1, count=count)
        empty["summary"] = {k: 10**9 for k in empty["summary"]}
        overhead = len(json.dumps(empty, separators=(",", ":")))
        if all(overhead + t <= max_bytes for t in totals) or count >= max_shards:
            return groups
        count *= 2


@dataclass(frozen=True, slots=True)
class Shard:
    """One report object as the controller reads it."""

    name: str
    node: str
    index: int
    count: int
    written: float  # its writeTime (epoch), 0 if unreadable


def shard_of_body(body: Mapping[str, Any]) -> Shard:
    """Which node and shard an object is; an object without ``nodeName`` or ``shard`` (an
    older agent's) is the whole report of the node its name says."""
    name = str((body.get("metadata") or {}).get("name", ""))
    node = str(body.get("nodeName") or name)
    shard = body.get("shard") or {}
    try:
        index, count = int(shard.get("index", 0)), int(shard.get("count", 1))
    except (TypeError, ValueError):
        index, count = 0, 1
    try:
        written = from_rfc3339(str(body.get("writeTime") or ""))
    except ValueError:
        written = 0.0
    return Shard(name, node, index, count, written)


def choose(shards: Iterable[Shard]) -> list[Shard] | None:
    """The shards of one node to use: a complete set (every index of one ``k``), the one
    most recently written in full if there are two; None if there is none.

    An incomplete newest set (the agent has written some of its new shards, or a shard
    was deleted by hand) is ignored while the previous set is complete: the agent deletes
    the old set only after writing every new shard, so the old one is whole and, for a
    moment, as right as it was. With no complete set the controller counts the node as
    Pending on every policy (it is there, but has not said a whole thing) rather than
    read half a report, which would leave the policies of the missing shards out.
    """
    by_count: dict[int, dict[int, Shard]] = {}
    for shard in shards:
        if 0 <= shard.index < shard.count:
            by_count.setdefault(shard.count, {})[shard.index] = shard
    complete = [
        sorted(group.values(), key=lambda s: s.index)
        for count, group in by_count.items()
        if len(group) == count
    ]
    if not complete:
        return None
    # The set whose oldest shard is the newest: a set is current from its last write on.
    return max(complete, key=lambda s: (min(x.written for x in s), len(s)))


def is_shard_name_of(name: str, node: str) -> bool:
    """The names an agent of ``node`` may write (the admission rule says the same in CEL)."""
    return name == node or name.startswith(node + SHARD_INFIX)


__all__ = [
    "GROUP",
    "KIND",
    "MAX_SHARDS",
    "PLURAL",
    "REPORT_MAX_BYTES",
    "VERSION",
    "Shard",
    "choose",
    "from_rfc3339",
    "is_shard_name_of",
    "shard_body",
    "shard_name",
    "shard_of",
    "shard_of_body",
    "split",
    "to_rfc3339",
]
