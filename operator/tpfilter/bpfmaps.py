"""The pinned BPF hash-of-maps that says which cgroups each policy applies to.

Layout (the contract of :class:`tpfilter.interfaces.FilterMaps`)::

    <pin_dir>/policy_filter_maps        BPF_MAP_TYPE_HASH_OF_MAPS, BPF_F_NO_PREALLOC
        key   u32 policy ID             (0 is reserved: "no podSelector, every process")
        value inner map                 BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC
                  key   u64 cgroup ID   (bpf_get_current_cgroup_id() of the container;
                                         2**64-1: the policy has hostSelector {})
                  value u8  1
        key 0xFFFFFFFF (reserved)       the cgroups of every pod container on the node,
                                        present while some policy has hostSelector {}

Why it looks like this:

* Only the outer map (and the levels array below) is pinned. It is what BPF programs
  compiled later (with ``bpf/policy_filter.h``) and a restarted agent find by path; inner
  maps are reachable
  through it (a userspace lookup returns the inner map *ID*, turned into an fd with
  BPF_MAP_GET_FD_BY_ID). Deleting a policy therefore leaves no pin behind: the kernel
  frees the inner map with its last reference.
* Every map is BPF_F_NO_PREALLOC, so the kernel pays per live entry plus a bucket array
  sized by ``max_entries``; :mod:`tpfilter.sizing` keeps ``max_entries`` near the content
  instead of Tetragon's fixed 32,768 preallocated entries (~2.6 MB per policy).
* Resizing is "build a new inner map, fill it, swap the outer slot in one update": a BPF
  program sees the old map or the new full one, never a half-filled one.
* Writes to the outer map are dear, writes to inner maps are cheap. The kernel ends every
  update or delete on a map-of-maps with ``synchronize_rcu()`` (so that on return no
  running program still uses the old inner map): ~10-13 ms each here, against ~6 us for
  an inner-map element. Hence in-place ``update()`` for membership changes and
  ``install()`` only to create or resize (which :mod:`tpfilter.sizing` keeps rare).

* Many outer writes at once go in one ``BPF_MAP_UPDATE_BATCH`` / ``BPF_MAP_DELETE_BATCH``
  (:meth:`PinnedFilterMaps.install_many`, :meth:`PinnedFilterMaps.delete_many`): the
  kernel waits for one grace period per batch, so loading 10,000 policies takes well under
  a second instead of two minutes.
* Next to the outer map, ``<pin_dir>/policy_filter_maps_levels`` (an array of one u64)
  holds the cgroup depths at which the BPF check also looks at the task's ancestors, so
  that child cgroups a container makes are matched (:mod:`tpfilter.descendants`). Every
  write that publishes a cgroup ID first makes sure its level's bit is set.
* At most 256 inner map fds are kept open (least recently used first out), so 10,000
  policies do not need 10,000 fds; an evicted policy costs one BPF_MAP_GET_FD_BY_ID later.

Not thread-safe: the engine is the one writer. All errors are :class:`OSError` with the
errno and what was attempted, except capacity problems, which are
:class:`~tpfilter.interfaces.MapFullError` (the engine must see them, never lose an ID).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tpfilter import bpfsys
from tpfilter.descendants import CgroupFsLevels, LevelResolver, mask_for
from tpfilter.interfaces import HOST_MARKER, InnerMapState, MapFullError, MapUsage

__all__ = [
    "DEFAULT_MAX_POLICIES",
    "DEFAULT_PIN_DIR",
    "LEVELS_PIN_NAME",
    "OUTER_PIN_NAME",
    "InstallItem",
    "KernelSupport",
    "PinnedFilterMaps",
    "PinnedMapMismatchError",
    "probe",
]

log = logging.getLogger(__name__)

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/tpfilter")
OUTER_PIN_NAME = "policy_filter_maps"
LEVELS_PIN_NAME = OUTER_PIN_NAME + "_levels"  # policy_filter.h: TPF_FILTER_PIN "_levels"
DEFAULT_MAX_POLICIES = 16384

_OUTER_MAP_NAME = "tpf_policy_map"  # kernel map names are at most 15 characters
_LEVELS_MAP_NAME = "tpf_levels"
_LEVELS_KEY = struct.pack("=I", 0)
_MASK = struct.Struct("=Q")
_FD_CACHE_LIMIT = 256  # open inner map fds kept (LRU); a miss costs GET_FD_BY_ID + INFO
_BATCH_CHUNK = 1024  # policies per outer batch: bounds the fds held at once
_POLICY_KEY = struct.Struct("=I")  # host order: what the BPF program's u32 key is
_CGROUP_KEY = struct.Struct("=Q")
_MAP_ID = struct.Struct("=I")  # an outer value read from userspace is the inner map ID
_PRESENT = b"\x01"
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
# The kernel's two answers to "this map cannot take another element".
_FULL_ERRNOS = frozenset({errno.E2BIG, errno.ENOMEM})
# A kernel without batch operations for this map type (ENOTSUPP is the kernel's 524).
_NO_BATCH_ERRNOS = frozenset({errno.EINVAL, errno.EOPNOTSUPP, 524})

InstallItem = tuple[int, Collection[int], int]  # (policy ID, cgroup IDs, max_entries)


class PinnedMapMismatchError(RuntimeError):
    """Something is pinned at the outer map's path but it is not a map tpfilter made."""


