"""A killed real node's footprint, made for real and reclaimed (tpfilter_dev.nodeleftovers).

A CI run failed because a killed run's node address was still on ``lo``. Each test here
makes such a footprint under names of its own (an address, a bridge, a work directory with
a tmpfs mounted in it, a pinned network namespace holding a veth, a cgroup with a live
process in it, the process of a "daemon"), so it runs beside a live real node of the e2e
suite without touching it, and checks the host afterwards rather than what reclaim says.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tpfilter_dev import nodeleftovers
from tpfilter_dev.nodeleftovers import NodeFootprint

pytestmark = pytest.mark.kernel

if os.geteuid() != 0 or shutil.which("ip") is None:
    pytest.skip("needs root and iproute2 (CI has both)", allow_module_level=True)


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def footprint() -> Iterator[NodeFootprint]:
    tag = secrets.token_hex(3)
    fp = NodeFootprint(
        address=f"100.96.254.{secrets.randbelow(250) + 2}",
        bridge=f"tpflo{tag}",
        workdir_prefix=f"tpf-leftover-{tag}-",
        cgroup_root=f"tpf-leftover-{tag}",
        netns_prefix=f"tpflo-{tag}-",
    )
    yield fp
    nodeleftovers.reclaim(fp)  # whatever the test left


def unified() -> Path:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    raise AssertionError("no cgroup2 mount")


def sleeper(cgroup: Path | None = None, argv0: str = "sleep") -> subprocess.Popen[bytes]:
    """A process that sleeps, started in ``cgroup`` if given."""
    stmt = "import time; time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", stmt, argv0])
    if cgroup is not None:
        (cgroup / "cgroup.procs").write_text(str(proc.pid))
    return proc


def make_footprint(fp: NodeFootprint) -> dict[str, object]:
    """What a killed node leaves, under ``fp``'s names."""
    sh("ip", "addr", "add", f"{fp.address}/32", "dev", "lo")
    sh("ip", "link", "add", fp.bridge, "type", "bridge")
    workdir = Path(tempfile.mkdtemp(prefix=fp.workdir_prefix))
    mnt = workdir / "kubelet" / "pods" / "volume"
    mnt.mkdir(parents=True)
    sh("mount", "-t", "tmpfs", "tmpfs", str(mnt))
    netns = f"{fp.netns_prefix}pod"
    sh("ip", "netns", "add", netns)
    veth = f"v{fp.bridge[5:]}"
    sh("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    cgroup = unified() / fp.cgroup_root / "pod" / "container"
    cgroup.mkdir(parents=True)
    container = sleeper(cgroup)
    return {"workdir": workdir, "mnt": mnt, "netns": netns, "veth": veth, "cgroup": cgroup,
            "container": container}  # fmt: skip


def on_lo(address: str) -> bool:
    return f" {address}/32 " in sh("ip", "-4", "addr", "show", "dev", "lo")


def link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def test_a_dead_nodes_footprint_is_removed_whole(footprint: NodeFootprint) -> None:
    made = make_footprint(footprint)
    container = made["container"]
    assert isinstance(container, subprocess.Popen)
    assert nodeleftovers.live_daemons(footprint) == []  # nothing of it is alive

    removed = nodeleftovers.reclaim(footprint)

    assert not on_lo(footprint.address)
    assert not link_exists(footprint.bridge)
    assert not link_exists(str(made["veth"]))  # went with its namespace
    assert not (nodeleftovers.NETNS_DIR / str(made["netns"])).exists()
    assert str(made["mnt"]) not in Path("/proc/self/mountinfo").read_text()
    assert not Path(str(made["workdir"])).exists()
    assert not (unified() / footprint.cgroup_root).exists()
    assert container.wait(timeout=10) == -9  # the container's process was killed
    assert f"address {footprint.address} on lo" in removed
    assert f"network namespace {made['netns']}" in removed


def test_a_namespace_a_process_is_in_stays(footprint: NodeFootprint) -> None:
    """A pod namespace some process still uses is not a leftover, whatever its name."""
    netns = f"{footprint.netns_prefix}live"
    sh("ip", "netns", "add", netns)
    inside = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", "import time; time.sleep(600)"]
    )
    try:
        deadline = time.monotonic() + 10
        pinned = (nodeleftovers.NETNS_DIR / netns).stat().st_ino
        while os.stat(f"/proc/{inside.pid}/ns/net").st_ino != pinned:
            assert time.monotonic() < deadline, "the process never entered the namespace"
            time.sleep(0.05)
        assert nodeleftovers.remove_unused_netns(footprint) == []
        assert (nodeleftovers.NETNS_DIR / netns).exists()
    finally:
        inside.kill()
        inside.wait()
    assert nodeleftovers.remove_unused_netns(footprint) == [f"network namespace {netns}"]


def test_a_live_nodes_daemon_is_seen(footprint: NodeFootprint) -> None:
    """A node's daemon is a process named as one whose command line names a node work
    directory: the real node refuses to start beside it (and reclaims nothing)."""
    workdir = Path(tempfile.mkdtemp(prefix=footprint.workdir_prefix))
    daemon = subprocess.Popen(
        [sys.executable, "-c",
         "import pathlib, time; pathlib.Path('/proc/self/comm').write_text('kubelet'); "
         "time.sleep(600)",
         f"--root-dir={workdir}/kubelet"]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not nodeleftovers.live_daemons(footprint):
            assert time.monotonic() < deadline, "the daemon was never seen"
            time.sleep(0.05)
        assert nodeleftovers.live_daemons(footprint) == [f"{daemon.pid} kubelet"]
        other = NodeFootprint(
            address=footprint.address,
            bridge=footprint.bridge,
            workdir_prefix=footprint.workdir_prefix.replace("leftover", "other"),
            cgroup_root=footprint.cgroup_root,
            netns_prefix=footprint.netns_prefix,
        )
        assert nodeleftovers.live_daemons(other) == []  # another work directory's: not it
    finally:
        daemon.kill()
        daemon.wait()
    assert nodeleftovers.live_daemons(footprint) == []
