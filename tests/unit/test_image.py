"""The agent image has one definition: the Dockerfile and the Docker-free build
(scripts/build-images.sh) both run image/install-agent.sh's steps, in the same order."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["packages", "deps", "project"]


def test_dockerfile_runs_the_install_steps_in_order() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.findall(r"RUN sh /src/image/install-agent\.sh (\w+)", text) == STEPS
    # and nothing else installs packages behind the script's back
    assert "apt-get install" not in text and "pip install" not in text


def test_docker_free_build_runs_the_same_steps() -> None:
    text = (ROOT / "scripts" / "build-images.sh").read_text()
    assert re.search(r"for step in packages deps; do", text)
    assert re.search(r"install-agent\.sh project /src", text)
    assert "apt-get install" not in text and "pip install" not in text


def test_every_package_is_explained() -> None:
    packages = [
        line.replace("@ARCH@", "<arch>")
        for line in (ROOT / "image" / "agent-packages.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    readme = (ROOT / "image" / "README.md").read_text()
    assert packages and all(f"`{p}`" in readme for p in packages), packages
