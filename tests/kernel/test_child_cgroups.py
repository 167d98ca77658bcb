"""No escape through child cgroups: policy_filter_check() on the real kernel, as root.

A process in a selected container may create a cgroup below the container's and move
into it (cgroup v2 allows it wherever the container can write its cgroup directory). Its
cgroup ID is then not the container's, and a filter that only looks up the current
cgroup stops applying. policy_filter.h also looks at the task's ancestors at the levels
the agent marked (tpfilter.descendants); these tests check, with real cgroups, real
processes and BPF programs compiled like the agent's:

* a process that makes a child (and a grandchild) cgroup of its selected container and
  moves there is still matched, and a Sigkill policy still kills it;
* cgroups made before the policy existed, or while no agent ran, are matched too;
* nothing about child cgroups is stored, so after rmdir nothing is left behind;
* the container's parent, a sibling container and unrelated deep cgroups are not matched;
* without the walk (levels mask cleared by hand) the escape is real: the tests can fail.

The exec'ing child process does the cgroup work itself between fork and exec: it enters
the container's cgroup, makes the child cgroup(s) and writes its PID into the deepest.
"""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tpfilter import bpfsys
from tpfilter.bpfmaps import LEVELS_PIN_NAME, OUTER_PIN_NAME, PinnedFilterMaps, probe
from tpfilter.bpfsrc import bcc_source
from tpfilter.descendants import GONE, UNKNOWN, WALK_ALL, CgroupFsLevels

BPF_ROOT = Path("/sys/fs/bpf")
HERE = Path(__file__).parent
CHECK_EXEC = HERE / "bpf" / "check_exec.c"  # records policy_filter_check() for IDs 0..4
KILL_EXEC = HERE / "bpf" / "kill_exec.c"  # SIGKILL on exec when policy 1 applies
POLICIES = range(0, 5)


def _cgroup2_mount() -> Path | None:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


CGROUP2 = _cgroup2_mount()


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to load BPF programs, pin maps and create cgroups"
    support = probe(BPF_ROOT)
    if not support.ok:
        return f"kernel/machine lacks: {support.reason}"
    if CGROUP2 is None:
        return "no cgroup v2 filesystem mounted"
    if os.stat(CGROUP2).st_ino != 1:
        return f"{CGROUP2} is not the root of the cgroup v2 hierarchy (cgroup namespace)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc Python bindings (Debian python3-bpfcc) not importable"
    build = Path("/lib/modules") / os.uname().release / "build"
    if not build.exists():
        return f"bcc needs kernel headers at {build}"
    return None


SKIP_REASON = _skip_reason()
pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
]


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def pin_dir() -> Iterator[Path]:
    path = BPF_ROOT / f"tpf-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        yield path
    finally:
        if path.exists():
            for entry in path.iterdir():
                entry.unlink()
            path.rmdir()


def _rmdir(path: Path) -> None:
    # Exited children can keep a cgroup busy for a moment while the kernel reaps them.
    for _ in range(100):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            time.sleep(0.02)
    path.rmdir()


class Tree:
    """A scratch cgroup tree: base/<relative>; removes everything below base, deepest first."""

    def __init__(self) -> None:
        assert CGROUP2 is not None
        self.base = CGROUP2 / f"tpf-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.base.mkdir()

    def make(self, relative: str) -> tuple[Path, int]:
        path = self.base / relative
        path.mkdir(parents=True, exist_ok=True)
        return path, os.stat(path).st_ino

    def close(self) -> None:
        dirs = [Path(d) for d, _, _ in os.walk(self.base)]
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            _rmdir(path)


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    try:
        yield t
    finally:
        t.close()


class Programs:
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


@pytest.fixture
def programs() -> Iterator[Programs]:
    p = Programs()
    try:
        yield p
    finally:
        p.close()


# -- helpers ---------------------------------------------------------------------------------


def exec_nested(container: Path, nested: Sequence[str] = (), argv: Sequence[str] = ()) -> int:
    """Exec ``argv`` (default /bin/true) in a process that entered ``container``, made the
    cgroups ``container/nested[0]/nested[1]/...`` (those missing) and moved into the
    deepest, all by itself before its exec. Returns its exit status (-9: SIGKILL)."""

    def enter() -> None:
        pid = str(os.getpid())
        (container / "cgroup.procs").write_text(pid)
        here = container
        for name in nested:
            here = here / name
            if not here.exists():
                here.mkdir()
            (here / "cgroup.procs").write_text(pid)

    proc = subprocess.run(list(argv) or ["/bin/true"], preexec_fn=enter, check=False)
    return proc.returncode


def answers(bpf: Any, cgroup_id: int) -> dict[int, bool]:
    got = {
        int(k.policy_id): int(v.value) == 2
        for k, v in bpf[b"check_results"].items()
        if int(k.cgroup_id) == cgroup_id
    }
    assert set(got) == set(POLICIES), f"no exec recorded for cgroup {cgroup_id}: {got}"
    return got


