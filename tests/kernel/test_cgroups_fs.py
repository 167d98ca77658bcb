"""CgroupFsFinder against real cgroup v2 directories, as root.

Every test builds its kubelet-like tree inside one scratch cgroup made for it directly under
the cgroup v2 mount (``tpf-test-<pid>-<random>``) and gives that directory to the
finder as ``cgroup_root``, so discovery runs for real but never sees the host's kubepods
tree. Each answer is checked three ways: against ``os.stat(dir).st_ino``, against the
kernfs file handle from ``name_to_handle_at`` (the 64-bit cgroup ID the kernel hands to
``bpf_get_current_cgroup_id()``), and by moving a process into the cgroup and reading its
/proc/<pid>/cgroup. The fixture moves processes out and removes the tree deepest first.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernelkit import CgroupTree

from tpfilter.cgroup_paths import parse_cgroup2_mounts
from tpfilter.cgroups import CgroupFsFinder
from tpfilter.interfaces import ContainerRef

pytestmark = pytest.mark.kernel

UID = "7e1d2c3b-4a59-4687-9a0b-1c2d3e4f5a6b"
UID_ = UID.replace("-", "_")
CID = "0123456789abcdef" * 4
QOS = ["Guaranteed", "Burstable", "BestEffort"]


def _cgroup2_mount() -> tuple[Path, str] | None:
    try:
        mounts = parse_cgroup2_mounts(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return None
    full = [m for m in mounts if m.root == "/"] or mounts
    return (Path(full[0].mount_point), full[0].root) if full else None


MOUNT = _cgroup2_mount()


@pytest.fixture
def mount() -> tuple[Path, str]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates cgroups under the cgroup v2 mount")
    if MOUNT is None:
        pytest.skip("no cgroup v2 (cgroup2) filesystem mounted")
    return MOUNT


def _own_cgroup(mount_point: Path, mount_root: str) -> Path:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            rel = os.path.relpath(line[3:], mount_root)
            return mount_point if rel == "." else mount_point / rel
    raise AssertionError("no cgroup v2 line in /proc/self/cgroup")


@pytest.fixture
def scratch(mount: tuple[Path, str]) -> Iterator[Path]:
    """The test's scratch cgroup; removed deepest first, its processes moved back home."""
    mount_point, mount_root = mount
    try:
        tree = CgroupTree(mount_point, move_to=_own_cgroup(mount_point, mount_root))
    except OSError as err:
        pytest.skip(f"cannot create a cgroup under {mount_point}: {err}")
    try:
        yield tree.base
    finally:
        tree.close()


