"""The real CgroupFinder: container -> cgroup v2 ID by stat-ing computed paths.

Why it is shaped like this:

* The ID. On cgroup v2 ``bpf_get_current_cgroup_id()`` returns the kernfs node ID of the
  task's cgroup, and kernfs uses that ID as the directory's inode number on 64-bit kernels.
  So the ID is ``os.stat(dir).st_ino``: no bpf syscall, no file handle
  (shared/notes/machine.md; tests/kernel/test_cgroups_fs.py checks it against
  ``name_to_handle_at`` on the running kernel).
* No tree walks per event. Paths come from naming rules (:mod:`tpfilter.cgroup_paths`);
  only the *kubepods roots* are searched, by a bounded-depth scan of the cgroup mount, once,
  and again only when a lookup finds no pod directory in any known root (kubelet may have
  restarted with another ``--cgroup-root``), at most once per ``rescan_interval``.
* One stat per lookup in the steady state. The first container of a pod tries each root;
  where the pod was found is remembered, so its other containers cost one stat. Kernfs keeps
  a directory's ``st_nlink`` at 2 + number of child cgroups, so the same stat tells whether a
  systemd scope has children at all; only then are crun's sub-cgroup names stat-ed.
* Cached answers are re-validated on every call (see :meth:`CgroupFsFinder.lookup`).
* Known window: crun under the systemd driver creates the scope (holding crun itself) and
  then its ``container`` sub-cgroup. With CRI-O both happen inside CreateContainer, before
  kubelet can report the ID; with containerd the task is created at StartContainer, after
  the ID is known, so a lookup landing in that window returns the scope. The next lookup of
  the same container corrects it (the validation stat sees the scope gained a child).
* "Not there (yet)" is ``None``, never an exception: the engine retries. Exceptions are
  kept for input that can never name a cgroup (unknown runtime scheme, malformed IDs).

Thread-safe: kopf may run sync handlers in worker threads, so one lock guards the caches;
every critical section is a few stats (a discovery scan at most once per interval).

Where the agent itself runs in a container, /proc/self/mountinfo shows the container's own
cgroup namespace; deploy with the host's cgroup namespace or pass ``cgroup_root`` (the host
cgroup2 mount as seen by the agent) explicitly.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tpfilter.cgroup_paths import (
    DEFAULT_SYSTEMD_SUBGROUPS,
    CgroupDriver,
    RuntimeContainerId,
    check_subgroups,
    container_dir_name,
    parse_cgroup2_mounts,
    parse_container_id,
    parse_qos_class,
    pod_dir,
    root_driver,
)
from tpfilter.interfaces import CgroupFinder, ContainerRef

log = logging.getLogger(__name__)

MOUNTINFO = Path("/proc/self/mountinfo")
DEFAULT_SCAN_DEPTH = 3
DEFAULT_RESCAN_INTERVAL = 30.0  # seconds


class CgroupMountError(RuntimeError):
    """No cgroup v2 hierarchy is mounted (or the given root is not a directory)."""


def find_cgroup2_mount(mountinfo: Path = MOUNTINFO) -> Path:
    """The mount point of the cgroup v2 hierarchy, from ``mountinfo``.

    /sys/fs/cgroup on pure v2 hosts, /sys/fs/cgroup/unified on hybrid ones. A mount of the
    hierarchy's root ("/") is preferred over one of a sub-tree (a cgroup namespace view).
    """
    mounts = parse_cgroup2_mounts(mountinfo.read_text())
    if not mounts:
        raise CgroupMountError(f"no cgroup2 filesystem in {mountinfo}")
    full = [m for m in mounts if m.root == "/"]
    return Path((full or mounts)[0].mount_point)


@dataclass(frozen=True, slots=True)
class KubepodsRoot:
    """A directory kubelet made for all pods, and the cgroup driver its name implies."""

    path: Path
    driver: CgroupDriver

    @classmethod
    def of(cls, path: Path) -> KubepodsRoot:
        driver = root_driver(path.name)
        if driver is None:
            raise ValueError(
                f"{path} is not a kubepods root: the basename must be kubepods, "
                f"kubepods.slice or <parent>-kubepods.slice"
            )
        return cls(path, driver)


def discover_kubepods_roots(
    base: Path, *, max_depth: int = DEFAULT_SCAN_DEPTH
) -> tuple[KubepodsRoot, ...]:
    """Kubepods roots at most ``max_depth`` levels below ``base``, shallowest first.

    Breadth-first with ``os.scandir`` (kernfs fills d_type, so no stat per entry), never
    descending into a root found (pods live there, possibly thousands). Depth 1 is
    ``base/kubepods.slice``; depth 2 covers kind's ``kubelet.slice/kubelet-kubepods.slice``
    and ``kubelet/kubepods``. Unreadable or vanishing directories are skipped.
    """
    found: list[KubepodsRoot] = []
    level = [base]
    for _depth in range(max_depth):
        below: list[Path] = []
        for directory in level:
            try:
                with os.scandir(directory) as it:
                    names = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
            except OSError:
                continue
            for name in names:
                driver = root_driver(name)
                if driver is not None:
                    found.append(KubepodsRoot(directory / name, driver))
                else:
                    below.append(directory / name)
        level = below
    return tuple(found)


@dataclass(frozen=True, slots=True)
class CgroupMatch:
    """A container's cgroup: its directory and ID (the directory's inode number)."""

    path: Path
    cgroup_id: int


@dataclass(frozen=True, slots=True)
class _CachedContainer:
    container_dir: Path  # the runtime's directory; the match may be a sub-cgroup of it
    driver: CgroupDriver
    match: CgroupMatch


@dataclass(slots=True)
class _PodLocation:
    pod_dir: Path
    driver: CgroupDriver
    # Containers looked up through this pod; the entry goes when the last is forgotten.
    containers: set[ContainerRef] = field(default_factory=set)


class CgroupFsFinder:
    """CgroupFinder over the cgroup v2 filesystem (see the module docstring)."""

    def __init__(
        self,
        *,
        cgroup_root: str | os.PathLike[str] | None = None,
        kubepods_roots: Sequence[str | os.PathLike[str]] | None = None,
        scan_depth: int = DEFAULT_SCAN_DEPTH,
        rescan_interval: float = DEFAULT_RESCAN_INTERVAL,
        systemd_subgroups: Sequence[str] = DEFAULT_SYSTEMD_SUBGROUPS,
        mountinfo: str | os.PathLike[str] = MOUNTINFO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            cgroup_root: the directory under which kubepods roots are discovered; default
                the cgroup2 mount point found in ``mountinfo``. Tests pass a scratch
                directory inside the real mount here.
            kubepods_roots: explicit kubepods roots (absolute, or relative to
                ``cgroup_root``); when given there is no discovery at all.
            scan_depth: how many levels below ``cgroup_root`` discovery looks.
            rescan_interval: least seconds between two discoveries (lookup misses only).
            systemd_subgroups: crun sub-cgroup names to look for inside a systemd scope.
            mountinfo: where to find the cgroup2 mount when ``cgroup_root`` is not given.
            clock: monotonic seconds, injectable for tests.
        """
        if scan_depth < 1:
            raise ValueError("scan_depth must be at least 1")
        if rescan_interval < 0:
            raise ValueError("rescan_interval must not be negative")
        self._base = (
            Path(cgroup_root) if cgroup_root is not None else find_cgroup2_mount(Path(mountinfo))
        )
        if not self._base.is_dir():
            raise CgroupMountError(f"cgroup root {self._base} is not a directory")
        self._scan_depth = scan_depth
        self._rescan_interval = rescan_interval
        self._subgroups = check_subgroups(systemd_subgroups)
        self._clock = clock
        self._lock = threading.Lock()
        self._containers: dict[ContainerRef, _CachedContainer] = {}
        self._pods: dict[tuple[str, str], _PodLocation] = {}
        self._last_scan: float | None = None
        self._explicit = kubepods_roots is not None
        self._roots: tuple[KubepodsRoot, ...] = ()
        if kubepods_roots is not None:
            self._roots = tuple(KubepodsRoot.of(self._base / p) for p in kubepods_roots)

    # -- public API ------------------------------------------------------------------------

    @property
    def cgroup_root(self) -> Path:
        return self._base

    def roots(self) -> tuple[KubepodsRoot, ...]:
        """The kubepods roots in use (discovering them first if never done)."""
        with self._lock:
            self._ensure_scanned()
            return self._roots

    def rediscover(self) -> tuple[KubepodsRoot, ...]:
        """Scan for kubepods roots now, ignoring the rate limit (no-op for explicit roots)."""
        with self._lock:
            if not self._explicit:
                self._scan()
            return self._roots

    def cgroup_id(self, container: ContainerRef) -> int | None:
        match = self.lookup(container)
        return None if match is None else match.cgroup_id

    def lookup(self, container: ContainerRef) -> CgroupMatch | None:
        """The container's cgroup directory and ID, or None while it does not exist.

        An empty ``container_id`` (kubelet reports "" before the runtime created the
        container) is None. Raises CgroupPathError / UnsupportedRuntimeError for IDs,
        QoS classes or pod UIDs that can never name a cgroup (such a ref is never cached,
        so the fast path below needs no parsing).

        A cached answer is re-validated on every call by stat-ing the cached container
        directory and comparing the inode (plus, only when that scope has child cgroups,
        one stat per crun sub-cgroup name). Why always: a cgroup that was removed and made
        again under the same name has a new ID, and a stale ID in the BPF map means the
        policy silently stops applying to that container; the same stat also notices a
        crun sub-cgroup that appeared after the scope was first seen. The price is one stat
        of a six-level kernfs path: measured on a 2-CPU VM, 6-11 us for the bare stat and
        2-4 us more for the whole call. The engine calls this per pod event, not per
        syscall, so trusting the cache for a TTL would save a few microseconds per event
        while opening a window in which a recreated cgroup goes unfiltered.
        """
        if not container.container_id:
            return None
        with self._lock:
            cached = self._containers.get(container)
            if cached is not None:  # the fast path: no parsing, one stat
                match = self._resolve(cached.container_dir, cached.driver)
                if match is not None:
                    if match != cached.match:
                        log.info("cgroup of %s changed: %s", container.container_id, match)
                        self._containers[container] = _CachedContainer(
                            cached.container_dir, cached.driver, match
                        )
                    return match
                del self._containers[container]  # gone: look again from the pod below
            return self._lookup_uncached(container)

    def forget(self, container: ContainerRef) -> None:
        with self._lock:
            self._containers.pop(container, None)
            pod_key = (container.pod_uid, container.qos_class)
            pod = self._pods.get(pod_key)
            if pod is not None:
                pod.containers.discard(container)
                if not pod.containers:
                    del self._pods[pod_key]

    def cache_sizes(self) -> tuple[int, int]:
        """(cached containers, remembered pod locations), for status output and tests."""
        with self._lock:
            return len(self._containers), len(self._pods)

    # -- internals (called with the lock held) ---------------------------------------------

    def _lookup_uncached(self, container: ContainerRef) -> CgroupMatch | None:
        rid = parse_container_id(container.container_id)
        qos = parse_qos_class(container.qos_class)
        pod_key = (container.pod_uid, container.qos_class)
        pod = self._pods.get(pod_key)
        if pod is not None:
            pod.containers.add(container)
            cdir = pod.pod_dir / container_dir_name(pod.driver, rid)
            match = self._resolve(cdir, pod.driver)
            if match is not None:
                self._containers[container] = _CachedContainer(cdir, pod.driver, match)
                return match
            if _is_dir(pod.pod_dir):
                return None  # the pod is there, the container not yet
            del self._pods[pod_key]  # the pod went (or moved): try every root again

        rel_pod_dirs: dict[str, Path] = {}  # per root basename, computed on demand

        def rel_pod_dir(root: KubepodsRoot) -> Path:
            name = root.path.name
            if name not in rel_pod_dirs:
                rel_pod_dirs[name] = Path(pod_dir(name, qos, container.pod_uid))
            return rel_pod_dirs[name]

        self._ensure_scanned()
        found_pod, match = self._search(container, rid, rel_pod_dir)
        if not found_pod and self._may_rescan():
            before = self._roots
            self._scan()
            if self._roots != before:
                found_pod, match = self._search(container, rid, rel_pod_dir)
        return match

    def _search(
        self,
        container: ContainerRef,
        rid: RuntimeContainerId,
        rel_pod_dir: Callable[[KubepodsRoot], Path],
    ) -> tuple[bool, CgroupMatch | None]:
        """Try every root; (whether the pod directory exists somewhere, the match)."""
        for root in self._roots:
            pdir = root.path / rel_pod_dir(root)
            cdir = pdir / container_dir_name(root.driver, rid)
            match = self._resolve(cdir, root.driver)
            if match is None and not _is_dir(pdir):
                continue
            self._pods[(container.pod_uid, container.qos_class)] = _PodLocation(
                pdir, root.driver, {container}
            )
            if match is not None:
                self._containers[container] = _CachedContainer(cdir, root.driver, match)
            return True, match
        return False, None

    def _resolve(self, container_dir: Path, driver: CgroupDriver) -> CgroupMatch | None:
        """The cgroup the container's processes are in, given the runtime's directory."""
        st = _stat_dir(container_dir)
        if st is None:
            return None
        # st_nlink == 2 + child directories on kernfs: a childless scope is the leaf. Any
        # other value (children, or a filesystem that does not count, nlink 1) means look.
        if driver is CgroupDriver.SYSTEMD and st.st_nlink != 2:
            for sub in self._subgroups:
                sub_st = _stat_dir(container_dir / sub)
                if sub_st is not None:
                    return CgroupMatch(container_dir / sub, sub_st.st_ino)
        return CgroupMatch(container_dir, st.st_ino)

    def _ensure_scanned(self) -> None:
        if not self._explicit and self._last_scan is None:
            self._scan()

    def _may_rescan(self) -> bool:
        if self._explicit:
            return False
        return self._last_scan is None or self._clock() - self._last_scan >= self._rescan_interval

    def _scan(self) -> None:
        roots = discover_kubepods_roots(self._base, max_depth=self._scan_depth)
        self._last_scan = self._clock()
        if roots != self._roots:
            if roots:
                log.info("kubepods roots under %s: %s", self._base, [str(r.path) for r in roots])
            else:
                log.warning("no kubepods root within %d levels of %s", self._scan_depth, self._base)
            self._roots = roots


def _stat_dir(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as err:  # e.g. EACCES: report, but a lookup still only says "not found"
        log.warning("cannot stat cgroup %s: %s", path, err)
        return None
    return st if stat.S_ISDIR(st.st_mode) else None


def _is_dir(path: Path) -> bool:
    return _stat_dir(path) is not None


if TYPE_CHECKING:  # mypy proves CgroupFsFinder satisfies the protocol the engine takes

    def _conforms(finder: CgroupFsFinder) -> CgroupFinder:
        return finder