def observe(bpf: Any, container: Path, nested: Sequence[str] = ()) -> dict[int, bool]:
    """What policy_filter_check() said for an exec in container/nested..., freshly."""
    bpf[b"check_results"].clear()
    assert exec_nested(container, nested) == 0
    return answers(bpf, os.stat(container.joinpath(*nested)).st_ino)


def expect(true_for: set[int]) -> dict[int, bool]:
    return {p: p == 0 or p in true_for for p in POLICIES}


def level_of(path: Path) -> int:
    assert CGROUP2 is not None
    return len(path.relative_to(CGROUP2).parts)


def set_levels_mask(pin_dir: Path, mask: int) -> None:
    fd = bpfsys.obj_get(pin_dir / LEVELS_PIN_NAME)
    try:
        bpfsys.map_update(fd, struct.pack("=I", 0), struct.pack("=Q", mask))
    finally:
        os.close(fd)


def everything_pinned(pin_dir: Path) -> dict[str, Any]:
    """All the state tpfilter keeps in the kernel, read from the pins alone."""
    with PinnedFilterMaps(pin_dir=pin_dir, levels=_NoLevels()) as maps:
        return {
            "pins": sorted(p.name for p in pin_dir.iterdir()),
            "maps": {p: set(s.cgroup_ids) for p, s in maps.read_all().items()},
            "mask": maps.levels_mask(),
        }


class _NoLevels:
    """A resolver that resolves nothing (so reading state back never writes the mask)."""

    def level(self, cgroup_id: int) -> int:
        return GONE


class _UnknownLevels:
    def level(self, cgroup_id: int) -> int:
        return UNKNOWN


# -- tests -----------------------------------------------------------------------------------


def test_child_and_grandchild_of_a_selected_container_are_matched(
    pin_dir: Path, tree: Tree, programs: Programs
) -> None:
    pod, pod_id = tree.make("kubepods/pod-a")
    a, a_id = tree.make("kubepods/pod-a/ctr-a")
    b, b_id = tree.make("kubepods/pod-b/ctr-b")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a_id}, max_entries=8)
        maps.install(2, {b_id}, max_entries=8)
        maps.install(3, {a_id, b_id}, max_entries=8)
        assert maps.levels_mask() == 1 << level_of(a)  # the agent named the level
        bpf = programs.load(CHECK_EXEC, pin_dir)

        assert observe(bpf, a) == expect({1, 3})
        assert observe(bpf, a, ["child"]) == expect({1, 3})
        assert observe(bpf, a, ["child", "grandchild"]) == expect({1, 3})
        assert observe(bpf, a, ["child", "grandchild", "deeper"]) == expect({1, 3})
        assert observe(bpf, b, ["escape"]) == expect({2, 3})
        # ... and what is not in a selected container stays unmatched:
        assert observe(bpf, pod) == expect(set())  # the pod (parent) cgroup
        assert observe(bpf, pod, ["sibling-of-ctr-a"]) == expect(set())
        assert observe(bpf, pod, ["sibling-of-ctr-a", "deep"]) == expect(set())
        other, _ = tree.make("elsewhere/x/y/z")  # deeper than the container, elsewhere
        assert observe(bpf, other) == expect(set())
        assert pod_id not in maps.read_all()[1].cgroup_ids


def test_sigkill_policy_still_kills_after_moving_into_a_child_cgroup(
    pin_dir: Path, tree: Tree, programs: Programs
) -> None:
    a, a_id = tree.make("kubepods/pod-a/ctr-a")
    b, _ = tree.make("kubepods/pod-b/ctr-b")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a_id}, max_entries=8)
        programs.load(KILL_EXEC, pin_dir)
        assert exec_nested(a) == -signal.SIGKILL
        assert exec_nested(a, ["child"]) == -signal.SIGKILL
        assert exec_nested(a, ["child", "grandchild"]) == -signal.SIGKILL
        assert exec_nested(b) == 0
        assert exec_nested(b, ["child"]) == 0


def test_without_the_walk_a_child_cgroup_escapes(
    pin_dir: Path, tree: Tree, programs: Programs
) -> None:
    # What the check did before (exact cgroup only): clearing the levels mask by hand
    # turns the walk off, and the process in the child cgroup is no longer matched.
    a, a_id = tree.make("kubepods/pod-a/ctr-a")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a_id}, max_entries=8)
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, a, ["child"]) == expect({1})
        set_levels_mask(pin_dir, 0)
        assert observe(bpf, a) == expect({1})
        assert observe(bpf, a, ["child"]) == expect(set())  # escaped
        # A drift check (read_all) repairs the mask from what the maps hold.
        maps.read_all()
        assert maps.levels_mask() == 1 << level_of(a)
        assert observe(bpf, a, ["child"]) == expect({1})


