"""Helpers shared by the real-kernel tests (fixtures built on them are in conftest.py).

Everything a test makes in the kernel gets a unique name starting with ``tpf-`` (pin dirs
under /sys/fs/bpf, cgroups under the cgroup v2 mount) and is removed by whoever made it,
whatever the test did, so tests never see each other's state and leave nothing behind.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tpfilter import bpfsys
from tpfilter.bpfmaps import PinnedFilterMaps, probe
from tpfilter.bpfsrc import bcc_source
from tpfilter.cgroups import CgroupMountError, find_cgroup2_mount
from tpfilter.indexmap import PinnedCandidateIndex
from tpfilter.indexsync import IndexKeeper
from tpfilter.interfaces import ContainerRef, InnerMapState
from tpfilter.models import Policy, parse_policy
from tpfilter.pods import Pod, parse_pod
from tpfilter_dev import contain
from tpfilter_dev.cgroupfs import remove_cgroup_tree

BPF_ROOT = Path("/sys/fs/bpf")
BPF_DIR = Path(__file__).parent / "bpf"
CHECK_EXEC = BPF_DIR / "check_exec.c"  # records policy_filter_check() for IDs 0..4
KILL_EXEC = BPF_DIR / "kill_exec.c"  # SIGKILL on exec when policy 1 applies
POLICIES = range(0, 5)  # check_exec.c's default TPF_TEST_MAX_POLICY is 4


def unique_name(prefix: str = "tpf-test") -> str:
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# -- skipping ---------------------------------------------------------------------------------


def cgroup2_mount() -> Path | None:
    """The cgroup v2 mount point (a mount of the hierarchy's root preferred), if any."""
    try:
        return find_cgroup2_mount()
    except (OSError, CgroupMountError):
        return None


def skip_reason(
    needs_root_to: str, *, cgroup2: bool = False, hierarchy_root: bool = False, bcc: bool = False
) -> str | None:
    """Why the kernel tests of a module cannot run here, or None.

    Always: root and what PinnedFilterMaps needs (probe); with ``cgroup2``, a cgroup v2
    mount, and with ``hierarchy_root`` too, one of the hierarchy's root (not a cgroup
    namespace's view: cgroup levels are counted from it); with ``bcc``, the bcc bindings
    and the kernel headers it compiles against.
    """
    if os.geteuid() != 0:
        return f"needs root to {needs_root_to}"
    support = probe(BPF_ROOT)
    if not support.ok:
        return f"kernel/machine lacks: {support.reason}"
    mount = cgroup2_mount()
    if (cgroup2 or hierarchy_root) and mount is None:
        return "no cgroup v2 filesystem mounted"
    if hierarchy_root and mount is not None and cgroup_id(mount) != 1:
        return f"{mount} is not the root of the cgroup v2 hierarchy (cgroup namespace)"
    if bcc:
        try:
            import bcc as _bcc  # noqa: F401
        except ImportError:
            return "bcc Python bindings (Debian python3-bpfcc) not importable"
        build = Path("/lib/modules") / os.uname().release / "build"
        if not build.exists():
            return f"bcc needs kernel headers at {build}"
    return None


def kernel_marks(reason: str | None) -> list[pytest.MarkDecorator]:
    """``pytestmark`` of a kernel test module: marked ``kernel``, skipped for ``reason``."""
    return [pytest.mark.kernel, pytest.mark.skipif(reason is not None, reason=reason or "")]


# -- pin dirs ---------------------------------------------------------------------------------


def remove_pin_dir(path: Path) -> None:
    """Unpin everything in a pin dir and remove it (pins are files on the bpffs)."""
    if not path.exists():
        return
    for entry in path.iterdir():
        entry.unlink()
    path.rmdir()


@contextlib.contextmanager
def scratch_pin_dir(prefix: str = "tpf-test") -> Iterator[Path]:
    """A unique pin dir path (not created: PinnedFilterMaps does that), removed after."""
    path = BPF_ROOT / unique_name(prefix)
    try:
        yield path
    finally:
        remove_pin_dir(path)


# -- cgroups ----------------------------------------------------------------------------------


def cgroup_id(path: Path) -> int:
    """The directory's inode number: the ID bpf_get_current_cgroup_id() returns."""
    return os.stat(path).st_ino


class CgroupTree:
    """A scratch cgroup ``<mount>/<prefix>-<pid>-<random>`` (made at once) to build trees
    in; ``close`` removes it with everything below, whoever made it, deepest first (with
    ``move_to``, after moving the processes still in them there)."""

    def __init__(
        self, mount: Path, prefix: str = "tpf-test", *, move_to: Path | None = None
    ) -> None:
        self.mount = mount
        self.base = mount / unique_name(prefix)
        self._move_to = move_to
        self.base.mkdir()

    def make(self, relative: str) -> tuple[Path, int]:
        """``base/relative`` (what is missing of it): (directory, cgroup ID)."""
        path = self.base / relative
        path.mkdir(parents=True, exist_ok=True)
        return path, cgroup_id(path)

    def close(self) -> None:
        remove_cgroup_tree(self.base, move_to=self._move_to)


class Cgroups:
    """Makes empty cgroups right under the cgroup v2 mount: (directory, cgroup ID)."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self._made: list[Path] = []

    def __call__(self) -> tuple[Path, int]:
        path = self.mount / unique_name()
        path.mkdir()
        self._made.append(path)
        return path, cgroup_id(path)

    def close(self) -> None:
        while self._made:
            remove_cgroup_tree(self._made.pop())


def run_in_cgroup(
    argv: Sequence[str | Path],
    cgroup: Path | None,
    nested: Sequence[str] = (),
    *,
    check: bool = False,
    pid_ns: str = "new",
) -> int:
    """Run ``argv`` as a process of the container whose cgroup is ``cgroup``, started as a
    runtime starts one (``tpfilter_dev.contain``): in a PID namespace of its own
    (``pid_ns="node"``: the node's, as a hostPID pod's or the runtime's own process), and
    with ``nested``, moved down into ``cgroup/nested[0]/nested[1]/...`` (made if missing)
    before exec. ``cgroup`` None: a host process in the caller's cgroup. Returns the exit
    status (-9: SIGKILL)."""
    if cgroup is None:
        command = [str(a) for a in argv]
    else:
        command = contain.argv(cgroup, argv, pid_ns=pid_ns, nested=nested)
    return subprocess.run(command, check=check).returncode


def binary_copies(where: Path) -> dict[str, str]:
    """Copies of the node's python (``py``) and dash (``sh``) in ``where``: executables
    whose paths differ from the originals' while they behave the same (matchBinaries)."""
    out = {}
    for name, source in (("py", "/usr/bin/python3"), ("sh", "/bin/sh")):
        target = where / f"tpf-{name}-copy"
        shutil.copy2(os.path.realpath(source), target)
        out[name] = str(target)
    return out


# -- BPF maps and programs --------------------------------------------------------------------


def map_exists(map_id: int) -> bool:
    try:
        os.close(bpfsys.map_fd_by_id(map_id))
    except FileNotFoundError:
        return False
    return True


def wait_maps_gone(*map_ids: int, timeout: float = 5.0) -> bool:
    """The kernel frees a map from a map-of-maps after an RCU grace period: poll until
    none of ``map_ids`` exists, for at most ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    while any(map_exists(m) for m in map_ids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def inner_map_ids(maps: PinnedFilterMaps) -> dict[int, int]:
    """{policy ID: kernel map ID of its inner map}."""
    return {u.policy_id: u.map_id for u in maps.usage()}


class Programs:
    """Test BPF programs compiled with bcc exactly as the agent's are
    (tpfilter.bpfsrc.bcc_source) and attached; ``close`` detaches every one left."""

    def __init__(self) -> None:
        self._loaded: list[Any] = []

    def load(self, source: Path, pin_dir: Path) -> Any:
        from bcc import BPF

        src = bcc_source(source, pin_dir=pin_dir)
        bpf = BPF(text=src.text.encode(), cflags=src.cflags)
        self._loaded.append(bpf)
        return bpf

    def unload(self, bpf: Any) -> None:
        self._loaded.remove(bpf)
        bpf.cleanup()

    def close(self) -> None:
        while self._loaded:
            self._loaded.pop().cleanup()


def answers(bpf: Any, cgroup_id: int) -> dict[int, bool]:
    """What check_exec.c recorded policy_filter_check() answered, per policy in
    :data:`POLICIES`, for the last exec in the cgroup (asserts there was one)."""
    got = {
        int(k.policy_id): int(v.value) == 2
        for k, v in bpf[b"check_results"].items()
        if int(k.cgroup_id) == cgroup_id
    }
    assert set(got) == set(POLICIES), f"no exec recorded for cgroup {cgroup_id}: {got}"
    return got


def expect(true_for: set[int]) -> dict[int, bool]:
    """Policy 0 (no podSelector) always applies; the others as listed."""
    return {p: p == 0 or p in true_for for p in POLICIES}


def observe(
    bpf: Any, *cgroups: tuple[Path, int], pid_ns: str = "new", nested: Sequence[str] = ()
) -> list[dict[int, bool]]:
    """What check_exec.c recorded for one exec of /bin/true in each cgroup (below it in
    ``nested``, see :func:`run_in_cgroup`), after forgetting older answers."""
    bpf[b"check_results"].clear()
    for path, _ in cgroups:
        run_in_cgroup(["/bin/true"], path, nested, check=True, pid_ns=pid_ns)
    return [
        answers(bpf, cgroup_id(path.joinpath(*nested)) if nested else known)
        for path, known in cgroups
    ]


# -- engine inputs: policies, pods, a finder ---------------------------------------------------


class StaticFinder:
    """A CgroupFinder over a fixed {container ID: cgroup ID} (real cgroups made by the test)."""

    def __init__(self, cgroups: dict[str, int]) -> None:
        self.cgroups = cgroups

    def cgroup_id(self, container: ContainerRef) -> int | None:
        return self.cgroups.get(container.container_id)

    def forget(self, container: ContainerRef) -> None:
        pass


def cluster_policy(name: str, spec: dict[str, Any], uid: str | None = None) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": uid or f"uid-{name}"},
            "spec": spec,
        }
    )


def running_pod(
    name: str, container_id: str, *, labels: dict[str, str] | None = None, host_pid: bool = False
) -> Pod:
    """Pod ``ns/name`` with one running container ``main`` of ID ``container_id``."""
    return parse_pod(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "uid": f"pod-{name}",
                "labels": labels or {},
            },
            "spec": {"hostPID": host_pid},
            "status": {
                "qosClass": "BestEffort",
                "containerStatuses": [
                    {
                        "name": "main",
                        "image": "busybox:1",
                        "containerID": container_id,
                        "state": {"running": {}},
                    }
                ],
            },
        }
    )


# -- the policy programs ----------------------------------------------------------------------


class IndexedMaps:
    """The filter maps and the candidate index, written as the engine writes them (the
    index grown before an inner map, trimmed after), for tests that set maps by hand."""

    def __init__(self, maps: PinnedFilterMaps, index: PinnedCandidateIndex) -> None:
        self.maps, self.index = maps, index
        self._keeper = IndexKeeper(index)

    def _write(self, desired: dict[int, frozenset[int]], write: Any) -> None:
        self._keeper.before(desired)
        write()
        assert self._keeper.after(inner_maps_ok=True) is None

    def _desired(self) -> dict[int, frozenset[int]]:
        return {pid: state.cgroup_ids for pid, state in self.maps.read_all().items()}

    def install(self, policy_id: int, cgroup_ids: Any, *, max_entries: int) -> None:
        desired = {**self._desired(), policy_id: frozenset(cgroup_ids)}
        self._write(
            desired, lambda: self.maps.install(policy_id, cgroup_ids, max_entries=max_entries)
        )

    def install_many(self, items: Sequence[tuple[int, Any, int]]) -> None:
        desired = {**self._desired(), **{pid: frozenset(ids) for pid, ids, _ in items}}
        self._write(desired, lambda: self._check(self.maps.install_many(items)))

    @staticmethod
    def _check(failures: Any) -> None:
        assert not failures, failures

    def delete(self, policy_id: int) -> None:
        desired = self._desired()
        desired.pop(policy_id, None)
        self._write(desired, lambda: self.maps.delete(policy_id))

    def delete_many(self, policy_ids: Sequence[int]) -> None:
        desired = self._desired()
        for pid in policy_ids:
            desired.pop(pid, None)
        self._write(desired, lambda: self._check(self.maps.delete_many(policy_ids)))

    def read_all(self) -> dict[int, InnerMapState]:
        return dict(self.maps.read_all())

    def usage(self) -> Any:
        return self.maps.usage()


@dataclass
class Env:
    """A started ProgramManager, the filter maps it reads (with the candidate index), its
    events and the pods it resolves cgroup IDs to."""

    manager: Any
    maps: IndexedMaps
    events: io.StringIO
    pods: dict[int, tuple[str, str, str]]
    root: Path  # unique directory of this module's binaries

    def lines(self) -> list[dict[str, Any]]:
        self.manager.poll_events(50)
        out = [json.loads(line) for line in self.events.getvalue().splitlines() if line]
        return out

    def clear_events(self) -> None:
        self.manager.poll_events(0)
        self.events.seek(0)
        self.events.truncate()


@contextlib.contextmanager
def program_env(*, probe_lsm: bool = False) -> Iterator[Env]:
    """A started ProgramManager on a unique pin dir, its filter maps, an event buffer
    (``probe_lsm``: probe BPF LSM too, which Override on kprobes needs)."""
    from tpfilter.programs import ProgramManager

    root = Path("/tmp") / f"tpf-test-bin-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        with scratch_pin_dir("tpf-test-prog") as pin_dir:
            events = io.StringIO()
            pods: dict[int, tuple[str, str, str]] = {}
            maps = IndexedMaps(
                PinnedFilterMaps(pin_dir=pin_dir), PinnedCandidateIndex(pin_dir=pin_dir)
            )
            manager = ProgramManager(
                pin_dir=pin_dir,
                node_name="test-node",
                resolve=pods.get,
                events_out=events,
                probe_lsm=probe_lsm,
            )
            try:
                manager.start(events_thread=False)
                assert manager.available, manager._unavailable
                yield Env(manager, maps, events, pods, root)
            finally:
                manager.close()
                maps.maps.close()
                maps.index.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def emptied_after(env: Env) -> Iterator[Env]:
    """The env, emptied of policies, filter maps and events after the test."""
    env.clear_events()
    try:
        yield env
    finally:
        env.manager.sync([])
        env.maps.delete_many(list(env.maps.read_all()))
        env.pods.clear()
