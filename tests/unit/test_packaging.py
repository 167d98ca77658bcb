"""The installed package carries what the agent reads at run time: an agent image installs
the wheel, with no repository beside it (the real-node e2e suite runs that image)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_bpf_sources(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("tpfilter-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    bpf = {p.relative_to(ROOT).as_posix() for p in (ROOT / "bpf").rglob("*") if p.is_file()}
    assert bpf, "the repository's bpf/ sources"
    # Every BPF source, under the package's bpf/ (bpfsrc.include_dir finds it there).
    assert {f"tpfilter/{name}" for name in bpf} <= names
    assert "tpfilter/py.typed" in names
