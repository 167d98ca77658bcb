"""matchBinaries filters' node-wide IDs and the content of tpf_bin_eq/prefix/postfix. Pure
(the table writes take the tables they are given).

A matchBinaries filter (binsel.py) is a bit of the task facts TPF_F_BIN/TPF_F_BIN_FOLLOW
(bpf/programs/tpf_binary.c): the program looks the binary's name up once per event in
three sets keyed by the string alone, and each entry holds the bits of the filters the
name matches through it. Filters with the same set kind and values share an ID (a
followChildren filter and its plain twin too: only the fact tested differs), counted by
their users; at most :data:`MAX_IDS` different ones at once, past that a policy fails to
load with that reason (its status is ``error``), never silently.

An LPM trie returns only the longest stored prefix of a name, so a prefix's entry holds
the bits of every filter with a value that is a prefix of it (itself or shorter): the
longest match then carries all the filters any of the name's stored prefixes belongs to.
Postfix values are the same, reversed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from tpfilter.programs import layout
from tpfilter.programs.binsel import BIN_EQ, BIN_POSTFIX, BIN_PREFIX
from tpfilter.programs.tasksel import TaskFilter

MAX_IDS = 64  # bits of the u64 facts TPF_F_BIN / TPF_F_BIN_FOLLOW

SetKey = tuple[int, tuple[bytes, ...]]  # (BIN_* kind, values)
Content = dict[tuple[int, bytes], int]  # (BIN_* kind, stored string) -> bits


class BinIds:
    """Which matchBinaries set has which ID, and which hook entries (config IDs) use it."""

    def __init__(self) -> None:
        self._ids: dict[SetKey, int] = {}
        self._users: dict[SetKey, int] = {}
        self._by_config: dict[int, list[SetKey]] = {}

    def assign(self, config_id: int, filters: Sequence[TaskFilter]) -> list[int]:
        """IDs for ``filters``' matchBinaries filters (in order), held by ``config_id``."""
        keys = [(f.binary, f.strings) for f in filters if f.binary]
        new = {k for k in keys if k not in self._ids}
        free = [i for i in range(MAX_IDS) if i not in self._ids.values()]
        if len(new) > len(free):
            raise RuntimeError(
                f"no matchBinaries ID left: at most {MAX_IDS} different matchBinaries "
                "filters are loaded on a node at once"
            )
        for key, bit in zip(sorted(new), free, strict=False):
            self._ids[key] = bit
        for key in keys:
            self._users[key] = self._users.get(key, 0) + 1
        self._by_config.setdefault(config_id, []).extend(keys)
        return [self._ids[k] for k in keys]

    def release(self, config_id: int) -> None:
        for key in self._by_config.pop(config_id, []):
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._ids[key]

    def content(self) -> Content:
        """What the three sets hold: (kind, string as stored) -> bits."""
        out: Content = {}
        for (kind, values), bit in self._ids.items():
            for v in values:
                stored = v[::-1] if kind == BIN_POSTFIX else v
                out[(kind, stored)] = out.get((kind, stored), 0) | 1 << bit
        for kind in (BIN_PREFIX, BIN_POSTFIX):  # a trie's entry: its shorter prefixes' bits too
            own = {s: b for (k, s), b in out.items() if k == kind}
            for s in own:
                out[(kind, s)] = 0
                for p, bits in own.items():
                    if s.startswith(p):
                        out[(kind, s)] |= bits
        return out


def _key(table: Any, kind: int, stored: bytes) -> Any:
    key = table.Key()
    if kind == BIN_EQ:
        key.word0 = 0
    else:  # the key's header (config, sel, arg: zero here) and the string, in bits
        key.prefixlen = 64 + 8 * min(len(stored), layout.LPM_STR_MAX)
    key.s = stored
    return key


def write_tables(tables: Mapping[int, Any], old: Content, new: Content) -> None:
    """Make the sets (BIN_* kind -> bcc table) go from ``old`` to ``new``: new and changed
    entries first, then the ones no filter has (the selectors using them are gone)."""
    for (kind, stored), bits in new.items():
        if old.get((kind, stored)) != bits:
            tables[kind][_key(tables[kind], kind, stored)] = tables[kind].Leaf(bits)
    for kind, stored in old.keys() - new.keys():
        with contextlib.suppress(KeyError):
            del tables[kind][_key(tables[kind], kind, stored)]


__all__ = ["BIN_EQ", "BIN_POSTFIX", "BIN_PREFIX", "MAX_IDS", "BinIds", "write_tables"]