def test_cgroups_made_before_the_policy_or_while_no_agent_ran(
    pin_dir: Path, tree: Tree, programs: Programs
) -> None:
    a, a_id = tree.make("kubepods/pod-a/ctr-a")
    early, _ = tree.make("kubepods/pod-a/ctr-a/made-before-the-policy/and-below")
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    maps.install(1, {a_id}, max_entries=8)
    bpf = programs.load(CHECK_EXEC, pin_dir)
    assert observe(bpf, early) == expect({1})

    # The agent and the program go away; a child is made meanwhile; both come back.
    programs.unload(bpf)
    maps.close()
    during, _ = tree.make("kubepods/pod-a/ctr-a/made-while-no-agent-ran")
    bpf = programs.load(CHECK_EXEC, pin_dir)  # a program alone, before the agent
    assert observe(bpf, during) == expect({1})
    with PinnedFilterMaps(pin_dir=pin_dir) as again:
        assert again.adopted
        assert observe(bpf, during) == expect({1})
        assert observe(bpf, a, ["made-after-restart"]) == expect({1})


def test_nothing_stale_remains_after_rmdir(pin_dir: Path, tree: Tree, programs: Programs) -> None:
    a, a_id = tree.make("kubepods/pod-a/ctr-a")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a_id}, max_entries=8)
    before = everything_pinned(pin_dir)
    assert before == {
        "pins": sorted([OUTER_PIN_NAME, LEVELS_PIN_NAME]),
        "maps": {1: {a_id}},
        "mask": 1 << level_of(a),
    }
    bpf = programs.load(CHECK_EXEC, pin_dir)
    child_ids = []
    for i in range(3):
        assert observe(bpf, a, [f"child-{i}", "grandchild"]) == expect({1})
        child_ids.append(os.stat(a / f"child-{i}").st_ino)
    assert everything_pinned(pin_dir) == before  # nothing was stored per child ...
    for i in range(3):
        _rmdir(a / f"child-{i}" / "grandchild")
        _rmdir(a / f"child-{i}")
    assert everything_pinned(pin_dir) == before  # ... so nothing is left after rmdir
    # A new cgroup under the same name is a new cgroup (new ID), matched the same way.
    assert observe(bpf, a, ["child-0"]) == expect({1})
    assert os.stat(a / "child-0").st_ino not in child_ids


def test_unknown_levels_fall_back_to_every_level(
    pin_dir: Path, tree: Tree, programs: Programs
) -> None:
    # An agent that cannot tell a container's depth (e.g. in a cgroup namespace) sets the
    # "every level" bit: slower on a miss, but a child cgroup still does not escape.
    a, a_id = tree.make("kubepods/pod-a/ctr-a")
    b, _ = tree.make("kubepods/pod-b/ctr-b")
    with PinnedFilterMaps(pin_dir=pin_dir, levels=_UnknownLevels()) as maps:
        maps.install(1, {a_id}, max_entries=8)
        assert maps.levels_mask() == WALK_ALL
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, a, ["child", "grandchild"]) == expect({1})
        assert observe(bpf, b, ["child"]) == expect(set())
        assert observe(bpf, a) == expect({1})


def test_levels_are_set_before_ids_are_published_by_every_write(pin_dir: Path, tree: Tree) -> None:
    # install, update and install_many each set the bit of a new level before the ID can
    # be seen by a program; bits are only ever added.
    shallow, shallow_id = tree.make("s")
    deep, deep_id = tree.make("d1/d2/d3")
    mid, mid_id = tree.make("m1/m2")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        assert maps.levels_mask() == 0
        maps.install(1, {shallow_id}, max_entries=8)
        assert maps.levels_mask() == 1 << level_of(shallow)
        maps.update(1, add={deep_id}, remove={shallow_id})
        assert maps.levels_mask() == (1 << level_of(shallow)) | (1 << level_of(deep))
        assert maps.install_many([(2, {mid_id}, 8)]) == {}
        want = (1 << level_of(shallow)) | (1 << level_of(deep)) | (1 << level_of(mid))
        assert maps.levels_mask() == want
        maps.delete_many([1, 2])
        assert maps.levels_mask() == want


def test_cgroup_levels_resolver(tree: Tree) -> None:
    levels = CgroupFsLevels()
    try:
        a, a_id = tree.make("x/y/z")
        assert levels.level(a_id) == level_of(a)
        assert levels.level(os.stat(tree.base).st_ino) == 1
        assert levels.level(1) == 0  # the root cgroup
        gone, gone_id = tree.make("gone")
        _rmdir(gone)
        assert levels.level(gone_id) == GONE
        # the ID of a kernfs file (cgroup.procs) is not a cgroup: nothing can be in it
        assert levels.level(os.stat(a / "cgroup.procs").st_ino) == GONE
        assert levels.level(2**62) == GONE  # never allocated
    finally:
        levels.close()
