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

import os
import signal
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernelkit import (
    CHECK_EXEC,
    KILL_EXEC,
    CgroupTree,
    Programs,
    answers,
    cgroup2_mount,
    cgroup_id,
    expect,
    kernel_marks,
    run_in_cgroup,
    skip_reason,
)

from tpfilter import bpfsys
from tpfilter.bpfmaps import LEVELS_PIN_NAME, OUTER_PIN_NAME, PinnedFilterMaps
from tpfilter.descendants import GONE, UNKNOWN, WALK_ALL, CgroupFsLevels
from tpfilter_dev.cgroupfs import rmdir_cgroup

CGROUP2 = cgroup2_mount()
pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", hierarchy_root=True, bcc=True)
)


# -- helpers ---------------------------------------------------------------------------------


def exec_nested(container: Path, nested: Sequence[str] = (), argv: Sequence[str] = ()) -> int:
    """Exec ``argv`` (default /bin/true) in a process that entered ``container``, made the
    cgroups ``container/nested[0]/nested[1]/...`` (those missing) and moved into the
    deepest, all by itself before its exec. Returns its exit status (-9: SIGKILL)."""
    return run_in_cgroup(list(argv) or ["/bin/true"], container, nested)


def observe(bpf: Any, container: Path, nested: Sequence[str] = ()) -> dict[int, bool]:
    """What policy_filter_check() said for an exec in container/nested..., freshly."""
    bpf[b"check_results"].clear()
    assert exec_nested(container, nested) == 0
    return answers(bpf, cgroup_id(container.joinpath(*nested)))


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
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    pod, pod_id = cgroup_tree.make("kubepods/pod-a")
    a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
    b, b_id = cgroup_tree.make("kubepods/pod-b/ctr-b")
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
        other, _ = cgroup_tree.make("elsewhere/x/y/z")  # deeper than the container, elsewhere
        assert observe(bpf, other) == expect(set())
        assert pod_id not in maps.read_all()[1].cgroup_ids


def test_sigkill_policy_still_kills_after_moving_into_a_child_cgroup(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
    b, _ = cgroup_tree.make("kubepods/pod-b/ctr-b")
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a_id}, max_entries=8)
        programs.load(KILL_EXEC, pin_dir)
        assert exec_nested(a) == -signal.SIGKILL
        assert exec_nested(a, ["child"]) == -signal.SIGKILL
        assert exec_nested(a, ["child", "grandchild"]) == -signal.SIGKILL
        assert exec_nested(b) == 0
        assert exec_nested(b, ["child"]) == 0


def test_without_the_walk_a_child_cgroup_escapes(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    # What the check did before (exact cgroup only): clearing the levels mask by hand
    # turns the walk off, and the process in the child cgroup is no longer matched.
    a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
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
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
    early, _ = cgroup_tree.make("kubepods/pod-a/ctr-a/made-before-the-policy/and-below")
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    maps.install(1, {a_id}, max_entries=8)
    bpf = programs.load(CHECK_EXEC, pin_dir)
    assert observe(bpf, early) == expect({1})

    # The agent and the program go away; a child is made meanwhile; both come back.
    programs.unload(bpf)
    maps.close()
    during, _ = cgroup_tree.make("kubepods/pod-a/ctr-a/made-while-no-agent-ran")
    bpf = programs.load(CHECK_EXEC, pin_dir)  # a program alone, before the agent
    assert observe(bpf, during) == expect({1})
    with PinnedFilterMaps(pin_dir=pin_dir) as again:
        assert again.adopted
        assert observe(bpf, during) == expect({1})
        assert observe(bpf, a, ["made-after-restart"]) == expect({1})


def test_nothing_stale_remains_after_rmdir(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
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
        rmdir_cgroup(a / f"child-{i}" / "grandchild")
        rmdir_cgroup(a / f"child-{i}")
    assert everything_pinned(pin_dir) == before  # ... so nothing is left after rmdir
    # A new cgroup under the same name is a new cgroup (new ID), matched the same way.
    assert observe(bpf, a, ["child-0"]) == expect({1})
    assert os.stat(a / "child-0").st_ino not in child_ids


def test_unknown_levels_fall_back_to_every_level(
    pin_dir: Path, cgroup_tree: CgroupTree, programs: Programs
) -> None:
    # An agent that cannot tell a container's depth (e.g. in a cgroup namespace) sets the
    # "every level" bit: slower on a miss, but a child cgroup still does not escape.
    a, a_id = cgroup_tree.make("kubepods/pod-a/ctr-a")
    b, _ = cgroup_tree.make("kubepods/pod-b/ctr-b")
    with PinnedFilterMaps(pin_dir=pin_dir, levels=_UnknownLevels()) as maps:
        maps.install(1, {a_id}, max_entries=8)
        assert maps.levels_mask() == WALK_ALL
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, a, ["child", "grandchild"]) == expect({1})
        assert observe(bpf, b, ["child"]) == expect(set())
        assert observe(bpf, a) == expect({1})


def test_levels_are_set_before_ids_are_published_by_every_write(
    pin_dir: Path, cgroup_tree: CgroupTree
) -> None:
    # install, update and install_many each set the bit of a new level before the ID can
    # be seen by a program; bits are only ever added.
    shallow, shallow_id = cgroup_tree.make("s")
    deep, deep_id = cgroup_tree.make("d1/d2/d3")
    mid, mid_id = cgroup_tree.make("m1/m2")
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


def test_cgroup_levels_resolver(cgroup_tree: CgroupTree) -> None:
    levels = CgroupFsLevels()
    try:
        a, a_id = cgroup_tree.make("x/y/z")
        assert levels.level(a_id) == level_of(a)
        assert levels.level(os.stat(cgroup_tree.base).st_ino) == 1
        assert CGROUP2 is not None
        assert levels.level(cgroup_id(CGROUP2)) == 0  # the root cgroup
        gone, gone_id = cgroup_tree.make("gone")
        rmdir_cgroup(gone)
        assert levels.level(gone_id) == GONE
        # the ID of a kernfs file (cgroup.procs) is not a cgroup: nothing can be in it
        assert levels.level(os.stat(a / "cgroup.procs").st_ino) == GONE
        assert levels.level(2**62) == GONE  # never allocated
    finally:
        levels.close()