@pytest.fixture
def sleeper(mount: tuple[Path, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _kernfs_id(path: Path) -> int:
    """The cgroup ID from the kernfs file handle: what BPF helpers report for the cgroup."""

    class FileHandle(ctypes.Structure):
        _fields_ = (
            ("handle_bytes", ctypes.c_uint),
            ("handle_type", ctypes.c_int),
            ("f_handle", ctypes.c_ubyte * 64),
        )

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    handle = FileHandle(handle_bytes=64)
    mount_id = ctypes.c_int()
    at_fdcwd = -100
    if libc.name_to_handle_at(
        at_fdcwd, os.fsencode(path), ctypes.byref(handle), ctypes.byref(mount_id), 0
    ):
        err = ctypes.get_errno()
        if err in (95, 38):  # EOPNOTSUPP, ENOSYS
            pytest.skip(f"name_to_handle_at unsupported here: {os.strerror(err)}")
        raise OSError(err, os.strerror(err), str(path))
    assert handle.handle_bytes == 8, "kernfs handles are one u64 cgroup ID"
    return int.from_bytes(bytes(handle.f_handle[:8]), "little")


def _assert_is_cgroup_of(
    found: int | None, leaf: Path, mount: tuple[Path, str], proc: subprocess.Popen[bytes]
) -> None:
    assert found is not None, f"expected to find {leaf}"
    assert found == os.stat(leaf).st_ino
    assert found == _kernfs_id(leaf)
    (leaf / "cgroup.procs").write_text(str(proc.pid))
    mount_point, mount_root = mount
    want = os.path.normpath(os.path.join(mount_root, leaf.relative_to(mount_point)))
    lines = Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines()
    assert f"0::{want}" in lines


# Layouts spelled out literally: (pod dir below the scratch dir, container dir below the pod).
def _pod(driver: str, qos: str, root: str = "") -> str:
    if driver == "systemd":
        root = root or "kubepods.slice"
        p = Path(root).name.removesuffix(".slice")
        if qos == "Guaranteed":
            return f"{root}/{p}-pod{UID_}.slice"
        tier = f"{p}-{qos.lower()}"
        return f"{root}/{tier}.slice/{tier}-pod{UID_}.slice"
    root = root or "kubepods"
    return f"{root}/pod{UID}" if qos == "Guaranteed" else f"{root}/{qos.lower()}/pod{UID}"


CONTAINER_DIR = {
    ("systemd", "containerd"): f"cri-containerd-{CID}.scope",
    ("systemd", "cri-o"): f"crio-{CID}.scope",
    ("systemd", "docker"): f"docker-{CID}.scope",
    ("cgroupfs", "containerd"): CID,
    ("cgroupfs", "cri-o"): f"crio-{CID}",
    ("cgroupfs", "docker"): CID,
}

CASES = [
    (driver, runtime, qos, subgroup)
    for (driver, runtime) in CONTAINER_DIR
    for qos in QOS
    for subgroup in ([False, True] if (driver, runtime) == ("systemd", "cri-o") else [False])
]


@pytest.mark.parametrize(("driver", "runtime", "qos", "subgroup"), CASES)
def test_finds_the_cgroup_the_container_runs_in(
    scratch: Path,
    mount: tuple[Path, str],
    sleeper: subprocess.Popen[bytes],
    driver: str,
    runtime: str,
    qos: str,
    subgroup: bool,
) -> None:
    pod = scratch / _pod(driver, qos)
    cdir = pod / CONTAINER_DIR[(driver, runtime)]
    cdir.mkdir(parents=True)
    if runtime == "cri-o" and driver == "systemd":
        (pod / f"crio-conmon-{CID}.scope").mkdir()  # conmon's scope: never the answer
    leaf = cdir / "container" if subgroup else cdir
    if subgroup:
        leaf.mkdir()
    # An unrelated sibling directory next to the pod: must not confuse discovery or lookup.
    (pod.parent / "pod-unrelated").mkdir()
    finder = CgroupFsFinder(cgroup_root=scratch)
    found = finder.cgroup_id(ContainerRef(UID, qos, f"{runtime}://{CID}"))
    _assert_is_cgroup_of(found, leaf, mount, sleeper)


@pytest.mark.parametrize(
    ("root", "driver"),
    [("kubelet.slice/kubelet-kubepods.slice", "systemd"), ("kubelet/kubepods", "cgroupfs")],
)
def test_nested_kubelet_root_is_discovered(
    scratch: Path, mount: tuple[Path, str], sleeper: subprocess.Popen[bytes], root: str, driver: str
) -> None:
    leaf = scratch / _pod(driver, "Burstable", root) / CONTAINER_DIR[(driver, "containerd")]
    leaf.mkdir(parents=True)
    finder = CgroupFsFinder(cgroup_root=scratch)
    found = finder.cgroup_id(ContainerRef(UID, "Burstable", f"containerd://{CID}"))
    _assert_is_cgroup_of(found, leaf, mount, sleeper)
    assert [r.path for r in finder.roots()] == [scratch / root]


def test_explicit_kubepods_root(
    scratch: Path, mount: tuple[Path, str], sleeper: subprocess.Popen[bytes]
) -> None:
    leaf = scratch / _pod("systemd", "BestEffort") / CONTAINER_DIR[("systemd", "docker")]
    leaf.mkdir(parents=True)
    finder = CgroupFsFinder(cgroup_root=mount[0], kubepods_roots=[scratch / "kubepods.slice"])
    found = finder.cgroup_id(ContainerRef(UID, "BestEffort", f"docker://{CID}"))
    _assert_is_cgroup_of(found, leaf, mount, sleeper)


def test_missing_then_created_then_recreated(
    scratch: Path, mount: tuple[Path, str], sleeper: subprocess.Popen[bytes]
) -> None:
    (scratch / "kubepods.slice").mkdir()
    finder = CgroupFsFinder(cgroup_root=scratch)
    ref = ContainerRef(UID, "Burstable", f"containerd://{CID}")
    assert finder.cgroup_id(ref) is None  # no pod cgroup yet
    pod = scratch / _pod("systemd", "Burstable")
    pod.mkdir(parents=True)
    assert finder.cgroup_id(ref) is None  # pod, no container yet
    scope = pod / CONTAINER_DIR[("systemd", "containerd")]
    scope.mkdir()
    first = finder.cgroup_id(ref)
    _assert_is_cgroup_of(first, scope, mount, sleeper)
    (mount[0] / "cgroup.procs").write_text(str(sleeper.pid))  # out, so rmdir can succeed
    scope.rmdir()
    assert finder.cgroup_id(ref) is None  # cached answer validated: gone
    scope.mkdir()
    second = finder.cgroup_id(ref)
    assert second != first
    _assert_is_cgroup_of(second, scope, mount, sleeper)


def test_recreated_while_cached_is_noticed_without_a_miss_in_between(scratch: Path) -> None:
    scope = scratch / _pod("systemd", "Guaranteed") / CONTAINER_DIR[("systemd", "cri-o")]
    scope.mkdir(parents=True)
    finder = CgroupFsFinder(cgroup_root=scratch)
    ref = ContainerRef(UID, "Guaranteed", f"cri-o://{CID}")
    first = finder.cgroup_id(ref)
    scope.rmdir()
    scope.mkdir()
    assert finder.cgroup_id(ref) == os.stat(scope).st_ino != first


def test_crun_subgroup_created_after_the_scope_was_seen(
    scratch: Path, mount: tuple[Path, str], sleeper: subprocess.Popen[bytes]
) -> None:
    scope = scratch / _pod("systemd", "Burstable") / CONTAINER_DIR[("systemd", "containerd")]
    scope.mkdir(parents=True)
    finder = CgroupFsFinder(cgroup_root=scratch)
    ref = ContainerRef(UID, "Burstable", f"containerd://{CID}")
    assert finder.cgroup_id(ref) == os.stat(scope).st_ino
    sub = scope / "container"
    sub.mkdir()
    assert os.stat(scope).st_nlink == 3  # kernfs counts child cgroups, what the finder uses
    _assert_is_cgroup_of(finder.cgroup_id(ref), sub, mount, sleeper)
