"""Where kubelet and the container runtimes put a container's cgroup, from names alone.

Why this is computed rather than searched for: the agent must turn every container it
selects into a cgroup ID, on every pod event, on nodes with thousands of cgroups. A tree
walk per event (what Tetragon's fsscan falls back to) is O(cgroups); knowing the naming
rules turns a lookup into one ``stat`` of a path built from the pod UID, the QoS class and
the runtime URI. This module holds those rules and nothing that touches the filesystem, so
every combination is unit-tested without root; :mod:`tpfilter.cgroups` does the I/O.

The rules (relative to a *kubepods root*, the directory kubelet made for all pods):

* kubelet ``--cgroup-driver=systemd``: the root is ``kubepods.slice``, or
  ``<parent>-kubepods.slice`` when kubelet runs with a nested ``--cgroup-root`` (kind:
  ``kubelet.slice/kubelet-kubepods.slice``). Every child slice repeats its parent's name
  (systemd slice naming), and kubelet escapes ``-`` in each name part to ``_``, so a
  Burstable pod is ``P-burstable.slice/P-burstable-pod<uid with _>.slice`` where ``P`` is
  the root's name without ``.slice``; a Guaranteed pod sits directly under the root as
  ``P-pod<uid>.slice``. The container is a scope named by the runtime:
  ``cri-containerd-<id>.scope`` (containerd), ``crio-<id>.scope`` (CRI-O; its conmon sits
  beside it in ``crio-conmon-<id>.scope``, which is not the container), ``docker-<id>.scope``
  (Docker through cri-dockerd).
* kubelet ``--cgroup-driver=cgroupfs``: the root is a directory named ``kubepods``
  (possibly nested, e.g. ``kubelet/kubepods``); pods are ``burstable/pod<uid>``,
  ``besteffort/pod<uid>`` or, for Guaranteed, ``pod<uid>`` (dashes kept). The container
  directory is the bare ``<id>`` for containerd and Docker, ``crio-<id>`` for CRI-O.
* crun with the systemd driver (CRI-O's default OCI runtime on many distributions, and
  usable under containerd) creates a sub-cgroup ``container`` inside the scope on cgroup v2
  and runs the container's processes there, because systemd lets a delegated scope's owner
  manage only its children. crun's annotation ``run.oci.systemd.subgroup`` renames it, and
  set to ``""`` (OpenShift does this for CRI-O) removes it. When the sub-cgroup exists,
  ``bpf_get_current_cgroup_id()`` in the container returns *its* ID, not the scope's, so
  the sub-cgroup comes first in the candidates. runc and the cgroupfs driver never nest.

A runtime scheme not listed above is an error, never a guess: a wrong guess would make the
agent report "cgroup not there yet" forever and leave the pod silently unfiltered.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from tpfilter.interfaces import ContainerRef

KUBEPODS = "kubepods"
SLICE_SUFFIX = ".slice"
SCOPE_SUFFIX = ".scope"

#: Sub-cgroup names crun may create inside a systemd scope, most likely first.
DEFAULT_SYSTEMD_SUBGROUPS: tuple[str, ...] = ("container",)

#: Kubepods roots for a kubelet without ``--cgroup-root``, one per cgroup driver.
DEFAULT_ROOTS: tuple[str, ...] = ("kubepods.slice", "kubepods")


class CgroupDriver(enum.StrEnum):
    """The kubelet's ``--cgroup-driver``; it decides every name below the kubepods root."""

    SYSTEMD = "systemd"
    CGROUPFS = "cgroupfs"


class QosClass(enum.StrEnum):
    """``status.qosClass`` of a pod, spelled as the API spells it."""

    GUARANTEED = "Guaranteed"
    BURSTABLE = "Burstable"
    BEST_EFFORT = "BestEffort"


class Runtime(enum.StrEnum):
    """The scheme of ``status.containerStatuses[].containerID``."""

    CONTAINERD = "containerd"
    CRIO = "cri-o"
    DOCKER = "docker"


class CgroupPathError(ValueError):
    """A ContainerRef whose fields cannot name a cgroup (bad input, not a missing cgroup)."""


