"""Cgroup naming rules (pure) and the finder's caching/discovery logic on a plain directory.

The expected paths are written out literally, one row per driver x runtime x QoS class,
rather than rebuilt from the rules under test. The finder tests at the end run on tmp_path
(no root needed): ext4/tmpfs count sub-directories in st_nlink the way kernfs does, which is
all the finder relies on; tests/kernel/test_cgroups_fs.py repeats the essentials on cgroupfs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest

import tpfilter.cgroups as cgroups_mod
from tpfilter.cgroup_paths import (
    CgroupDriver,
    CgroupPathError,
    QosClass,
    Runtime,
    RuntimeContainerId,
    UnsupportedRuntimeError,
    candidate_paths,
    container_leaves,
    parse_cgroup2_mounts,
    parse_container_id,
    parse_qos_class,
    pod_dir,
    root_driver,
)
from tpfilter.cgroups import (
    CgroupFsFinder,
    CgroupMountError,
    KubepodsRoot,
    discover_kubepods_roots,
    find_cgroup2_mount,
)
from tpfilter.interfaces import ContainerRef

UID = "0d4c9e0a-7b1f-4c2e-9a3d-5f6e7a8b9c0d"
UID_ = "0d4c9e0a_7b1f_4c2e_9a3d_5f6e7a8b9c0d"
CID = "4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a99" + "00112233445566778899aabbccddeeff"
CID2 = "b" * 64


def ref(scheme: str = "containerd", qos: str = "Burstable", cid: str = CID) -> ContainerRef:
    return ContainerRef(pod_uid=UID, qos_class=qos, container_id=f"{scheme}://{cid}")


# --- the full table: driver x runtime x QoS -----------------------------------------------

SYSTEMD_POD = {
    "Burstable": f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
    "BestEffort": f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
    "Guaranteed": f"kubepods.slice/kubepods-pod{UID_}.slice",
}
CGROUPFS_POD = {
    "Burstable": f"kubepods/burstable/pod{UID}",
    "BestEffort": f"kubepods/besteffort/pod{UID}",
    "Guaranteed": f"kubepods/pod{UID}",
}
SYSTEMD_SCOPE = {
    "containerd": f"cri-containerd-{CID}.scope",
    "cri-o": f"crio-{CID}.scope",
    "docker": f"docker-{CID}.scope",
}
CGROUPFS_DIR = {"containerd": CID, "cri-o": f"crio-{CID}", "docker": CID}

TABLE = [
    # (scheme, qos, systemd paths most specific first, cgroupfs path)
    (
        scheme,
        qos,
        (
            f"{SYSTEMD_POD[qos]}/{SYSTEMD_SCOPE[scheme]}/container",
            f"{SYSTEMD_POD[qos]}/{SYSTEMD_SCOPE[scheme]}",
        ),
        f"{CGROUPFS_POD[qos]}/{CGROUPFS_DIR[scheme]}",
    )
    for scheme in ("containerd", "cri-o", "docker")
    for qos in ("Burstable", "BestEffort", "Guaranteed")
]


def test_table_has_every_combination() -> None:
    assert len(TABLE) == 9  # x 2 drivers = 18 cases below
    # Spot-check one row fully spelled out, so a bug shared by the dicts above shows too.
    assert (
        "kubepods.slice/kubepods-besteffort.slice/"
        "kubepods-besteffort-pod0d4c9e0a_7b1f_4c2e_9a3d_5f6e7a8b9c0d.slice/"
        f"crio-{CID}.scope"
    ) in [row[2][1] for row in TABLE]


@pytest.mark.parametrize(("scheme", "qos", "systemd", "cgroupfs"), TABLE)
def test_candidate_paths_every_driver_runtime_qos(
    scheme: str, qos: str, systemd: tuple[str, str], cgroupfs: str
) -> None:
    got = candidate_paths(ref(scheme, qos))
    assert got == tuple(PurePosixPath(p) for p in (*systemd, cgroupfs))


@pytest.mark.parametrize(("scheme", "qos", "systemd", "cgroupfs"), TABLE)
def test_candidate_paths_single_driver(
    scheme: str, qos: str, systemd: tuple[str, str], cgroupfs: str
) -> None:
    assert candidate_paths(ref(scheme, qos), roots=["kubepods"]) == (PurePosixPath(cgroupfs),)
    no_sub = candidate_paths(ref(scheme, qos), roots=["kubepods.slice"], subgroups=())
    assert no_sub == (PurePosixPath(systemd[1]),)


def test_guaranteed_pod_is_directly_under_root_and_uid_escaped_only_for_systemd() -> None:
    assert pod_dir("kubepods.slice", QosClass.GUARANTEED, UID) == PurePosixPath(
        f"kubepods-pod{UID_}.slice"
    )
    assert pod_dir("kubepods", QosClass.GUARANTEED, UID) == PurePosixPath(f"pod{UID}")
    assert "-" not in pod_dir("kubepods.slice", QosClass.BURSTABLE, UID).name.removeprefix(
        "kubepods-burstable-pod"
    )


# --- nested kubelet roots (kind) -------------------------------------------------------------


def test_nested_systemd_root_repeats_parent_name_in_every_slice() -> None:
    got = candidate_paths(
        ref("containerd", "BestEffort"), roots=["kubelet.slice/kubelet-kubepods.slice"]
    )
    pod = (
        "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
        f"kubelet-kubepods-besteffort-pod{UID_}.slice"
    )
    assert got == (
        PurePosixPath(f"{pod}/cri-containerd-{CID}.scope/container"),
        PurePosixPath(f"{pod}/cri-containerd-{CID}.scope"),
    )
    guaranteed = candidate_paths(
        ref("cri-o", "Guaranteed"), roots=["kubelet.slice/kubelet-kubepods.slice"], subgroups=()
    )
    assert guaranteed == (
        PurePosixPath(
            f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice/crio-{CID}.scope"
        ),
    )


def test_nested_cgroupfs_root() -> None:
    got = candidate_paths(ref("docker", "Burstable"), roots=["kubelet/kubepods"])
    assert got == (PurePosixPath(f"kubelet/kubepods/burstable/pod{UID}/{CID}"),)


def test_custom_subgroup_names_come_before_the_scope() -> None:
    leaves = container_leaves(
        CgroupDriver.SYSTEMD,
        RuntimeContainerId(Runtime.CRIO, CID),
        subgroups=("payload", "container"),
    )
    scope = f"crio-{CID}.scope"
    assert leaves == (
        PurePosixPath(scope, "payload"),
        PurePosixPath(scope, "container"),
        PurePosixPath(scope),
    )
    # The cgroupfs driver never nests, whatever the subgroup setting.
    assert container_leaves(
        CgroupDriver.CGROUPFS, RuntimeContainerId(Runtime.CRIO, CID), subgroups=("container",)
    ) == (PurePosixPath(f"crio-{CID}"),)


@pytest.mark.parametrize(
    ("name", "driver"),
    [
        ("kubepods", CgroupDriver.CGROUPFS),
        ("kubepods.slice", CgroupDriver.SYSTEMD),
        ("kubelet-kubepods.slice", CgroupDriver.SYSTEMD),
        ("a-b-kubepods.slice", CgroupDriver.SYSTEMD),
        ("kubepods-burstable.slice", None),
        ("kubepods-besteffort", None),
        ("xkubepods.slice", None),
        ("kubepods.scope", None),
        ("system.slice", None),
        ("burstable", None),
    ],
)
def test_root_driver(name: str, driver: CgroupDriver | None) -> None:
    assert root_driver(name) is driver


# --- errors: input that can never name a cgroup ---------------------------------------------


@pytest.mark.parametrize("scheme", ["rkt", "cri-containerd", "CONTAINERD", "containerd:", "kata"])
def test_unknown_runtime_scheme_is_an_error_not_a_guess(scheme: str) -> None:
    with pytest.raises(UnsupportedRuntimeError, match="no known cgroup naming"):
        candidate_paths(ref(scheme))


@pytest.mark.parametrize(
    "uri",
    [
        "",
        CID,  # no scheme
        "containerd:/" + CID,
        "containerd://",
        "containerd://" + CID[:-1],  # 63 digits
        "containerd://" + CID.upper(),
        "containerd://../../" + CID[:58],
        "containerd://" + CID + "/x",
        "cri-o://" + "g" * 64,
    ],
)
def test_malformed_container_id(uri: str) -> None:
    with pytest.raises(CgroupPathError):
        parse_container_id(uri)


def test_parse_container_id_ok() -> None:
    for scheme, runtime in (
        ("containerd", Runtime.CONTAINERD),
        ("cri-o", Runtime.CRIO),
        ("docker", Runtime.DOCKER),
    ):
        assert parse_container_id(f"{scheme}://{CID}") == RuntimeContainerId(runtime, CID)


@pytest.mark.parametrize("qos", ["", "burstable", "Besteffort", "Unknown"])
def test_bad_qos_class(qos: str) -> None:
    with pytest.raises(CgroupPathError, match="QoS class"):
        parse_qos_class(qos)
    with pytest.raises(CgroupPathError):
        candidate_paths(ref(qos=qos))


@pytest.mark.parametrize("uid", ["", "../x", "a/b", "a_b", "-abc", "x" * 65])
def test_bad_pod_uid(uid: str) -> None:
    with pytest.raises(CgroupPathError, match="pod UID"):
        candidate_paths(ContainerRef(uid, "Burstable", f"containerd://{CID}"))


def test_static_pod_uid_without_dashes() -> None:
    uid = "5e3f0a9b8c7d6e5f4a3b2c1d0e9f8a7b"
    assert candidate_paths(ContainerRef(uid, "Guaranteed", f"docker://{CID}"), roots=["kubepods"])[
        0
    ] == PurePosixPath(f"kubepods/pod{uid}/{CID}")


@pytest.mark.parametrize("root", ["system.slice", "kubepods/burstable", "kubepods-burstable.slice"])
def test_candidate_paths_rejects_a_root_that_is_not_a_kubepods_root(root: str) -> None:
    with pytest.raises(CgroupPathError, match="not a kubepods root"):
        candidate_paths(ref(), roots=[root])


@pytest.mark.parametrize("sub", ["", ".", "..", "a/b"])
def test_bad_subgroup_name(sub: str) -> None:
    with pytest.raises(CgroupPathError, match="sub-cgroup"):
        candidate_paths(ref(), subgroups=[sub])


# --- mountinfo ------------------------------------------------------------------------------

HYBRID = """\
24 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime shared:9 - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 master:3 - cgroup2 cgroup2 rw
"""
PURE_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
NAMESPACED = (
    "50 40 0:26 /kubepods.slice/x.scope /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n"
    "51 40 0:26 / /host/cgroup\\040v2 rw - cgroup2 cgroup2 rw\n"
)


def test_parse_cgroup2_mounts() -> None:
    assert [m.mount_point for m in parse_cgroup2_mounts(HYBRID)] == ["/sys/fs/cgroup/unified"]
    assert [m.mount_point for m in parse_cgroup2_mounts(PURE_V2)] == ["/sys/fs/cgroup"]
    mounts = parse_cgroup2_mounts(NAMESPACED)
    assert [(m.mount_point, m.root) for m in mounts] == [
        ("/sys/fs/cgroup", "/kubepods.slice/x.scope"),
        ("/host/cgroup v2", "/"),  # \040 unescaped
    ]
    assert parse_cgroup2_mounts("garbage\n\n1 2 3 - cgroup2\n") == []


def test_find_cgroup2_mount_prefers_the_hierarchy_root(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(HYBRID)
    assert find_cgroup2_mount(mi) == Path("/sys/fs/cgroup/unified")
    mi.write_text(NAMESPACED)
    assert find_cgroup2_mount(mi) == Path("/host/cgroup v2")
    mi.write_text(HYBRID.splitlines()[0] + "\n")
    with pytest.raises(CgroupMountError):
        find_cgroup2_mount(mi)


def test_finder_uses_mountinfo_when_no_root_given(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(f"41 31 0:38 / {tmp_path} rw - cgroup2 cgroup2 rw\n")
    assert CgroupFsFinder(mountinfo=mi).cgroup_root == tmp_path
    with pytest.raises(CgroupMountError):
        CgroupFsFinder(cgroup_root=tmp_path / "absent")


# --- the finder on a plain directory tree ---------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stat_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records every path the finder stats."""
    calls: list[Path] = []
    real: Callable[[Path], object] = cgroups_mod._stat_dir

    def counting(path: Path) -> object:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(cgroups_mod, "_stat_dir", counting)
    return calls


