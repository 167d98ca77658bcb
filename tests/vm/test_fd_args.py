"""``fd`` and ``dentry`` kprobe arguments on Debian's stock kernel, loaded by the agent's own
ProgramManager: an fd is looked up in the calling task's file table at the call and
compared as its file's path (bpf/programs/tpf_fd.h, then the path walk of tpf_kprobe.c);
a dentry is walked up to the root of its own file system.

Processes run as a runtime starts a container's (tpfilter_dev.contain); every selector
matches only names under the test's own tmp_path, so what it catches is the test's own
process. Mounts (a bind mount, a tmpfs) are made by the test and undone after it.
"""

from __future__ import annotations

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, emptied_after

from tpfilter.models import Policy, parse_policy
from tpfilter_dev import contain

POLICY_ID = 32
# A Python snippet's exit status: the errno of what it tried, 0 if it worked.
TRY = "import os, sys\ntry:\n    {}\nexcept OSError as e:\n    sys.exit(e.errno)\nsys.exit(0)\n"
WRITE = "fd = os.open({!r}, os.O_WRONLY); os.write(fd, b'x' * {})"
READ = "fd = os.open({!r}, os.O_RDONLY); os.read(fd, 1)"


def run_py(cgroup: Path | None, statement: str) -> int:
    code = TRY.format(statement)
    command = ["/usr/bin/python3", "-S", "-c", code]
    argv = command if cgroup is None else contain.argv(cgroup, command, pid_ns="new")
    return subprocess.run(argv, capture_output=True, timeout=120).returncode


def write(cgroup: Path | None, path: Path, size: int = 1) -> int:
    return run_py(cgroup, WRITE.format(str(path), size))


def policy(name: str, **spec: Any) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, **spec},
        }
    )


def kill_if(op: str, *values: str, index: int = 0) -> dict[str, Any]:
    return {
        "matchArgs": [{"index": index, "operator": op, "values": list(values)}],
        "matchActions": [{"action": "Sigkill"}],
    }