class UnsupportedRuntimeError(CgroupPathError):
    """The container ID's scheme is not one whose cgroup naming is known."""


# The scope name of each runtime under the systemd driver (kubelet and the runtimes agree:
# containerd's CRI plugin uses "cri-containerd", CRI-O "crio", cri-dockerd "docker").
_SYSTEMD_SCOPE_PREFIX: dict[Runtime, str] = {
    Runtime.CONTAINERD: "cri-containerd",
    Runtime.CRIO: "crio",
    Runtime.DOCKER: "docker",
}

# The directory-name prefix of each runtime under the cgroupfs driver.
_CGROUPFS_PREFIX: dict[Runtime, str] = {
    Runtime.CONTAINERD: "",
    Runtime.CRIO: "crio-",
    Runtime.DOCKER: "",
}

# Every CRI runtime above generates 64 lowercase hex digits. Accepting only that keeps a
# malformed or hostile status field from ever becoming a path ("../", "/", "").
_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")
# Pod UIDs are UUIDs from the API server, or 32 hex digits for static pods (kubelet hashes
# the manifest). Underscores are excluded: the systemd form maps "-" to "_".
_POD_UID_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
_SUBGROUP_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


@dataclass(frozen=True, slots=True)
class RuntimeContainerId:
    """A parsed ``<scheme>://<id>`` container ID."""

    runtime: Runtime
    id: str


def parse_container_id(uri: str) -> RuntimeContainerId:
    """Split ``containerd://<64 hex>`` (or ``cri-o://``, ``docker://``) into its parts.

    Raises UnsupportedRuntimeError for any other scheme and CgroupPathError for an ID that
    is not 64 lowercase hex digits.
    """
    scheme, sep, cid = uri.partition("://")
    if not sep:
        raise CgroupPathError(f"container ID {uri!r} has no '<runtime>://' scheme")
    try:
        runtime = Runtime(scheme)
    except ValueError:
        known = ", ".join(f"{r.value}://" for r in Runtime)
        raise UnsupportedRuntimeError(
            f"container runtime {scheme!r} (from {uri!r}) has no known cgroup naming; "
            f"supported: {known}"
        ) from None
    if not _CONTAINER_ID_RE.fullmatch(cid):
        raise CgroupPathError(f"container ID {uri!r}: expected 64 lowercase hex digits")
    return RuntimeContainerId(runtime, cid)


def parse_qos_class(value: str) -> QosClass:
    """The QosClass for ``status.qosClass``; CgroupPathError for anything else (e.g. "")."""
    try:
        return QosClass(value)
    except ValueError:
        known = ", ".join(q.value for q in QosClass)
        raise CgroupPathError(f"QoS class {value!r} is not one of {known}") from None


def check_pod_uid(pod_uid: str) -> str:
    """``pod_uid`` if it can be a path component of a pod cgroup name, else CgroupPathError."""
    if not _POD_UID_RE.fullmatch(pod_uid):
        raise CgroupPathError(f"pod UID {pod_uid!r} is not a UUID-like token")
    return pod_uid


def check_subgroups(names: Iterable[str]) -> tuple[str, ...]:
    """Validated crun sub-cgroup names (single path components)."""
    out = tuple(names)
    for name in out:
        if not _SUBGROUP_RE.fullmatch(name) or name in (".", ".."):
            raise CgroupPathError(f"sub-cgroup name {name!r} is not a single path component")
    return out


def root_driver(name: str) -> CgroupDriver | None:
    """The cgroup driver a kubepods root directory of this basename belongs to, or None.

    ``kubepods`` -> cgroupfs; ``kubepods.slice`` and ``<parent>-kubepods.slice`` -> systemd.
    """
    if name == KUBEPODS:
        return CgroupDriver.CGROUPFS
    if name == KUBEPODS + SLICE_SUFFIX or name.endswith("-" + KUBEPODS + SLICE_SUFFIX):
        return CgroupDriver.SYSTEMD
    return None


def _driver_of(root_name: str) -> CgroupDriver:
    driver = root_driver(root_name)
    if driver is None:
        raise CgroupPathError(
            f"{root_name!r} is not a kubepods root name "
            f"(kubepods, kubepods.slice or <parent>-kubepods.slice)"
        )
    return driver