def make(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_discovery_depth_and_no_descent_into_roots(tmp_path: Path) -> None:
    make(tmp_path / "kubepods.slice" / "kubepods-burstable.slice")
    make(tmp_path / "kubelet.slice" / "kubelet-kubepods.slice")
    make(tmp_path / "a" / "b" / "kubepods")
    make(tmp_path / "a" / "b" / "c" / "kubepods")  # depth 4
    make(tmp_path / "kubepods.slice" / "inner" / "kubepods")  # inside a root: not searched
    roots = discover_kubepods_roots(tmp_path, max_depth=3)
    assert roots == (
        KubepodsRoot(tmp_path / "kubepods.slice", CgroupDriver.SYSTEMD),
        KubepodsRoot(tmp_path / "kubelet.slice" / "kubelet-kubepods.slice", CgroupDriver.SYSTEMD),
        KubepodsRoot(tmp_path / "a" / "b" / "kubepods", CgroupDriver.CGROUPFS),
    )
    assert len(discover_kubepods_roots(tmp_path, max_depth=4)) == 4
    assert discover_kubepods_roots(tmp_path, max_depth=1) == roots[:1]


def systemd_scope(
    base: Path, qos: str = "Burstable", cid: str = CID, root: str = "kubepods.slice"
) -> Path:
    """A containerd scope below ``root``; child slices repeat the root's name (kind nesting)."""
    prefix = Path(root).name.removesuffix(".slice")
    rel = SYSTEMD_POD[qos].replace("kubepods-", f"{prefix}-").replace("kubepods.slice", root, 1)
    return base / rel / f"cri-containerd-{cid}.scope"


def test_finder_finds_by_inode_and_second_container_of_pod_is_one_stat(
    tmp_path: Path, stat_calls: list[Path]
) -> None:
    scope1 = make(systemd_scope(tmp_path))
    scope2 = make(systemd_scope(tmp_path, cid=CID2))
    make(tmp_path / "kubepods")  # a second root, tried too when the pod is unknown
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    assert finder.cgroup_id(ref()) == scope1.stat().st_ino
    stat_calls.clear()
    assert finder.cgroup_id(ref(cid=CID2)) == scope2.stat().st_ino
    assert stat_calls == [scope2]  # pod location remembered: one stat, no subgroup probe
    stat_calls.clear()
    assert finder.cgroup_id(ref(cid=CID2)) == scope2.stat().st_ino
    assert stat_calls == [scope2]  # cached answer, validated by one stat


def test_finder_prefers_crun_subgroup_and_notices_it_appearing_later(
    tmp_path: Path, stat_calls: list[Path]
) -> None:
    scope = make(systemd_scope(tmp_path, qos="Guaranteed"))
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    container = ref(qos="Guaranteed")
    assert finder.cgroup_id(container) == scope.stat().st_ino
    sub = make(scope / "container")
    stat_calls.clear()
    assert finder.lookup(container) == cgroups_mod.CgroupMatch(sub, sub.stat().st_ino)
    assert stat_calls == [scope, sub]
    # A child that is not a known subgroup name (a container's own nested cgroup) does not
    # move the answer away from the scope.
    sub.rmdir()
    make(scope / "init.scope")
    assert finder.cgroup_id(container) == scope.stat().st_ino
    assert finder.cgroup_id(container) == scope.stat().st_ino


def test_finder_cgroupfs_never_probes_subgroups(tmp_path: Path, stat_calls: list[Path]) -> None:
    cdir = make(tmp_path / CGROUPFS_POD["BestEffort"] / f"crio-{CID}")
    make(cdir / "container")  # would be wrong to pick: cgroupfs driver never nests
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    assert finder.cgroup_id(ref("cri-o", "BestEffort")) == cdir.stat().st_ino


def test_missing_is_none_then_found_and_recreated_gets_new_id(tmp_path: Path) -> None:
    make(tmp_path / "kubepods")
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    container = ref("docker", "Burstable")
    assert finder.cgroup_id(container) is None  # no pod dir
    pdir = make(tmp_path / CGROUPFS_POD["Burstable"])
    assert finder.cgroup_id(container) is None  # pod dir, no container dir
    assert finder.cache_sizes() == (0, 1)
    cdir = make(pdir / CID)
    first = finder.cgroup_id(container)
    assert first == cdir.stat().st_ino
    # Keep an unrelated directory alive so the file system cannot hand the inode back.
    cdir.rename(tmp_path / "old")
    make(pdir / CID)
    second = finder.cgroup_id(container)
    assert second == (pdir / CID).stat().st_ino
    assert second != first
    (pdir / CID).rmdir()
    assert finder.cgroup_id(container) is None
    assert finder.cache_sizes() == (0, 1)


def test_forget_bounds_memory(tmp_path: Path) -> None:
    make(systemd_scope(tmp_path))
    make(systemd_scope(tmp_path, cid=CID2))
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    a, b, c = ref(), ref(cid=CID2), ref(cid="c" * 64)  # c never created
    assert finder.cgroup_id(a) is not None
    assert finder.cgroup_id(b) is not None
    assert finder.cgroup_id(c) is None
    assert finder.cache_sizes() == (2, 1)
    finder.forget(a)
    finder.forget(b)
    assert finder.cache_sizes() == (0, 1)  # c still pending on this pod
    finder.forget(c)
    assert finder.cache_sizes() == (0, 0)
    finder.forget(c)  # idempotent
    finder.forget(ContainerRef("x", "nonsense", "rkt://x"))  # never raises


def test_rediscovery_is_lazy_and_rate_limited(tmp_path: Path) -> None:
    clock = Clock()
    finder = CgroupFsFinder(cgroup_root=tmp_path, rescan_interval=30.0, clock=clock)
    assert finder.cgroup_id(ref()) is None  # first lookup scans: nothing there
    assert finder.roots() == ()
    scope = make(systemd_scope(tmp_path, root="kubelet.slice/kubelet-kubepods.slice"))
    clock.now += 29.0
    assert finder.cgroup_id(ref()) is None  # rate limit: no rescan yet
    clock.now += 1.0
    assert finder.cgroup_id(ref()) == scope.stat().st_ino  # miss -> rescan -> found
    assert [r.path for r in finder.roots()] == [tmp_path / "kubelet.slice/kubelet-kubepods.slice"]


def test_a_miss_with_the_pod_present_does_not_rescan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path / CGROUPFS_POD["Guaranteed"])
    clock = Clock()
    finder = CgroupFsFinder(cgroup_root=tmp_path, rescan_interval=0.0, clock=clock)
    scans: list[Path] = []
    real = cgroups_mod.discover_kubepods_roots

    def counting(base: Path, *, max_depth: int) -> tuple[KubepodsRoot, ...]:
        scans.append(base)
        return real(base, max_depth=max_depth)

    monkeypatch.setattr(cgroups_mod, "discover_kubepods_roots", counting)
    for _ in range(3):
        assert finder.cgroup_id(ref(qos="Guaranteed")) is None
    assert scans == [tmp_path]  # only the initial discovery


