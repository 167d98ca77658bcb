"""policy_filter_check() in a real BPF program, against real cgroups, as root.

tests/kernel/bpf/check_exec.c runs on every exec (raw tracepoint sched_process_exec) and
records, for policy IDs 0..4 and the exec'ing task's cgroup ID, what policy_filter_check()
answered. Each test makes fresh cgroups under the cgroup v2 mount, fills the maps through
PinnedFilterMaps, execs /bin/true inside a chosen cgroup (the child writes its own PID to
cgroup.procs between fork and exec) and reads the answers back. The program is compiled
with bcc exactly as the agent's programs are: tpfilter.bpfsrc.bcc_source().

Fixtures remove the cgroups (rmdir), detach programs and unpin maps whatever happens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kernelkit import (
    CHECK_EXEC,
    Cgroups,
    Programs,
    expect,
    kernel_marks,
    observe,
    skip_reason,
)

from tpfilter import bpfsys
from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps
from tpfilter.bpfsrc import cflags

pytestmark = kernel_marks(
    skip_reason("load BPF programs, pin maps and create cgroups", cgroup2=True, bcc=True)
)


# -- helpers ---------------------------------------------------------------------------------


def outer_map_id_of(bpf: Any) -> int:
    return bpfsys.map_info(bpf[b"policy_filter_maps"].map_fd).id


# -- tests -----------------------------------------------------------------------------------


def test_selected_cgroup_matches_and_others_do_not(
    pin_dir: Path, cgroups: Cgroups, programs: Programs
) -> None:
    a, b, c = cgroups(), cgroups(), cgroups()
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a[1]}, max_entries=8)
        maps.install(2, {b[1]}, max_entries=8)
        maps.install(3, {a[1], b[1]}, max_entries=8)
        maps.install(4, set(), max_entries=8)  # selects nothing on this node
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert outer_map_id_of(bpf) == maps.outer_map_id  # bcc opened the pinned map

        in_a, in_b, in_c = observe(bpf, a, b, c)
        assert in_a == expect({1, 3})
        assert in_b == expect({2, 3})
        assert in_c == expect(set())  # only policy 0


def test_in_place_updates_and_deletes_are_seen(
    pin_dir: Path, cgroups: Cgroups, programs: Programs
) -> None:
    a, b = cgroups(), cgroups()
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a[1]}, max_entries=8)
        maps.install(2, {b[1]}, max_entries=8)
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, a, b) == [expect({1}), expect({2})]

        maps.update(2, add={a[1]}, remove={b[1]})
        maps.delete(1)
        assert observe(bpf, a, b) == [expect({2}), expect(set())]


def test_resize_swap_keeps_answers(pin_dir: Path, cgroups: Cgroups, programs: Programs) -> None:
    a, b = cgroups(), cgroups()
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        maps.install(1, {a[1]}, max_entries=8)
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert observe(bpf, a, b) == [expect({1}), expect(set())]
        old = maps.read_all()[1]

        maps.install(1, old.cgroup_ids | {b[1]}, max_entries=1024)
        assert maps.read_all()[1].max_entries == 1024
        assert observe(bpf, a, b) == [expect({1}), expect({1})]


def test_agent_restart_and_recompiled_program(
    pin_dir: Path, cgroups: Cgroups, programs: Programs
) -> None:
    a, b = cgroups(), cgroups()
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    maps.install(1, {a[1]}, max_entries=8)
    maps.install(2, {a[1], b[1]}, max_entries=8)
    bpf = programs.load(CHECK_EXEC, pin_dir)
    before = observe(bpf, a, b)
    assert before == [expect({1, 2}), expect({2})]
    # The agent and its program go away; only the pin holds the maps now.
    programs.unload(bpf)
    maps.close()

    with PinnedFilterMaps(pin_dir=pin_dir) as again:
        assert again.adopted
        bpf = programs.load(CHECK_EXEC, pin_dir)
        assert outer_map_id_of(bpf) == again.outer_map_id
        assert observe(bpf, a, b) == before
        # The adopted maps are the ones the new program reads.
        again.update(1, add={b[1]}, remove=set())
        assert observe(bpf, a, b) == [expect({1, 2}), expect({1, 2})]


def test_program_first_then_agent_adopts_the_map_bcc_pinned(
    pin_dir: Path, cgroups: Cgroups, programs: Programs
) -> None:
    # Nothing pinned yet: bcc creates the outer map from the header's declaration. The
    # agent must be able to adopt it and put its own inner maps in, which only works if
    # the header declares exactly the shape PinnedFilterMaps makes (flags included).
    a = cgroups()
    bpf = programs.load(CHECK_EXEC, pin_dir)
    assert (pin_dir / OUTER_PIN_NAME).exists()
    with PinnedFilterMaps(pin_dir=pin_dir) as maps:
        assert maps.adopted
        assert maps.outer_map_id == outer_map_id_of(bpf)
        maps.install(3, {a[1]}, max_entries=8)
        assert observe(bpf, a) == [expect({3})]


def test_a_real_include_is_refused_with_a_reason(
    pin_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from bcc import BPF

    prog = tmp_path / "prog.c"
    prog.write_text(
        '#include "policy_filter.h"\n'
        "RAW_TRACEPOINT_PROBE(sched_process_exec) { return policy_filter_check(1); }\n"
    )
    with pytest.raises(Exception, match="compile"):
        BPF(src_file=str(prog).encode(), cflags=cflags(pin_dir))
    assert "must be inlined" in capfd.readouterr().err
