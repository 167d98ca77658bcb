"""Fixtures of the real-kernel tests: scratch pin dirs, scratch cgroups, test BPF programs
and the policy programs' environment, each removed whatever the test did. The helpers
they are made of (and the modules' skip reasons) are in kernelkit.py."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import kernelkit
import pytest
from kernelkit import Cgroups, CgroupTree, Env, Programs


@pytest.fixture
def pin_dirs() -> Iterator[Callable[[], Path]]:
    """Makes unique pin dir paths (not created: PinnedFilterMaps does that) and removes
    them, pins included, whatever the test did."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(kernelkit.scratch_pin_dir())


@pytest.fixture
def pin_dir(pin_dirs: Callable[[], Path]) -> Path:
    return pin_dirs()


@pytest.fixture
def cgroup_mount() -> Path:
    """The cgroup v2 mount point; skips where the test cannot make cgroups under it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates cgroups under the cgroup v2 mount")
    mount = kernelkit.cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 (cgroup2) filesystem mounted")
    return mount


@pytest.fixture
def cgroup_tree(cgroup_mount: Path) -> Iterator[CgroupTree]:
    """A scratch cgroup under the mount to build trees in (``make("a/b/c")``); removed,
    with all below it, deepest first."""
    tree = CgroupTree(cgroup_mount)
    try:
        yield tree
    finally:
        tree.close()


@pytest.fixture
def cgroups(cgroup_mount: Path) -> Iterator[Cgroups]:
    """Makes empty cgroups right under the mount, ``cgroups()`` -> (directory, cgroup ID);
    removes them."""
    made = Cgroups(cgroup_mount)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def programs() -> Iterator[Programs]:
    """Loads test BPF programs (``programs.load(source, pin_dir)``); detaches them after."""
    p = Programs()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def programs_env() -> Iterator[Env]:
    """A started ProgramManager (one compile) for the module; see kernelkit.program_env."""
    with kernelkit.program_env() as env:
        yield env


@pytest.fixture
def loaded(programs_env: Env) -> Iterator[Env]:
    """The module's program environment, emptied of policies, maps and events after."""
    with kernelkit.emptied_after(programs_env) as env:
        yield env