def test_explicit_roots_disable_discovery(tmp_path: Path) -> None:
    scope = make(systemd_scope(tmp_path, qos="BestEffort"))
    make(tmp_path / CGROUPFS_POD["BestEffort"] / CID)
    finder = CgroupFsFinder(cgroup_root=tmp_path, kubepods_roots=["kubepods.slice"])
    assert finder.roots() == (KubepodsRoot(tmp_path / "kubepods.slice", CgroupDriver.SYSTEMD),)
    assert finder.cgroup_id(ref(qos="BestEffort")) == scope.stat().st_ino
    only_fs = CgroupFsFinder(cgroup_root=tmp_path, kubepods_roots=[tmp_path / "kubepods"])
    assert (
        only_fs.cgroup_id(ref(qos="BestEffort"))
        == (tmp_path / CGROUPFS_POD["BestEffort"] / CID).stat().st_ino
    )
    assert only_fs.cgroup_id(ref(qos="Burstable")) is None
    with pytest.raises(ValueError, match="not a kubepods root"):
        CgroupFsFinder(cgroup_root=tmp_path, kubepods_roots=["system.slice"])


def test_finder_errors_and_empty_id(tmp_path: Path) -> None:
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    assert finder.cgroup_id(ContainerRef(UID, "Burstable", "")) is None
    with pytest.raises(UnsupportedRuntimeError):
        finder.cgroup_id(ref("rkt"))
    with pytest.raises(ValueError):
        CgroupFsFinder(cgroup_root=tmp_path, scan_depth=0)
    with pytest.raises(CgroupPathError):
        CgroupFsFinder(cgroup_root=tmp_path, systemd_subgroups=["../x"])


def test_pod_location_is_dropped_when_the_pod_dir_goes(tmp_path: Path) -> None:
    """A remembered pod directory that vanished is not trusted: the roots are tried again
    (kubelet restarted with the other cgroup driver and the pod was re-created)."""
    old_pod = make(tmp_path / CGROUPFS_POD["Burstable"])
    make(tmp_path / "kubepods.slice")
    finder = CgroupFsFinder(cgroup_root=tmp_path)
    assert finder.cgroup_id(ref()) is None  # pod found under kubepods/, container not yet
    old_pod.rmdir()
    scope = make(systemd_scope(tmp_path))
    assert finder.cgroup_id(ref()) == scope.stat().st_ino
