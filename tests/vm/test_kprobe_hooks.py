"""Syscall kprobes, return probes, kernel and user string arguments and lsmhooks with
Override, on Debian's stock kernel, loaded by the agent's own ProgramManager (one bcc
compile for the module, plus one small module for the Override's BPF LSM program).

Processes run as a runtime starts a container's (tpfilter_dev.contain: the cgroup, a new
PID namespace). Each selector matches only names no normal program uses (paths under
/tmp/tpf-..., the xattr user.tpf-deny), so what it catches is the test's own process.
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

POLICY_ID = 31
# A Python snippet's exit status: the errno of what it tried, 0 if it worked.
TRY = "import os, sys\ntry:\n    {}\nexcept OSError as e:\n    sys.exit(e.errno)\nsys.exit(0)\n"


def run_py(cgroup: Path | None, statement: str) -> int:
    code = TRY.format(statement)
    command = ["/usr/bin/python3", "-S", "-c", code]
    argv = command if cgroup is None else contain.argv(cgroup, command, pid_ns="new")
    return subprocess.run(argv, capture_output=True, timeout=120).returncode


def policy(name: str, **spec: Any) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, **spec},
        }
    )


@pytest.fixture
def loaded(env: Env) -> Iterator[Env]:
    with emptied_after(env) as e:
        yield e


def load(env: Env, p: Policy) -> None:
    (status,) = env.manager.sync([(p, POLICY_ID)]).values()
    assert status.state == "loaded", status


def test_syscall_kprobe_on_a_user_string_kills_in_the_selected_container(
    loaded: Env, cgroups: Cgroups
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    p = policy(
        "openat-kill",
        kprobes=[
            {
                "call": "sys_openat",
                "syscall": True,
                "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "string"}],
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 1, "operator": "Prefix", "values": ["/tmp/tpf-deny"]}
                        ],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ],
    )
    load(loaded, p)
    deny, allow = "open('/tmp/tpf-deny-1')", "open('/tmp/tpf-allow-1')"
    assert run_py(cg, deny) == -9  # killed in the call
    assert run_py(cg, allow) == errno.ENOENT  # ran, and the file is not there
    assert run_py(other, deny) == errno.ENOENT  # another container
    assert run_py(None, deny) == errno.ENOENT  # the host
    loaded.manager.sync([])
    assert run_py(cg, deny) == errno.ENOENT  # deleting the policy lifts it


def test_return_probe_posts_the_return_value(loaded: Env, cgroups: Cgroups) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-ret", "c")
    p = policy(
        "openat-return",
        kprobes=[
            {
                "call": "openat",
                "syscall": True,
                "return": True,
                "args": [{"index": 1, "type": "string", "label": "path"}],
                "returnArg": {"index": 0, "type": "int"},
                "selectors": [
                    {"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/tmp/tpf-ret"]}]}
                ],
            }
        ],
    )
    load(loaded, p)
    assert run_py(cg, "open('/tmp/tpf-ret-missing')") == errno.ENOENT
    assert run_py(cg, "open('/tmp/tpf-ret-made', 'w')") == 0
    events = loaded.lines()
    got = [(e["arg_labels"], e["args"], e["pod"], e["hook"]) for e in events]
    assert got[0] == (
        ["path", "return"],
        ["/tmp/tpf-ret-missing", -errno.ENOENT],
        "pod-ret",
        "kprobe/__x64_sys_openat",
    ), events
    (made,) = [e for e in events[1:] if e["args"][0] == "/tmp/tpf-ret-made"]
    assert made["args"][1] >= 3 and "return_missing" not in made  # a file descriptor


def test_lsmhook_with_a_kernel_string_overrides_with_eperm(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    target = tmp_path / "file"
    target.write_text("x")
    target.chmod(0o666)
    p = policy(
        "setxattr-deny",
        lsmhooks=[
            {
                "hook": "inode_setxattr",
                "args": [{"index": 2, "type": "string"}],  # the name, copied into the kernel
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 2, "operator": "Equal", "values": ["user.tpf-deny"]}
                        ],
                        "matchActions": [{"action": "Override", "argError": -1}],
                    }
                ],
            }
        ],
    )
    load(loaded, p)
    (status,) = loaded.manager.statuses().values()
    assert status.hooks == (
        "kprobe/security_inode_setxattr (lsmhook inode_setxattr at security_inode_setxattr; "
        "Override: BPF LSM inode_setxattr; kprobe)",
    )

    def setxattr(cgroup: Path | None, name: str) -> int:
        return run_py(cgroup, f"os.setxattr({str(target)!r}, {name!r}, b'1')")

    assert setxattr(cg, "user.tpf-deny") == errno.EPERM
    # another name: what the file system says without the policy (tmpfs may refuse user.*)
    baseline = setxattr(None, "user.tpf-ok")
    assert baseline != errno.EPERM
    assert setxattr(cg, "user.tpf-ok") == baseline
    assert setxattr(other, "user.tpf-deny") == baseline  # another container
    assert setxattr(None, "user.tpf-deny") == baseline  # the host
    loaded.manager.sync([])
    assert setxattr(cg, "user.tpf-deny") == baseline


def test_lsmhook_file_open_compares_the_files_path_name(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    for name in ("deny-me", "allow-me"):
        (tmp_path / name).write_text("x")
        (tmp_path / name).chmod(0o644)
    p = policy(
        "file-open-deny",
        lsmhooks=[
            {
                "hook": "file_open",
                "args": [{"index": 0, "type": "file", "label": "file"}],
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 0, "operator": "Prefix", "values": [f"{tmp_path}/deny"]}
                        ],
                        "matchActions": [{"action": "Override", "argError": -13}],
                    }
                ],
            }
        ],
    )
    load(loaded, p)
    deny, allow = f"open({str(tmp_path / 'deny-me')!r})", f"open({str(tmp_path / 'allow-me')!r})"
    assert run_py(cg, deny) == errno.EACCES
    assert run_py(cg, allow) == 0
    assert run_py(other, deny) == 0  # another container
    assert run_py(None, deny) == 0  # the host
    # the walk's name is the whole path, across the mount of /tmp: exactly what was opened
    events = [e for e in loaded.lines() if e["args"][0].startswith(str(tmp_path))]
    assert [e["args"][0] for e in events] == [str(tmp_path / "deny-me")], events


def test_path_argument_postfix_kills_in_mkdir(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    for name in ("tpf-pdeny", "tpf-pok"):
        (tmp_path / name).mkdir()
        (tmp_path / name).chmod(0o777)
    p = policy(
        "mkdir-kill",
        kprobes=[
            {
                "call": "security_path_mkdir",
                "args": [{"index": 0, "type": "path"}],  # the directory made in
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 0, "operator": "Postfix", "values": ["/tpf-pdeny"]}
                        ],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            }
        ],
    )
    load(loaded, p)
    assert run_py(cg, f"os.mkdir({str(tmp_path / 'tpf-pdeny' / 'sub')!r})") == -9
    assert run_py(cg, f"os.mkdir({str(tmp_path / 'tpf-pok' / 'sub')!r})") == 0
    # (Sigkill ends the process; the mkdir it was in still completes, as in Tetragon:
    # stopping the operation is Override's work, tested above.)


def test_char_buf_of_write_and_a_user_string_of_a_kernel_function(
    loaded: Env, cgroups: Cgroups, tmp_path: Path
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    denied = tmp_path / "tpf-user-deny"
    p = policy(
        "buffers",
        kprobes=[
            {
                "call": "write",
                "syscall": True,
                "args": [
                    {"index": 1, "type": "char_buf", "sizeArgIndex": 3},
                    {"index": 2, "type": "size_t"},
                ],
                "selectors": [
                    {
                        "matchArgs": [{"index": 1, "operator": "Prefix", "values": ["tpf-secret"]}],
                        "matchActions": [{"action": "Sigkill"}],
                    },
                    {  # an integer (size_t) of a syscall; NoPost: killed, no event
                        "matchArgs": [{"index": 2, "operator": "Equal", "values": ["4444"]}],
                        "matchActions": [{"action": "Sigkill"}, {"action": "NoPost"}],
                    },
                ],
            },
            {  # its filename is a user pointer: kernel memory first fails, user memory reads
                "call": "do_sys_openat2",
                "args": [{"index": 1, "type": "string"}],
                "selectors": [
                    {
                        "matchArgs": [{"index": 1, "operator": "Equal", "values": [str(denied)]}],
                        "matchActions": [{"action": "Sigkill"}],
                    }
                ],
            },
        ],
    )
    load(loaded, p)
    write = "os.write(os.open('/dev/null', os.O_WRONLY), {!r})"
    assert run_py(cg, write.format(b"tpf-secret and more")) == -9
    assert run_py(cg, write.format(b"tpf-secre")) == 0  # 9 bytes: not the prefix
    assert run_py(cg, write.format(b"hello tpf-secret")) == 0
    assert run_py(cg, write.format(b"x" * 4444)) == -9
    assert run_py(cg, write.format(b"x" * 4443)) == 0
    posted = [e["args"][0] for e in loaded.lines() if e["hook"] == "kprobe/__x64_sys_write"]
    assert posted == ["tpf-secret and more"]  # the first selector posts; NoPost does not
    assert run_py(cg, f"open({str(denied)!r})") == -9
    assert run_py(cg, f"open({str(tmp_path / 'other')!r})") == errno.ENOENT


def test_filename_argument_is_its_name(loaded: Env, cgroups: Cgroups) -> None:
    """A ``struct filename *`` (getname()'s kernel copy of a user path) of do_filp_open,
    read as its ``name``: Postfix kills, and a posted event carries the name."""
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-fname", "c")
    p = policy(
        "filename-kill",
        kprobes=[
            {
                "call": "do_filp_open",
                "args": [{"index": 1, "type": "filename", "label": "name"}],
                "selectors": [
                    {
                        "matchArgs": [
                            {"index": 1, "operator": "Postfix", "values": ["/tpf-fname-deny"]}
                        ],
                        "matchActions": [{"action": "Sigkill"}],
                    },
                    {"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["/tmp/tpf-fn"]}]},
                ],
            }
        ],
    )
    load(loaded, p)
    assert run_py(cg, "open('/tmp/tpf-fname-deny')") == -9
    assert run_py(cg, "open('/tmp/tpf-fname-allow')") == errno.ENOENT
    assert run_py(other, "open('/tmp/tpf-fname-deny')") == errno.ENOENT
    events = loaded.lines()
    names = [(e["args"], e["action"], e["hook"]) for e in events]
    assert (["/tmp/tpf-fname-deny"], "sigkill", "kprobe/do_filp_open") in names, events
    assert (["/tmp/tpf-fname-allow"], "post", "kprobe/do_filp_open") in names, events
