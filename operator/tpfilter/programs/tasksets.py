"""The node-wide sets behind a selector's bit-tested task filters, kept in step with the
loaded entries: followForks' tpf_follow (programs/follow.py) and matchBinaries'
tpf_bin_eq/prefix/postfix (programs/binids.py). Both give each such filter an ID (its bit
in a task fact) when its entry is written and free it when the entry is deleted; the sets
are written before the selectors that test them and emptied after. Kept out of
loader.py, which writes the per-entry maps; the tables are bcc's, passed in.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
from collections.abc import Callable, Sequence
from typing import Any

from tpfilter.programs.binids import BinIds, Content, write_tables
from tpfilter.programs.binsel import BIN_EQ, BIN_POSTFIX, BIN_PREFIX
from tpfilter.programs.follow import FollowIds, changes
from tpfilter.programs.tasksel import TaskFilter

_BIN_TABLES = {
    BIN_EQ: b"tpf_bin_eq",
    BIN_PREFIX: b"tpf_bin_prefix",
    BIN_POSTFIX: b"tpf_bin_postfix",
}


class TaskSets:
    """``get_table``: bcc's table by name; ``binaries``: tpf_binary.c is compiled in."""

    def __init__(self, get_table: Callable[[bytes], Any], *, binaries: bool) -> None:
        self._get_table = get_table
        self._binaries = binaries
        self._follow_ids = FollowIds()
        self._follow: dict[tuple[int, int], int] = {}
        self._bin_ids = BinIds()
        self._bins: Content = {}

    def assign(self, config_id: int, filters: Sequence[TaskFilter]) -> tuple[list[int], list[int]]:
        """The IDs of ``filters``' followForks and matchBinaries filters, their sets
        written (raises RuntimeError when none is left: the policy's status says so)."""
        ids = self._follow_ids.assign(config_id, filters)
        try:
            bids = self._bin_ids.assign(config_id, filters)
        except RuntimeError:
            self._follow_ids.release(config_id)
            raise
        self.sync()
        return ids, bids

    def release(self, config_id: int) -> None:
        """After the selectors that used them are gone."""
        self._follow_ids.release(config_id)
        self._bin_ids.release(config_id)
        self.sync()

    def sync(self) -> None:
        table = self._get_table(b"tpf_follow")
        new = self._follow_ids.content()
        puts, deletes = changes(self._follow, new)
        for (kind, pid), bits in puts.items():
            table[table.Key(kind, pid)] = ct.c_uint64(bits)
        for kind, pid in deletes:
            with contextlib.suppress(KeyError):
                del table[table.Key(kind, pid)]
        self._follow = new
        if self._binaries:
            bins = self._bin_ids.content()
            tables = {k: self._get_table(n) for k, n in _BIN_TABLES.items()}
            write_tables(tables, self._bins, bins)
            self._bins = bins
