"""The controller's cache of node reports: report objects in, one report per node out.

A node's report may be split in shards (``tpfilter.reportshards``). Objects are cached by
name, grouped by their ``nodeName``, and a node's report is merged from one complete set
of its shards (``choose``), never from a mix of two shard counts; a node with objects but
no complete set (a shard deleted by hand, or lost) is kept with no entries, so it counts
as Pending (NotReported) on every policy until it writes a whole set. Cached objects carry
their resourceVersion, so an older event arriving after a newer list loses. Pure: the
controller feeds it watch events and asks which policies an event changed.

Compact at 1,000 nodes x 1,000 policies (10^6 entries): an entry is kept as a ``Seen``
(five fields, what aggregation reads), equal ``Seen`` are one shared object (most entries
are "Ready, generation g, p pods": a few distinct values for a million entries), and a
node of one object uses that object's entries as its report (no merged copy).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from tpfilter.aggregate import NodeReport, Seen, seen
from tpfilter.reportshards import Shard, choose, shard_of_body

EVERY_POLICY = None  # what update() returns when every policy must be recomputed
SHARED_MAX = 65_536  # distinct Seen values kept for sharing (then the table starts over)


def resource_version(body: Mapping[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion", ""))
    except ValueError:
        return None


def older(rv: int | None, than: int | None) -> bool:
    return rv is not None and than is not None and rv < than


class ReportCache:
    def __init__(self) -> None:
        self._shards: dict[str, tuple[int | None, Shard, dict[str, Seen]]] = {}
        self._by_node: dict[str, set[str]] = {}
        self.reports: dict[str, NodeReport] = {}  # node -> its merged report
        self._shared: dict[Seen, Seen] = {}

    def _share(self, value: Seen) -> Seen:
        """The one object for this value (entries of many nodes say the same thing)."""
        shared = self._shared.get(value)
        if shared is None:
            if len(self._shared) >= SHARED_MAX:  # bounded: many distinct messages
                self._shared.clear()
            self._shared[value] = shared = value
        return shared

    @property
    def objects(self) -> int:
        return len(self._shards)

    def names_of(self, node: str) -> set[str]:
        """The report objects of a node (its report's name if none is cached)."""
        return set(self._by_node.get(node) or {node})

    def nodes(self) -> set[str]:
        return set(self._by_node)

    def update(self, event_type: str | None, body: Mapping[str, Any]) -> set[str] | None:
        """Take one watch event of a report object (a whole report or one shard of it);
        the UIDs of the policies whose entries changed (``EVERY_POLICY``: all)."""
        shard = shard_of_body(body)
        old = self._shards.get(shard.name)
        if event_type == "DELETED":
            if self._shards.pop(shard.name, None) is None:
                return set()
            return self._merge(old[1].node if old else shard.node)
        if old is not None and older(resource_version(body), old[0]):
            return set()
        entries = {
            sys.intern(str(e.get("uid"))): self._share(seen(e)) for e in body.get("policies") or ()
        }
        self._shards[shard.name] = (resource_version(body), shard, entries)
        self._by_node.setdefault(shard.node, set()).add(shard.name)
        changed: set[str] | None = set()
        if old is not None and old[1].node != shard.node:  # renamed by hand: both change
            changed = self._merge(old[1].node)
        mine = self._merge(shard.node)
        return None if changed is None or mine is None else changed | mine

    def _merge(self, node: str) -> set[str] | None:
        """The node's report from its chosen shards; the policies whose entry changed."""
        names = {
            n
            for n in self._by_node.get(node, ())
            if n in self._shards and self._shards[n][1].node == node
        }
        old = self.reports.get(node)
        if not names:
            self._by_node.pop(node, None)
            return EVERY_POLICY if self.reports.pop(node, None) is not None else set()
        self._by_node[node] = names
        chosen = choose(self._shards[n][1] for n in names)
        used = [shard.name for shard in chosen] if chosen else sorted(names)
        entries: dict[str, Seen] = {}
        if chosen and len(used) == 1:
            entries = self._shards[used[0]][2]  # never mutated: an event brings a new dict
        else:
            for name in used if chosen else ():
                entries.update(self._shards[name][2])
        heartbeat = max(self._shards[name][1].written for name in used)
        self.reports[node] = NodeReport(node, heartbeat, entries)
        if old is None:
            return EVERY_POLICY
        before = old.entries
        return {u for u in before.keys() | entries.keys() if before.get(u) != entries.get(u)}