def pod_dir(root_name: str, qos: QosClass, pod_uid: str) -> PurePosixPath:
    """The pod's cgroup directory relative to a kubepods root whose basename is ``root_name``."""
    check_pod_uid(pod_uid)
    if _driver_of(root_name) is CgroupDriver.SYSTEMD:
        prefix = root_name.removesuffix(SLICE_SUFFIX)
        uid = pod_uid.replace("-", "_")
        if qos is QosClass.GUARANTEED:
            return PurePosixPath(f"{prefix}-pod{uid}{SLICE_SUFFIX}")
        tier = f"{prefix}-{qos.value.lower()}"
        return PurePosixPath(f"{tier}{SLICE_SUFFIX}", f"{tier}-pod{uid}{SLICE_SUFFIX}")
    if qos is QosClass.GUARANTEED:
        return PurePosixPath(f"pod{pod_uid}")
    return PurePosixPath(qos.value.lower(), f"pod{pod_uid}")


def container_dir_name(driver: CgroupDriver, container: RuntimeContainerId) -> str:
    """The directory the runtime creates for the container inside the pod directory."""
    if driver is CgroupDriver.SYSTEMD:
        return f"{_SYSTEMD_SCOPE_PREFIX[container.runtime]}-{container.id}{SCOPE_SUFFIX}"
    return f"{_CGROUPFS_PREFIX[container.runtime]}{container.id}"


def container_leaves(
    driver: CgroupDriver,
    container: RuntimeContainerId,
    *,
    subgroups: Sequence[str] = DEFAULT_SYSTEMD_SUBGROUPS,
) -> tuple[PurePosixPath, ...]:
    """Where the container's processes may live, relative to the pod directory.

    Most specific first: under the systemd driver the crun sub-cgroups of the scope, then
    the scope itself; under cgroupfs only the container directory. The first that exists is
    the container's cgroup.
    """
    base = PurePosixPath(container_dir_name(driver, container))
    if driver is CgroupDriver.SYSTEMD:
        return (*(base / sub for sub in check_subgroups(subgroups)), base)
    return (base,)


def candidate_paths(
    container: ContainerRef,
    *,
    roots: Sequence[str] = DEFAULT_ROOTS,
    subgroups: Sequence[str] = DEFAULT_SYSTEMD_SUBGROUPS,
) -> tuple[PurePosixPath, ...]:
    """Every path the container's cgroup may have, relative to the cgroup v2 mount.

    ``roots`` are kubepods roots relative to the mount, e.g. ``kubepods.slice`` or
    ``kubelet.slice/kubelet-kubepods.slice``; the driver follows from each root's basename.
    In order: per root, the most specific leaf first. Raises CgroupPathError (or its
    subclass UnsupportedRuntimeError) when the ContainerRef cannot name a cgroup.
    """
    rid = parse_container_id(container.container_id)
    qos = parse_qos_class(container.qos_class)
    out: list[PurePosixPath] = []
    for root in roots:
        root_path = PurePosixPath(root)
        driver = _driver_of(root_path.name)
        pod = root_path / pod_dir(root_path.name, qos, container.pod_uid)
        out.extend(pod / leaf for leaf in container_leaves(driver, rid, subgroups=subgroups))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Cgroup2Mount:
    """One cgroup2 line of /proc/self/mountinfo."""

    mount_point: str
    root: str  # the hierarchy path mounted there: "/" unless a cgroup namespace or bind


def _unescape_mountinfo(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash as \ooo octal.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_cgroup2_mounts(mountinfo: str) -> list[Cgroup2Mount]:
    """The cgroup2 mounts listed in a /proc/<pid>/mountinfo text, in mount order.

    A line is ``id parent major:minor root mount-point options [optional...] - fstype
    source super-options``; the optional fields vary in number, hence the split on " - ".
    """
    mounts: list[Cgroup2Mount] = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, fstype = left.split(), right.split()
        if len(fields) < 5 or not fstype or fstype[0] != "cgroup2":
            continue
        mounts.append(Cgroup2Mount(_unescape_mountinfo(fields[4]), _unescape_mountinfo(fields[3])))
    return mounts