@dataclass(frozen=True, slots=True)
class _Inner:
    """An open inner map: the fd is valid for exactly this kernel map ID."""

    map_id: int
    fd: int
    max_entries: int


def _check_policy_id(policy_id: int) -> None:
    # 0 never reaches a map: policy_filter_check() answers "every process" without a
    # lookup, so storing a map under 0 would be dead state and hide a caller bug.
    if not 0 < policy_id <= _U32_MAX:
        raise ValueError(f"policy ID must be in 1..{_U32_MAX}, got {policy_id}")


def _check_cgroup_id(cgroup_id: int) -> None:
    # _U64_MAX is accepted: it is the hostSelector marker (tpfilter.interfaces.HOST_MARKER).
    if not 0 < cgroup_id <= _U64_MAX:
        raise ValueError(f"cgroup ID must be in 1..{_U64_MAX}, got {cgroup_id}")


class PinnedFilterMaps:
    """:class:`~tpfilter.interfaces.FilterMaps` on the real kernel, pinned on a bpffs.

    Construction adopts ``pin_dir/policy_filter_maps`` if it exists (an agent restart loses
    nothing and re-creates nothing; ``max_policies`` is then the pinned map's, whatever was
    passed), else creates and pins it; the same for the levels array beside it.

    ``levels`` tells the depth of a cgroup ID (for the child-cgroup walk, see
    :mod:`tpfilter.descendants`); by default the cgroup2 mount of this machine is asked.
    """

    def __init__(
        self,
        *,
        pin_dir: Path = DEFAULT_PIN_DIR,
        max_policies: int = DEFAULT_MAX_POLICIES,
        levels: LevelResolver | None = None,
    ) -> None:
        if not 0 < max_policies <= _U32_MAX:
            raise ValueError(f"max_policies must be positive, got {max_policies}")
        self._pin_dir = Path(pin_dir)
        self._pin_path = self._pin_dir / OUTER_PIN_NAME
        self._levels_path = self._pin_dir / LEVELS_PIN_NAME
        self._inners: OrderedDict[int, _Inner] = OrderedDict()
        self._outer_fd = -1
        self._levels_fd = -1
        # The default resolver is ours to close; an injected one is the caller's.
        self._own_resolver: CgroupFsLevels | None = None
        if levels is None:
            levels = self._own_resolver = CgroupFsLevels()
        self._resolver: LevelResolver = levels
        fd, adopted = self._open_or_create(self._pin_path, lambda: self._create_outer(max_policies))
        self._outer_fd = fd
        self._adopted = adopted
        try:
            info = bpfsys.map_info(fd)
            self._check_outer(info)
            self._levels_fd, _ = self._open_or_create(self._levels_path, self._create_levels)
            self._check_levels(bpfsys.map_info(self._levels_fd))
            self._mask = self._read_mask()
        except BaseException:
            self.close()
            raise
        self._outer_id = info.id
        self._max_policies = info.max_entries
        if adopted and info.max_entries != max_policies:
            log.info(
                "adopted %s with max_entries %d (asked for %d); keeping the pinned map",
                self._pin_path,
                info.max_entries,
                max_policies,
            )

    # -- construction -------------------------------------------------------------------

    def _open_or_create(self, path: Path, create: Callable[[], int]) -> tuple[int, bool]:
        """(map fd, adopted?). Loops once at most: losing a pin race means adopting."""
        for _ in range(2):
            try:
                return bpfsys.obj_get(path), True
            except FileNotFoundError:
                pass
            fd = create()
            self._pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                bpfsys.obj_pin(fd, path)
            except FileExistsError:
                # Another process pinned its map between our OBJ_GET and OBJ_PIN: use
                # theirs, so that there is exactly one outer map on the node.
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd, False
        raise OSError(errno.EAGAIN, f"adopt or create {path}: pin kept changing")

    @staticmethod
    def _create_outer(max_policies: int) -> int:
        # The template only gives the outer map the shape its values must have (type,
        # key/value size, flags); the kernel copies that and the template can go. Inner
        # maps of any max_entries are accepted for hash maps, so 1 will do.
        template = bpfsys.create_map(
            bpfsys.BPF_MAP_TYPE_HASH,
            name="tpf_inner_tmpl",
            key_size=_CGROUP_KEY.size,
            value_size=len(_PRESENT),
            max_entries=1,
            flags=bpfsys.BPF_F_NO_PREALLOC,
        )
        try:
            return bpfsys.create_map_in_map(
                bpfsys.BPF_MAP_TYPE_HASH_OF_MAPS,
                name=_OUTER_MAP_NAME,
                key_size=_POLICY_KEY.size,
                max_entries=max_policies,
                # No prealloc on the outer map too: 16,384 empty slots then cost ~263 KB
                # of buckets instead of a preallocated element per slot.
                flags=bpfsys.BPF_F_NO_PREALLOC,
                inner_map_fd=template,
            )
        finally:
            os.close(template)

    @staticmethod
    def _create_levels() -> int:
        # What policy_filter.h declares: BPF_TABLE_PINNED("array", u32, u64, ..., 1, ...).
        return bpfsys.create_map(
            bpfsys.BPF_MAP_TYPE_ARRAY,
            name=_LEVELS_MAP_NAME,
            key_size=len(_LEVELS_KEY),
            value_size=_MASK.size,
            max_entries=1,
            flags=0,
        )

    def _check_levels(self, info: bpfsys.MapInfo) -> None:
        want = (bpfsys.BPF_MAP_TYPE_ARRAY, len(_LEVELS_KEY), _MASK.size, 1)
        have = (info.type, info.key_size, info.value_size, info.max_entries)
        if have != want:
            raise PinnedMapMismatchError(
                f"{self._levels_path} is map id {info.id} of type {info.type}, key "
                f"{info.key_size} B, value {info.value_size} B, max_entries "
                f"{info.max_entries}; expected a one-element u32 -> u64 array. Remove the "
                f"pin to let tpfilter create its own."
            )

    def _check_outer(self, info: bpfsys.MapInfo) -> None:
        if "map_type" not in bpfsys.fdinfo(self._outer_fd):
            raise PinnedMapMismatchError(f"{self._pin_path} is a BPF object but not a map")
        want = (bpfsys.BPF_MAP_TYPE_HASH_OF_MAPS, _POLICY_KEY.size, _MAP_ID.size)
        have = (info.type, info.key_size, info.value_size)
        if have != want or not info.map_flags & bpfsys.BPF_F_NO_PREALLOC:
            raise PinnedMapMismatchError(
                f"{self._pin_path} is map id {info.id} of type {info.type}, key "
                f"{info.key_size} B, value {info.value_size} B, flags {info.map_flags:#x}; "
                f"expected a no-prealloc hash-of-maps (type {want[0]}) with u32 keys. "
                f"Remove the pin to let tpfilter create its own."
            )

    # -- properties ---------------------------------------------------------------------

    @property
    def pin_path(self) -> Path:
        """Where the outer map is pinned; BPF programs get it through ``bpfsrc.cflags()``."""
        return self._pin_path

    @property
    def outer_map_id(self) -> int:
        return self._outer_id

    @property
    def max_policies(self) -> int:
        """The outer map's max_entries (the pinned map's when adopted)."""
        return self._max_policies

    @property
    def adopted(self) -> bool:
        """True if construction found the outer map already pinned."""
        return self._adopted

    @property
    def levels_path(self) -> Path:
        """Where the levels array is pinned (``TPF_FILTER_PIN "_levels"`` for programs)."""
        return self._levels_path

    # -- levels of the child-cgroup walk --------------------------------------------------

    def _read_mask(self) -> int:
        raw = bpfsys.map_lookup(self._levels(), _LEVELS_KEY, _MASK.size)
        return 0 if raw is None else int(_MASK.unpack(raw)[0])

    def levels_mask(self) -> int:
        """The bitmask BPF programs read now (bit L: depth L; bit 63: every depth)."""
        return self._read_mask()

    def _levels(self) -> int:
        if self._levels_fd < 0:
            raise ValueError("PinnedFilterMaps is closed")
        return self._levels_fd

    def _cover(self, cgroup_ids: Iterable[int]) -> None:
        """Set the level bits of ``cgroup_ids`` before any of them is published.

        Bits are only ever added: a level with no container left costs a BPF check one
        helper call on a miss, while a bit missing would let a child cgroup escape. Kube
        nodes have containers at two or three depths, so the mask settles at once.
        """
        need = 0
        for cgroup_id in cgroup_ids:
            if cgroup_id != HOST_MARKER:  # a marker, not a cgroup: no level
                need |= mask_for(self._resolver.level(cgroup_id))
        if need & ~self._mask:
            # Re-read: the mask is ours, but a pin made by a program at the same time as
            # this agent started may hold bits from a previous agent's maps.
            mask = self._read_mask() | self._mask | need
            bpfsys.map_update(self._levels(), _LEVELS_KEY, _MASK.pack(mask), bpfsys.BPF_ANY)
            self._mask = mask

    # -- inner map fds ------------------------------------------------------------------

    def _outer(self) -> int:
        if self._outer_fd < 0:
            raise ValueError("PinnedFilterMaps is closed")
        return self._outer_fd

    def _inner(self, policy_id: int) -> _Inner | None:
        """The open inner map of a policy, or None if the outer map has no such policy.

        One outer lookup each time, so a slot swapped by anyone (or a restart) is noticed
        by its map ID changing; the fd cache only saves the GET_FD_BY_ID and INFO calls.
        """
        raw = bpfsys.map_lookup(self._outer(), _POLICY_KEY.pack(policy_id), _MAP_ID.size)
        cached = self._inners.get(policy_id)
        if raw is None:
            self._forget(policy_id)
            return None
        (map_id,) = _MAP_ID.unpack(raw)
        if cached is not None and cached.map_id == map_id:
            self._inners.move_to_end(policy_id)
            return cached
        self._forget(policy_id)
        try:
            fd = bpfsys.map_fd_by_id(map_id)
        except FileNotFoundError:
            # Swapped out and freed between the lookup and here: only possible with a
            # second writer; read the slot again rather than fail.
            return self._inner(policy_id)
        try:
            info = bpfsys.map_info(fd)
        except BaseException:
            os.close(fd)
            raise
        inner = _Inner(map_id=map_id, fd=fd, max_entries=info.max_entries)
        self._remember(policy_id, inner)
        return inner

    def _remember(self, policy_id: int, inner: _Inner) -> None:
        self._forget(policy_id)
        self._inners[policy_id] = inner
        while len(self._inners) > _FD_CACHE_LIMIT:
            _, old = self._inners.popitem(last=False)
            os.close(old.fd)

    def _forget(self, policy_id: int) -> None:
        old = self._inners.pop(policy_id, None)
        if old is not None:
            os.close(old.fd)

    def _policy_ids(self) -> list[int]:
        ids = [_POLICY_KEY.unpack(k)[0] for k in bpfsys.map_keys(self._outer(), _POLICY_KEY.size)]
        for stale in self._inners.keys() - set(ids):
            self._forget(stale)
        return ids

    @staticmethod
    def _cgroup_ids(inner: _Inner) -> frozenset[int]:
        return frozenset(
            _CGROUP_KEY.unpack(k)[0] for k in bpfsys.map_keys(inner.fd, _CGROUP_KEY.size)
        )

    # -- FilterMaps ---------------------------------------------------------------------

    def read_all(self) -> Mapping[int, InnerMapState]:
        result: dict[int, InnerMapState] = {}
        for policy_id in self._policy_ids():
            inner = self._inner(policy_id)
            if inner is not None:
                result[policy_id] = InnerMapState(self._cgroup_ids(inner), inner.max_entries)
        # Repair (a drift check): a levels mask that lost bits, e.g. a pin removed and made
        # again empty by a program, or maps written before the levels array existed.
        self._mask = self._read_mask()
        self._cover(cgroup_id for state in result.values() for cgroup_id in state.cgroup_ids)
        return result

    @staticmethod
    def _checked(policy_id: int, cgroup_ids: Collection[int], max_entries: int) -> set[int]:
        _check_policy_id(policy_id)
        if not 0 < max_entries <= _U32_MAX:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        wanted = set(cgroup_ids)
        for cgroup_id in wanted:
            _check_cgroup_id(cgroup_id)
        return wanted

    def _new_inner(self, policy_id: int, wanted: set[int], max_entries: int) -> int:
        """A new inner map holding ``wanted``, not yet published; returns its fd."""
        if len(wanted) > max_entries:
            # Checked up front: the kernel would say E2BIG only after we filled a map.
            raise MapFullError(
                f"policy {policy_id}: {len(wanted)} cgroup IDs do not fit in a new inner "
                f"map of max_entries {max_entries}"
            )
        fd = bpfsys.create_map(
            bpfsys.BPF_MAP_TYPE_HASH,
            name=f"tpf_p{policy_id}",
            key_size=_CGROUP_KEY.size,
            value_size=len(_PRESENT),
            max_entries=max_entries,
            flags=bpfsys.BPF_F_NO_PREALLOC,
        )
        try:
            # Fill before publishing: until the outer update no BPF program can reach
            # this map, so it is never seen half-filled.
            for cgroup_id in wanted:
                self._insert(fd, policy_id, cgroup_id, max_entries, map_id=None)
        except BaseException:
            os.close(fd)  # the kernel frees the never-published map with this last fd
            raise
        return fd

    def _outer_error(self, policy_id: int, e: OSError) -> MapFullError | OSError:
        if e.errno in _FULL_ERRNOS:
            return MapFullError(
                f"policy {policy_id}: the outer map {self._pin_path} (max_entries "
                f"{self._max_policies}) cannot take another policy "
                f"({bpfsys.errno_name(e.errno or 0)})"
            )
        return e

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        wanted = self._checked(policy_id, cgroup_ids, max_entries)
        outer = self._outer()
        fd = self._new_inner(policy_id, wanted, max_entries)
        try:
            self._cover(wanted)
            info = bpfsys.map_info(fd)
            try:
                # One update of the slot is the atomic swap. The kernel takes a reference
                # on the new map and drops the old one's; our fd keeps the new one open.
                # It returns after an RCU grace period: no program still reads the old.
                bpfsys.map_update(
                    outer, _POLICY_KEY.pack(policy_id), _MAP_ID.pack(fd), bpfsys.BPF_ANY
                )
            except OSError as e:
                error = self._outer_error(policy_id, e)
                if error is e:
                    raise
                raise error from e
        except BaseException:
            os.close(fd)  # the kernel frees the never-published map with this last fd
            raise
        self._remember(policy_id, _Inner(map_id=info.id, fd=fd, max_entries=info.max_entries))

    def install_many(self, items: Sequence[InstallItem]) -> dict[int, MapFullError | OSError]:
        """:meth:`install` for many policies, with one outer-map write per 1,024 of them.

        Each item is ``(policy_id, cgroup_ids, max_entries)`` and is installed exactly as
        :meth:`install` would (a new map, filled, then swapped into the slot), all of a
        chunk's slots in one BPF_MAP_UPDATE_BATCH: one RCU grace period (~10 ms) for the
        chunk instead of one per policy. Items are independent: the ones that fail are
        returned ``{policy_id: error}`` (MapFullError for a full map, OSError otherwise)
        and left as they were; every other item is installed. Invalid arguments (IDs out
        of range, a policy twice) raise ValueError before anything changes.
        """
        checked: list[tuple[int, set[int], int]] = []
        seen: set[int] = set()
        for policy_id, cgroup_ids, max_entries in items:
            wanted = self._checked(policy_id, cgroup_ids, max_entries)
            if policy_id in seen:
                raise ValueError(f"policy {policy_id} is twice in one install_many")
            seen.add(policy_id)
            checked.append((policy_id, wanted, max_entries))
        self._outer()
        failures: dict[int, MapFullError | OSError] = {}
        for start in range(0, len(checked), _BATCH_CHUNK):
            self._install_chunk(checked[start : start + _BATCH_CHUNK], failures)
        return failures

    def _install_chunk(
        self,
        chunk: Sequence[tuple[int, set[int], int]],
        failures: dict[int, MapFullError | OSError],
    ) -> None:
        # Inner maps made but not (yet) published: their fds are ours to close. Publishing
        # hands an fd to the fd cache (which may close it at once, when full).
        made: dict[int, tuple[int, bpfsys.MapInfo]] = {}  # policy ID -> (fd, its info)
        try:
            for policy_id, wanted, max_entries in chunk:
                try:
                    fd = self._new_inner(policy_id, wanted, max_entries)
                except (MapFullError, OSError) as e:
                    failures[policy_id] = e
                    continue
                try:
                    info = bpfsys.map_info(fd)
                except BaseException:
                    os.close(fd)
                    raise
                made[policy_id] = (fd, info)
            try:
                self._cover(c for _, wanted, _ in chunk for c in wanted)
            except OSError as e:
                for policy_id in made:
                    failures[policy_id] = e
                return
            self._publish(made, failures)
        finally:
            for fd, _ in made.values():
                os.close(fd)

    def _publish(
        self,
        made: dict[int, tuple[int, bpfsys.MapInfo]],
        failures: dict[int, MapFullError | OSError],
    ) -> None:
        """Put the inner maps in their slots, batch by batch, past any failing element.

        Removes from ``made`` every map it published (its fd now belongs to the cache).
        """
        outer = self._outer()
        pending = list(made)
        while pending:
            keys = b"".join(_POLICY_KEY.pack(policy_id) for policy_id in pending)
            values = b"".join(_MAP_ID.pack(made[policy_id][0]) for policy_id in pending)
            failed: bpfsys.BatchError | None = None
            try:
                bpfsys.map_update_batch(
                    outer, keys, values, key_size=_POLICY_KEY.size, value_size=_MAP_ID.size
                )
                done = len(pending)
            except bpfsys.BatchError as e:
                done, failed = e.done, e
            if failed is not None and done == 0 and failed.errno in _NO_BATCH_ERRNOS:
                self._publish_one_by_one(pending, made, failures)
                return
            for policy_id in pending[:done]:
                fd, info = made.pop(policy_id)
                self._remember(policy_id, _Inner(info.id, fd, info.max_entries))
            if failed is None:
                return
            policy_id = pending[done]
            failures[policy_id] = self._outer_error(policy_id, failed)
            pending = pending[done + 1 :]

    def _publish_one_by_one(
        self,
        pending: Sequence[int],
        made: dict[int, tuple[int, bpfsys.MapInfo]],
        failures: dict[int, MapFullError | OSError],
    ) -> None:
        """For kernels without batch operations on a hash-of-maps."""
        outer = self._outer()
        for policy_id in pending:
            fd, info = made[policy_id]
            try:
                bpfsys.map_update(outer, _POLICY_KEY.pack(policy_id), _MAP_ID.pack(fd))
            except OSError as e:
                failures[policy_id] = self._outer_error(policy_id, e)
                continue
            del made[policy_id]
            self._remember(policy_id, _Inner(info.id, fd, info.max_entries))

    def _insert(
        self, fd: int, policy_id: int, cgroup_id: int, max_entries: int, *, map_id: int | None
    ) -> None:
        try:
            bpfsys.map_update(fd, _CGROUP_KEY.pack(cgroup_id), _PRESENT, bpfsys.BPF_ANY)
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                where = "new inner map" if map_id is None else f"inner map id {map_id}"
                raise MapFullError(
                    f"policy {policy_id}: {where} (max_entries {max_entries}) cannot take "
                    f"cgroup {cgroup_id} ({bpfsys.errno_name(e.errno)})"
                ) from e
            raise

    def update(self, policy_id: int, *, add: Collection[int], remove: Collection[int]) -> None:
        """Change a policy's inner map in place.

        Removals go first so that an update which swaps IDs works on a full map. If an add
        raises :class:`MapFullError`, the removals and earlier adds have been applied
        (each cgroup is either in the map or not; the engine reads back and rebuilds).
        Raises :class:`FileNotFoundError` (an OSError, ENOENT) if the policy has no inner
        map: ``install`` it first.
        """
        _check_policy_id(policy_id)
        for cgroup_id in (*add, *remove):
            _check_cgroup_id(cgroup_id)
        inner = self._inner(policy_id)
        if inner is None:
            raise OSError(
                errno.ENOENT,
                f"update policy {policy_id}: no inner map in {self._pin_path} (install it first)",
            )
        for cgroup_id in remove:
            bpfsys.map_delete(inner.fd, _CGROUP_KEY.pack(cgroup_id))
        self._cover(add)
        for cgroup_id in add:
            self._insert(inner.fd, policy_id, cgroup_id, inner.max_entries, map_id=inner.map_id)

    def delete(self, policy_id: int) -> None:
        """Remove the policy's slot; a policy that is not there is not an error."""
        _check_policy_id(policy_id)
        bpfsys.map_delete(self._outer(), _POLICY_KEY.pack(policy_id))
        # Our cached fd is the last userspace reference; closing it lets the kernel free
        # the inner map once running BPF programs are done with it (after RCU).
        self._forget(policy_id)

    def delete_many(self, policy_ids: Iterable[int]) -> dict[int, OSError]:
        """:meth:`delete` for many policies, with one outer-map write per 1,024 of them.

        Absent policies are not an error (they are skipped before the batch: a missing key
        would stop a kernel batch). Returns ``{policy_id: error}`` for slots that could
        not be deleted; every other one is gone, and on return no BPF program still uses
        its inner map (the kernel waited for one grace period per batch), so its policy
        ID may be handed out again.
        """
        wanted = list(dict.fromkeys(policy_ids))
        for policy_id in wanted:
            _check_policy_id(policy_id)
        outer = self._outer()
        present = [p for p in wanted if bpfsys.map_lookup(outer, _POLICY_KEY.pack(p), _MAP_ID.size)]
        failures: dict[int, OSError] = {}
        for start in range(0, len(present), _BATCH_CHUNK):
            pending = present[start : start + _BATCH_CHUNK]
            while pending:
                keys = b"".join(_POLICY_KEY.pack(p) for p in pending)
                try:
                    bpfsys.map_delete_batch(outer, keys, key_size=_POLICY_KEY.size)
                    break
                except bpfsys.BatchError as e:
                    if e.done == 0 and e.errno in _NO_BATCH_ERRNOS:
                        for policy_id in pending:
                            try:
                                bpfsys.map_delete(outer, _POLICY_KEY.pack(policy_id))
                            except OSError as one:
                                failures[policy_id] = one
                        break
                    if e.errno != errno.ENOENT:  # gone meanwhile is what we wanted
                        failures[pending[e.done]] = e
                    pending = pending[e.done + 1 :]
        for policy_id in wanted:
            if policy_id not in failures:
                self._forget(policy_id)
        return failures

    def contains(self, policy_id: int, cgroup_id: int) -> bool:
        """Whether the policy's inner map holds ``cgroup_id``: the first lookup a BPF program
        makes (programs also match cgroups below it, see :mod:`tpfilter.descendants`)."""
        inner = self._inner(policy_id)
        return inner is not None and (
            bpfsys.map_lookup(inner.fd, _CGROUP_KEY.pack(cgroup_id), 1) is not None
        )

    def usage(self) -> list[MapUsage]:
        result: list[MapUsage] = []
        for policy_id in sorted(self._policy_ids()):
            inner = self._inner(policy_id)
            if inner is None:
                continue
            result.append(
                MapUsage(
                    policy_id=policy_id,
                    map_id=inner.map_id,
                    max_entries=inner.max_entries,
                    entries=len(self._cgroup_ids(inner)),
                    memlock=bpfsys.memlock(inner.fd),
                )
            )
        return result

    # -- lifetime -----------------------------------------------------------------------

    def outer_memlock(self) -> int:
        """Kernel memory of the outer map itself (its buckets and slots)."""
        return bpfsys.memlock(self._outer())

    def close(self) -> None:
        """Release every fd. The pinned maps stay in the kernel (that is the point)."""
        for policy_id in list(self._inners):
            self._forget(policy_id)
        if self._outer_fd >= 0:
            os.close(self._outer_fd)
            self._outer_fd = -1
        if self._levels_fd >= 0:
            os.close(self._levels_fd)
            self._levels_fd = -1
        own: CgroupFsLevels | None = getattr(self, "_own_resolver", None)
        if own is not None:
            own.close()

    def remove_pins(self) -> None:
        """Unpin the outer map (and drop the pin dir if empty): for tests and uninstall.

        The maps live on while fds or loaded BPF programs hold them; after that the
        kernel frees the outer map and with it every inner map.
        """
        self._pin_path.unlink(missing_ok=True)
        self._levels_path.unlink(missing_ok=True)
        try:
            self._pin_dir.rmdir()
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
                raise

    def __enter__(self) -> PinnedFilterMaps:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A safety net for fds, not the way to release them: call close(). Never raise
        # from here (e.g. at interpreter shutdown).
        if getattr(self, "_outer_fd", -1) >= 0:
            with contextlib.suppress(Exception):
                self.close()


