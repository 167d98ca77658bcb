"""The candidate index on the real kernel: a pinned one-slot array of maps.

What it holds is :mod:`tpfilter.candidates`' business; this module only does the I/O.
The programs declare the same map (``tpf_index_maps`` in bpf/programs/tpf_programs.c)
pinned at ``<pin dir>/policy_filter_maps_index``; whichever comes first creates it::

    array of maps, 1 slot (pinned) --[0]--> hash {u64 cgroup ID -> struct tpf_cands}
                                            BPF_F_NO_PREALLOC, sized to its content

Why the extra slot: a hash map's bucket array is paid for its whole ``max_entries`` from
creation (16 B a bucket), so a fixed 65,536-entry index would cost 1 MB on a node that
selects nothing. Like the policies' inner maps, the hash is sized to its content (next
power of two at or above twice the entries, rebuilt when it must grow or has shrunk to
an eighth: :mod:`tpfilter.sizing`) and a rebuilt map, filled first, replaces the old one
in the slot with one update, so a program sees the old index or the new one, whole.

Not thread-safe, one writer (the engine). It mirrors what it wrote; :meth:`read_all` reads
the kernel back (the engine does after a failure and on its drift check).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from tpfilter import bpfsys, sizing
from tpfilter.candidates import INDEX_MAX, apply

log = logging.getLogger(__name__)

INDEX_PIN_NAME = "policy_filter_maps_index"  # tpf_programs.c: TPF_FILTER_PIN "_index"
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
MAX_ENTRIES_LIMIT = 1 << 20  # cgroups indexed on one node, far above any real node

_KEY = struct.Struct("=Q")
_SLOT = struct.Struct("=I")
_VALUE = struct.Struct(f"=I{INDEX_MAX}I")  # struct tpf_cands


def encode(ids: Collection[int]) -> bytes:
    """struct tpf_cands for ``ids`` (at most INDEX_MAX)."""
    if len(ids) > INDEX_MAX:
        raise ValueError(f"an index entry holds at most {INDEX_MAX} policies, got {len(ids)}")
    padded = [*sorted(ids), *([0] * (INDEX_MAX - len(ids)))]
    return _VALUE.pack(len(ids), *padded)


def decode(raw: bytes) -> tuple[int, ...]:
    n, *ids = _VALUE.unpack(raw)
    return tuple(ids[: min(n, INDEX_MAX)])


@dataclass(frozen=True, slots=True)
class IndexUsage:
    """Kernel cost of the index, for `tpfilter status`, metrics and benchmarks."""

    entries: int
    max_entries: int
    memlock: int  # bytes: the hash and its one-slot array (the kernel's own accounting)


class PinnedCandidateIndex:
    """:class:`~tpfilter.interfaces.CandidateIndex` pinned at ``pin_dir``."""

    def __init__(self, *, pin_dir: Path) -> None:
        self._pin_dir = Path(pin_dir)
        self._pin_path = self._pin_dir / INDEX_PIN_NAME
        self._slot_fd = -1
        self._inner_fd = -1
        self._capacity = 0
        self._slot_fd = self._open_or_create()
        try:
            info = bpfsys.map_info(self._slot_fd)
            if (info.type, info.key_size, info.value_size, info.max_entries) != (
                BPF_MAP_TYPE_ARRAY_OF_MAPS,
                _SLOT.size,
                4,
                1,
            ):
                raise RuntimeError(f"{self._pin_path} is not tpfilter's candidate index: {info}")
            self._mirror = self._read_kernel()
        except BaseException:
            self.close()
            raise

    # -- construction ---------------------------------------------------------------------

    @staticmethod
    def _create_inner(max_entries: int) -> int:
        return bpfsys.create_map(
            bpfsys.BPF_MAP_TYPE_HASH,
            name="tpf_index_in",
            key_size=_KEY.size,
            value_size=_VALUE.size,
            max_entries=max_entries,
            flags=bpfsys.BPF_F_NO_PREALLOC,
        )

    def _create_slot(self) -> int:
        template = self._create_inner(1)
        try:
            return bpfsys.create_map_in_map(
                BPF_MAP_TYPE_ARRAY_OF_MAPS,
                name="tpf_index_maps",
                key_size=_SLOT.size,
                max_entries=1,
                flags=0,
                inner_map_fd=template,
            )
        finally:
            os.close(template)

    def _open_or_create(self) -> int:
        for _ in range(2):
            with contextlib.suppress(FileNotFoundError):
                return bpfsys.obj_get(self._pin_path)
            fd = self._create_slot()
            self._pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                bpfsys.obj_pin(fd, self._pin_path)
            except FileExistsError:
                os.close(fd)  # a program pinned its own first: use that one
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd
        raise OSError(errno.EAGAIN, f"adopt or create {self._pin_path}: pin kept changing")

    def _open_inner(self) -> None:
        """Open the hash in the slot (none: an empty index)."""
        if self._inner_fd >= 0:
            os.close(self._inner_fd)
            self._inner_fd = -1
        self._capacity = 0
        raw = bpfsys.map_lookup(self._slot_fd, _SLOT.pack(0), 4)
        if raw is None:
            return
        (map_id,) = _SLOT.unpack(raw)
        self._inner_fd = bpfsys.map_fd_by_id(map_id)
        self._capacity = bpfsys.map_info(self._inner_fd).max_entries

    def _read_kernel(self) -> dict[int, tuple[int, ...]]:
        self._open_inner()
        if self._inner_fd < 0:
            return {}
        out: dict[int, tuple[int, ...]] = {}
        for key in bpfsys.map_keys(self._inner_fd, _KEY.size):
            raw = bpfsys.map_lookup(self._inner_fd, key, _VALUE.size)
            if raw is not None:
                out[_KEY.unpack(key)[0]] = decode(raw)
        return out

    # -- the interface ----------------------------------------------------------------------

    def read_all(self) -> Mapping[int, tuple[int, ...]]:
        """What the kernel's index holds now (and the mirror from then on)."""
        self._mirror = self._read_kernel()
        return dict(self._mirror)

    def write(self, writes: Mapping[int, tuple[int, ...]], deletes: Collection[int]) -> None:
        """Set ``writes`` and delete ``deletes``. Each entry changes whole (a hash update
        replaces the element); a rebuild swaps the whole index. Raises OSError."""
        if not writes and not deletes:
            return
        result = apply(self._mirror, writes, deletes)
        if self._inner_fd < 0 or sizing.needs_rebuild(
            len(result), self._capacity, limit=MAX_ENTRIES_LIMIT
        ):
            self._rebuild(result)
        else:
            try:
                if writes:
                    keys = b"".join(_KEY.pack(k) for k in writes)
                    values = b"".join(encode(v) for v in writes.values())
                    bpfsys.map_update_batch(
                        self._inner_fd, keys, values, key_size=_KEY.size, value_size=_VALUE.size
                    )
                for key in deletes:
                    bpfsys.map_delete(self._inner_fd, _KEY.pack(key))
            except OSError:
                self._mirror = self._read_kernel()
                raise
        self._mirror = result

    def _rebuild(self, content: Mapping[int, tuple[int, ...]]) -> None:
        capacity = sizing.target_capacity(len(content), limit=MAX_ENTRIES_LIMIT)
        if len(content) > capacity:
            raise OSError(errno.E2BIG, f"{len(content)} cgroups indexed, over {capacity}")
        fd = self._create_inner(capacity)
        try:
            if content:
                keys = b"".join(_KEY.pack(k) for k in content)
                values = b"".join(encode(v) for v in content.values())
                bpfsys.map_update_batch(
                    fd, keys, values, key_size=_KEY.size, value_size=_VALUE.size
                )
            # One update of the slot: programs see the old index or this one, both whole.
            bpfsys.map_update(self._slot_fd, _SLOT.pack(0), _SLOT.pack(fd))
        except BaseException:
            os.close(fd)
            raise
        if self._inner_fd >= 0:
            os.close(self._inner_fd)
        self._inner_fd, self._capacity = fd, capacity
        log.debug("candidate index rebuilt: %d entries, max_entries %d", len(content), capacity)

    def usage(self) -> IndexUsage:
        memlock = bpfsys.memlock(self._slot_fd)
        if self._inner_fd >= 0:
            memlock += bpfsys.memlock(self._inner_fd)
        return IndexUsage(len(self._mirror), self._capacity, memlock)

    # -- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        for name in ("_inner_fd", "_slot_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def remove_pins(self) -> None:
        """Unpin the index (tests, uninstall); programs holding it keep it until unloaded."""
        self._pin_path.unlink(missing_ok=True)

    def __enter__(self) -> PinnedCandidateIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_usage(pin_dir: Path) -> IndexUsage | None:
    """The pinned index's usage, or None if there is none (never creates one)."""
    if not (Path(pin_dir) / INDEX_PIN_NAME).exists():
        return None
    with PinnedCandidateIndex(pin_dir=pin_dir) as index:
        return index.usage()