@pytest.fixture
def loaded(env: Env) -> Iterator[Env]:
    with emptied_after(env) as e:
        yield e


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points the test makes; unmounted after it."""
    made: list[Path] = []
    try:
        yield made
    finally:
        for point in reversed(made):
            subprocess.run(["umount", "-l", str(point)], check=False)


def mount(mounts: list[Path], *args: str) -> None:
    subprocess.run(["mount", *args], check=True)
    mounts.append(Path(args[-1]))


def load(env: Env, p: Policy) -> None:
    (status,) = env.manager.sync([(p, POLICY_ID)]).values()
    assert status.state == "loaded", status


def files(directory: Path, *names: str) -> list[Path]:
    out = []
    for name in names:
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("data")
        path.chmod(0o666)
        out.append(path)
    return out


def test_fd_of_write_and_read_kills_in_the_selected_container(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-fd", "c")
    wdeny, wok, rdeny, rok = files(tmp_path, "tpf-wdeny-1", "tpf-wok", "x.tpf-rdeny", "x.ok")
    p = policy(
        "fd-write-read",
        kprobes=[
            {
                "call": "sys_write",
                "syscall": True,
                "args": [{"index": 0, "type": "fd", "label": "file"}],
                "selectors": [kill_if("Prefix", f"{tmp_path}/tpf-wdeny")],
            },
            {
                "call": "read",
                "syscall": True,
                "args": [{"index": 0, "type": "fd", "label": "file"}],
                "selectors": [kill_if("Postfix", ".tpf-rdeny")],
            },
        ],
    )
    load(loaded, p)
    assert write(cg, wdeny) == -9  # killed in the call
    assert write(cg, wok) == 0
    assert run_py(cg, READ.format(str(rdeny))) == -9
    assert run_py(cg, READ.format(str(rok))) == 0
    assert write(other, wdeny) == 0  # another container
    assert run_py(other, READ.format(str(rdeny))) == 0
    assert write(None, wdeny) == 0  # the host
    assert run_py(None, READ.format(str(rdeny))) == 0
    # Sigkill posts too: each event carries the fd's path in the argument's place
    got = [(e["hook"], e["args"], e["arg_labels"], e["pod"]) for e in loaded.lines()]
    assert got == [
        ("kprobe/__x64_sys_write", [str(wdeny)], ["file"], "pod-fd"),
        ("kprobe/__x64_sys_read", [str(rdeny)], ["file"], "pod-fd"),
    ], got
    loaded.manager.sync([])
    assert write(cg, wdeny) == 0  # deleting the policy lifts it


def test_fd_of_a_file_under_a_bind_mount_is_named_by_the_mount(
    loaded: Env, cgroups: Cgroups, tmp_path: Path, mounts: list[Path]
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    (inside,) = files(tmp_path / "src", "deep/file")
    bound = tmp_path / "bound"
    bound.mkdir()
    mount(mounts, "--bind", str(tmp_path / "src"), str(bound))
    p = policy(
        "fd-bind",
        kprobes=[
            {
                "call": "write",
                "syscall": True,
                "args": [{"index": 0, "type": "fd"}],
                "selectors": [kill_if("Equal", str(bound / "deep/file"))],
            }
        ],
    )
    load(loaded, p)
    assert write(cg, bound / "deep/file") == -9  # the walk crossed the bind mount
    assert write(cg, inside) == 0  # the same file by its other path: another name
    assert [e["args"] for e in loaded.lines()] == [[str(bound / "deep/file")]]


def test_an_fd_that_is_not_open_matches_no_operator(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    ok, other = files(tmp_path, "tpf-ok-1", "tpf-other")
    p = policy(
        "fd-unreadable",
        kprobes=[
            {
                "call": "write",
                "syscall": True,
                "args": [{"index": 0, "type": "fd"}, {"index": 2, "type": "size_t"}],
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 0, "operator": "NotPrefix", "values": [f"{tmp_path}/tpf-ok"]},
                            {"index": 2, "operator": "Equal", "values": ["7777"]},
                        ],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ],
    )
    load(loaded, p)
    assert write(cg, other, 7777) == -9  # readable, not the prefix: NotPrefix fires
    assert write(cg, ok, 7777) == 0
    assert write(cg, other, 7776) == 0
    # never open, out of the table, negative, closed: unreadable, NotPrefix does not fire
    assert run_py(cg, "os.write(9999, b'x' * 7777)") == errno.EBADF
    assert run_py(cg, "os.write(1 << 30, b'x' * 7777)") == errno.EBADF
    assert run_py(cg, "os.write(-1, b'x' * 7777)") == errno.EBADF
    closed = f"fd = os.open({str(other)!r}, os.O_WRONLY); os.close(fd); os.write(fd, b'x' * 7777)"
    assert run_py(cg, closed) == errno.EBADF
    # a pipe has no path (its dentry is cut from any tree): unreadable as well
    assert run_py(cg, "r, w = os.pipe(); os.write(w, b'x' * 7777)") == 0


def test_fd_of_a_kernel_function_posts_the_path(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    (closing,) = files(tmp_path, "sub/tpf-closed")
    p = policy(
        "fd-close",
        kprobes=[
            {  # close_fd(unsigned int fd): the fd is still in the table at the call
                "call": "close_fd",
                "args": [{"index": 0, "type": "fd", "label": "file"}],
                "selectors": [
                    {"matchArgs": [{"index": 0, "operator": "Postfix", "values": ["/tpf-closed"]}]}
                ],
            }
        ],
    )
    load(loaded, p)
    assert run_py(cg, f"os.close(os.open({str(closing)!r}, os.O_RDONLY))") == 0
    got = [(e["hook"], e["args"], e["action"]) for e in loaded.lines()]
    assert got == [("kprobe/close_fd", [str(closing)], "post")], got


def test_dentry_is_walked_to_the_root_of_its_file_system(
    loaded: Env, cgroups: Cgroups, tmp_path: Path, mounts: list[Path]
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    fs = tmp_path / "fs"
    fs.mkdir()
    mount(mounts, "-t", "tmpfs", "tpf-test", str(fs))
    victims = files(fs, "sub/a.tpf-dvictim", "sub/b.tpf-dvictim", "sub/keep")
    p = policy(
        "dentry-unlink",
        kprobes=[
            {
                "call": "security_inode_unlink",  # (struct inode *dir, struct dentry *dentry)
                "args": [{"index": 1, "type": "dentry", "label": "dentry"}],
                "selectors": [kill_if("Postfix", ".tpf-dvictim", index=1)],
            }
        ],
    )
    load(loaded, p)
    unlink = "os.unlink({!r})"
    assert run_py(cg, unlink.format(str(victims[0]))) == -9
    assert run_py(cg, unlink.format(str(victims[2]))) == 0
    assert run_py(other, unlink.format(str(victims[1]))) == 0  # another container
    # no mount crossing without a vfsmount: the name starts at the tmpfs's own root
    assert [e["args"] for e in loaded.lines()] == [["/sub/a.tpf-dvictim"]]
