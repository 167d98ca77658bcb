"""tpfilter_dev.vm without booting anything: the cache's description and QEMU's argv."""

from __future__ import annotations

from pathlib import Path

from tpfilter_dev import vm


def _build(cache: Path) -> None:
    (cache / "k").write_bytes(b"")
    (cache / "i").write_bytes(b"")
    (cache / "root").mkdir()
    (cache / "current.env").write_text(
        f"KV=6.1.0-x\nKERNEL={cache}/k\nROOT={cache}/root\nINITRD={cache}/i\n"
    )


def test_current_reads_the_build(tmp_path: Path) -> None:
    _build(tmp_path)
    image = vm.VmImage.current(tmp_path)
    assert image == vm.VmImage("6.1.0-x", tmp_path / "k", tmp_path / "root", tmp_path / "i")


def test_current_is_none_without_a_complete_build(tmp_path: Path) -> None:
    assert vm.VmImage.current(tmp_path) is None
    _build(tmp_path)
    (tmp_path / "i").unlink()
    assert vm.VmImage.current(tmp_path) is None


def test_qemu_argv_shares_root_repo_and_job(tmp_path: Path) -> None:
    image = vm.VmImage("6.1.0-x", Path("/k"), Path("/r"), Path("/i"))
    argv = vm.qemu_argv(image, Path("/job"), Path("/repo"), cpus=2, memory_mb=1024)
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert [s.split(",")[1:3] for s in shares] == [
        ["path=/r", "mount_tag=root"],
        ["path=/repo", "mount_tag=src"],
        ["path=/job", "mount_tag=job"],
    ]
    assert argv[argv.index("-accel") + 1] == "tcg"  # never KVM here (see the module)
    assert argv[argv.index("-kernel") + 1] == "/k"
