"""Where the syscall table is looked for (tracefs.unistd_candidates): a node's agent image
and the chart's /lib/modules mount carry kernel headers, not always linux-libc-dev, and the
sys_enter hooks need the table from one of them."""

from __future__ import annotations

from pathlib import Path

from tpfilter.programs.tracefs import UNISTD_CANDIDATES, parse_syscall_table, unistd_candidates

TABLE = "arch/x86/include/generated/uapi/asm/unistd_64.h"


def test_the_running_kernels_headers_first_then_libc_then_installed_newest_first(
    tmp_path: Path,
) -> None:
    for version in ("6.1.0-57-amd64", "6.12.1-amd64"):
        header = tmp_path / f"linux-headers-{version}" / TABLE
        header.parent.mkdir(parents=True)
        header.write_text("#define __NR_unshare 272\n")
    (tmp_path / "linux-headers-6.1.0-57-common").mkdir()  # no table in the common part
    got = unistd_candidates("6.18.0-test", usr_src=tmp_path)
    assert got == [
        Path("/lib/modules/6.18.0-test/build") / TABLE,
        *UNISTD_CANDIDATES,
        tmp_path / "linux-headers-6.12.1-amd64" / TABLE,
        tmp_path / "linux-headers-6.1.0-57-amd64" / TABLE,
    ]
    assert parse_syscall_table(got[-1].read_text()) == {"unshare": 272}
