"""The pinned BPF hash-of-maps that says which cgroups each policy applies to.

Layout (the contract of :class:`tpfilter.interfaces.FilterMaps`)::

    <pin_dir>/policy_filter_maps        BPF_MAP_TYPE_HASH_OF_MAPS, BPF_F_NO_PREALLOC
        key   u32 policy ID             (0 is reserved: "no podSelector, every process")
        value inner map                 BPF_MAP_TYPE_HASH, BPF_F_NO_PREALLOC
                  key   u64 cgroup ID   (bpf_get_current_cgroup_id() of the container)
                  value u8  1

Why it looks like this:

* Only the outer map is pinned. It is what BPF programs compiled later (with
  ``bpf/policy_filter.h``) and a restarted agent find by path; inner maps are reachable
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
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tpfilter import bpfsys
from tpfilter.interfaces import InnerMapState, MapFullError, MapUsage

__all__ = [
    "DEFAULT_MAX_POLICIES",
    "DEFAULT_PIN_DIR",
    "OUTER_PIN_NAME",
    "KernelSupport",
    "PinnedFilterMaps",
    "PinnedMapMismatchError",
    "probe",
]

log = logging.getLogger(__name__)

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/tpfilter")
OUTER_PIN_NAME = "policy_filter_maps"
DEFAULT_MAX_POLICIES = 16384

_OUTER_MAP_NAME = "tpf_policy_map"  # kernel map names are at most 15 characters
_POLICY_KEY = struct.Struct("=I")  # host order: what the BPF program's u32 key is
_CGROUP_KEY = struct.Struct("=Q")
_MAP_ID = struct.Struct("=I")  # an outer value read from userspace is the inner map ID
_PRESENT = b"\x01"
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
# The kernel's two answers to "this map cannot take another element".
_FULL_ERRNOS = frozenset({errno.E2BIG, errno.ENOMEM})


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
    if not 0 < cgroup_id <= _U64_MAX:
        raise ValueError(f"cgroup ID must be in 1..{_U64_MAX}, got {cgroup_id}")


class PinnedFilterMaps:
    """:class:`~tpfilter.interfaces.FilterMaps` on the real kernel, pinned on a bpffs.

    Construction adopts ``pin_dir/policy_filter_maps`` if it exists (an agent restart loses
    nothing and re-creates nothing; ``max_policies`` is then the pinned map's, whatever was
    passed), else creates and pins it.
    """

    def __init__(
        self, *, pin_dir: Path = DEFAULT_PIN_DIR, max_policies: int = DEFAULT_MAX_POLICIES
    ) -> None:
        if not 0 < max_policies <= _U32_MAX:
            raise ValueError(f"max_policies must be positive, got {max_policies}")
        self._pin_dir = Path(pin_dir)
        self._pin_path = self._pin_dir / OUTER_PIN_NAME
        self._inners: dict[int, _Inner] = {}
        self._outer_fd = -1
        fd, adopted = self._open_or_create(max_policies)
        self._outer_fd = fd
        self._adopted = adopted
        try:
            info = bpfsys.map_info(fd)
            self._check_outer(info)
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

    def _open_or_create(self, max_policies: int) -> tuple[int, bool]:
        """(outer fd, adopted?). Loops once at most: losing a pin race means adopting."""
        for _ in range(2):
            try:
                return bpfsys.obj_get(self._pin_path), True
            except FileNotFoundError:
                pass
            fd = self._create_outer(max_policies)
            self._pin_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                bpfsys.obj_pin(fd, self._pin_path)
            except FileExistsError:
                # Another process pinned its map between our OBJ_GET and OBJ_PIN: use
                # theirs, so that there is exactly one outer map on the node.
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            return fd, False
        raise OSError(errno.EAGAIN, f"adopt or create {self._pin_path}: pin kept changing")

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
        self._inners[policy_id] = inner
        return inner

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
        return result

    def install(self, policy_id: int, cgroup_ids: Collection[int], *, max_entries: int) -> None:
        _check_policy_id(policy_id)
        if not 0 < max_entries <= _U32_MAX:
            raise ValueError(f"max_entries must be positive, got {max_entries}")
        wanted = set(cgroup_ids)
        for cgroup_id in wanted:
            _check_cgroup_id(cgroup_id)
        if len(wanted) > max_entries:
            # Checked up front: the kernel would say E2BIG only after we filled a map.
            raise MapFullError(
                f"policy {policy_id}: {len(wanted)} cgroup IDs do not fit in a new inner "
                f"map of max_entries {max_entries}"
            )
        outer = self._outer()
        fd = bpfsys.create_map(
            bpfsys.BPF_MAP_TYPE_HASH,
            name=f"tpf_p{policy_id}",
            key_size=_CGROUP_KEY.size,
            value_size=len(_PRESENT),
            max_entries=max_entries,
            flags=bpfsys.BPF_F_NO_PREALLOC,
        )
        try:
            # Fill before publishing: until the outer update below no BPF program can
            # reach this map, so it is never seen half-filled.
            for cgroup_id in wanted:
                self._insert(fd, policy_id, cgroup_id, max_entries, map_id=None)
            info = bpfsys.map_info(fd)
            try:
                # One update of the slot is the atomic swap. The kernel takes a reference
                # on the new map and drops the old one's; our fd keeps the new one open.
                # It returns after an RCU grace period: no program still reads the old.
                bpfsys.map_update(
                    outer, _POLICY_KEY.pack(policy_id), _MAP_ID.pack(fd), bpfsys.BPF_ANY
                )
            except OSError as e:
                if e.errno in _FULL_ERRNOS:
                    raise MapFullError(
                        f"policy {policy_id}: the outer map {self._pin_path} (max_entries "
                        f"{self._max_policies}) cannot take another policy "
                        f"({bpfsys.errno_name(e.errno)})"
                    ) from e
                raise
        except BaseException:
            os.close(fd)  # the kernel frees the never-published map with this last fd
            raise
        self._forget(policy_id)
        self._inners[policy_id] = _Inner(map_id=info.id, fd=fd, max_entries=info.max_entries)

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
        for cgroup_id in add:
            self._insert(inner.fd, policy_id, cgroup_id, inner.max_entries, map_id=inner.map_id)

    def delete(self, policy_id: int) -> None:
        """Remove the policy's slot; a policy that is not there is not an error."""
        _check_policy_id(policy_id)
        bpfsys.map_delete(self._outer(), _POLICY_KEY.pack(policy_id))
        # Our cached fd is the last userspace reference; closing it lets the kernel free
        # the inner map once running BPF programs are done with it (after RCU).
        self._forget(policy_id)

    def contains(self, policy_id: int, cgroup_id: int) -> bool:
        """Whether the policy's inner map holds ``cgroup_id``: the lookup a BPF program makes."""
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

    def remove_pins(self) -> None:
        """Unpin the outer map (and drop the pin dir if empty): for tests and uninstall.

        The maps live on while fds or loaded BPF programs hold them; after that the
        kernel frees the outer map and with it every inner map.
        """
        self._pin_path.unlink(missing_ok=True)
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