# -- feature probe ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelSupport:
    """What this kernel and machine offer tpfilter's maps; ``reason`` says what is missing."""

    bpf_maps: bool  # BPF_MAP_CREATE works (root / CAP_BPF, bpf(2) present)
    no_prealloc: bool  # a BPF_F_NO_PREALLOC hash map can be made
    hash_of_maps: bool  # a no-prealloc hash-of-maps with a no-prealloc inner template
    bpffs: bool  # the pin root is a mounted bpffs
    libbcc: bool  # libbcc.so.0 loads (PinnedFilterMaps uses it for map operations)
    reason: str | None  # None when everything is there

    @property
    def ok(self) -> bool:
        return self.reason is None


def _is_bpffs(path: Path) -> bool:
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return False
    target = os.path.realpath(path)
    return any(
        len(m) >= 3 and m[2] == "bpf" and (target + "/").startswith(m[1].rstrip("/") + "/")
        for m in mounts
    )


def probe(pin_root: Path = Path("/sys/fs/bpf")) -> KernelSupport:
    """Try, with throwaway maps, what :class:`PinnedFilterMaps` needs. Never raises."""
    reasons: list[str] = []
    try:
        bpfsys.libbcc()
        have_bcc = True
    except OSError as e:
        have_bcc = False
        reasons.append(f"libbcc.so.0 does not load: {e}")
    bpffs = _is_bpffs(pin_root)
    if not bpffs:
        reasons.append(f"{pin_root} is not a mounted bpffs (mount -t bpf bpf {pin_root})")
    maps = no_prealloc = hash_of_maps = False
    if have_bcc:
        fds: list[int] = []
        try:
            fds.append(
                bpfsys.create_map(
                    bpfsys.BPF_MAP_TYPE_HASH,
                    name="tpf_probe",
                    key_size=8,
                    value_size=1,
                    max_entries=1,
                    flags=0,
                )
            )
            maps = True
            fds.append(
                bpfsys.create_map(
                    bpfsys.BPF_MAP_TYPE_HASH,
                    name="tpf_probe_np",
                    key_size=8,
                    value_size=1,
                    max_entries=1,
                    flags=bpfsys.BPF_F_NO_PREALLOC,
                )
            )
            no_prealloc = True
            fds.append(
                bpfsys.create_map_in_map(
                    bpfsys.BPF_MAP_TYPE_HASH_OF_MAPS,
                    name="tpf_probe_hom",
                    key_size=4,
                    max_entries=1,
                    flags=bpfsys.BPF_F_NO_PREALLOC,
                    inner_map_fd=fds[-1],
                )
            )
            hash_of_maps = True
        except OSError as e:
            reasons.append(f"BPF map creation failed: {e}")
        finally:
            for fd in fds:
                os.close(fd)
    return KernelSupport(
        bpf_maps=maps,
        no_prealloc=no_prealloc,
        hash_of_maps=hash_of_maps,
        bpffs=bpffs,
        libbcc=have_bcc,
        reason="; ".join(reasons) or None,
    )
