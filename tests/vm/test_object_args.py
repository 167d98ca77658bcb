"""Kernel-object arguments of kprobes (cred, user_namespace, capability, bpf_map, bpf_attr,
perf_event, net_device, iov_iter, kiocb) on Debian's stock kernel, loaded by the agent's own
ProgramManager: a process in a selected container changes its IDs, calls chroot, creates a
BPF map and loads a BPF program, opens a kprobe perf event, sets lo's flags and writes a
file; each event's fields are checked against what the process did, and the Sigkill
selectors against a process of another container and of the host.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernelkit import Cgroups, Env, emptied_after

from tpfilter.models import Policy, parse_policy
from tpfilter_dev import contain

POLICY_ID = 34
KILLED = -9
PRELUDE = """
import ctypes, fcntl, os, socket, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(321, cmd, buf, 128)
    if fd < 0:
        sys.exit(100 + ctypes.get_errno())
    return fd
"""


def run_py(cgroup: Path | None, code: str) -> subprocess.CompletedProcess[bytes]:
    command = ["/usr/bin/python3", "-S", "-c", PRELUDE + code]
    argv = command if cgroup is None else contain.argv(cgroup, command, pid_ns="new")
    return subprocess.run(argv, capture_output=True, timeout=120)


def policy(name: str, **spec: Any) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": name, "uid": name},
            "spec": {"podSelector": {"matchLabels": {"app": name}}, **spec},
        }
    )


def arg(index: int, operator: str, *values: Any) -> dict[str, Any]:
    return {"index": index, "operator": operator, "values": list(values)}


def selector(*match: dict[str, Any], action: str = "Post") -> dict[str, Any]:
    return {"matchArgs": list(match), "matchActions": [{"action": action}]}


@pytest.fixture
def loaded(env: Env) -> Iterator[Env]:
    with emptied_after(env) as e:
        yield e


def load(env: Env, cg_id: int, *kprobes: dict[str, Any]) -> None:
    env.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    env.pods[cg_id] = ("ns", "pod-obj", "c")
    (status,) = env.manager.sync([(policy("obj", kprobes=list(kprobes)), POLICY_ID)]).values()
    assert status.state == "loaded", status


def events(env: Env, hook: str) -> list[dict[str, Any]]:
    return [e for e in env.lines() if e["hook"] == hook and e["pod"] == "pod-obj"]


HOST_USER_NS = os.stat("/proc/1/ns/user").st_ino


def test_cred_user_namespace_and_capability(loaded: Env, cgroups: Cgroups) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    load(
        loaded,
        cg_id,
        {"call": "commit_creds", "args": [{"index": 0, "type": "cred", "label": "new"}]},
        {
            "call": "security_capable",
            "args": [
                {"index": 0, "type": "cred"},
                {"index": 1, "type": "user_namespace"},
                {"index": 2, "type": "capability"},
            ],
            "selectors": [
                selector(arg(2, "Equal", "CAP_SYS_CHROOT"), action="Sigkill"),
                selector(arg(2, "Equal", 13)),  # CAP_NET_RAW, as a number
            ],
        },
    )
    ids = run_py(cg, "os.setresgid(1001, 1002, 1003); os.setresuid(2001, 2002, 2003)")
    assert ids.returncode == 0, ids.stderr
    raw = run_py(cg, "socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)")
    assert raw.returncode == 0, raw.stderr
    assert run_py(cg, "os.chroot('/')").returncode == KILLED
    assert run_py(other, "os.chroot('/')").returncode == 0  # another container
    assert run_py(None, "os.chroot('/')").returncode == 0  # the host

    creds = [e["args"][0] for e in events(loaded, "kprobe/commit_creds")]  # execs' too
    root_ns = {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": HOST_USER_NS}}
    first = next(i for i, c in enumerate(creds) if c["gid"] == 1001)
    gids, uids = creds[first : first + 2]
    assert (gids["uid"], gids["gid"], gids["egid"], gids["sgid"], gids["fsgid"]) == (
        0, 1001, 1002, 1003, 1002,
    )  # fmt: skip
    assert "CAP_SETUID" in gids["caps"]["effective"] and gids["user_ns"] == root_ns
    assert (uids["uid"], uids["euid"], uids["suid"], uids["fsuid"], uids["gid"]) == (
        2001, 2002, 2003, 2002, 1001,
    )  # fmt: skip
    # no uid 0 left: the kernel clears the permitted and effective sets
    assert uids["caps"]["effective"] == [] and uids["caps"]["permitted"] == []
    assert uids["securebits"] == [] and uids["user_ns"] == root_ns

    checks = events(loaded, "kprobe/security_capable")
    posted = [e for e in checks if e["selector"] == 1]  # the raw socket's check
    killed = [e for e in checks if e["selector"] == 0]  # chroot's (Sigkill posts too)
    assert posted and killed and len(posted) + len(killed) == len(checks), checks
    cred, ns, cap = posted[0]["args"]
    assert cap == {"value": 13, "name": "CAP_NET_RAW"}
    assert ns == root_ns and cred["uid"] == 0 and "CAP_NET_RAW" in cred["caps"]["effective"]
    assert killed[0]["args"][2] == {"value": 18, "name": "CAP_SYS_CHROOT"}
    assert killed[0]["action"] == "sigkill"


BPF_MAP = "struct.pack('<7I', 2, 4, 8, 3, 0, 0, 0) + b'tpfmap'"  # ARRAY, 4, 8, 3; map_name
BPF_PROG = """
insns = bytes([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0])  # r0 = 0; exit
code = ctypes.create_string_buffer(insns)
gpl = ctypes.create_string_buffer(b"GPL")
attr = struct.pack('<IIQQIIQII', 1, 2, ctypes.addressof(code), ctypes.addressof(gpl),
                   0, 0, 0, 0, 0) + b'tpfprog'
bpf(5, attr)
"""


def test_bpf_map_and_bpf_attr(loaded: Env, cgroups: Cgroups) -> None:
    cg, cg_id = cgroups()
    load(
        loaded,
        cg_id,
        {"call": "security_bpf_map", "args": [{"index": 0, "type": "bpf_map"}]},
        {
            "call": "security_bpf",
            "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "bpf_attr"}],
            "selectors": [selector(arg(0, "Equal", 5))],  # BPF_PROG_LOAD only
        },
    )
    made = run_py(cg, f"bpf(0, {BPF_MAP})")
    assert made.returncode == 0, made.stderr
    prog = run_py(cg, BPF_PROG)
    assert prog.returncode == 0, prog.stderr
    maps = [e["args"][0] for e in events(loaded, "kprobe/security_bpf_map")]
    assert {
        "MapType": 2, "KeySize": 4, "ValueSize": 8, "MaxEntries": 3, "MapName": "tpfmap"
    } in maps  # fmt: skip
    (load_event,) = events(loaded, "kprobe/security_bpf")
    assert load_event["args"] == [5, {"ProgType": 1, "InsnCnt": 2, "ProgName": "tpfprog"}]


PERF_KPROBE = """
name = ctypes.create_string_buffer(b"do_sys_openat2")
attr = struct.pack('<IIQQQQQIIQQ', {type}, 128, 0, 0, 0, 0, 0, 0, 0,
                   ctypes.addressof(name), 0).ljust(128, b'\\0')
buf = ctypes.create_string_buffer(attr, 128)
fd = libc.syscall(298, buf, -1, 0, -1, 0)
sys.exit(0 if fd >= 0 else 100 + ctypes.get_errno())
"""


def test_perf_event_of_a_kprobe(loaded: Env, cgroups: Cgroups) -> None:
    cg, cg_id = cgroups()
    load(
        loaded,
        cg_id,
        {"call": "security_perf_event_alloc", "args": [{"index": 0, "type": "perf_event"}]},
    )
    pmu = int(Path("/sys/bus/event_source/devices/kprobe/type").read_text())
    opened = run_py(cg, PERF_KPROBE.format(type=pmu))
    assert opened.returncode == 0, opened.stderr
    perf = [e["args"][0] for e in events(loaded, "kprobe/security_perf_event_alloc")]
    assert {"Type": pmu, "Config": 0, "ProbeOffset": 0, "KprobeFunc": "do_sys_openat2"} in perf


SET_LO_FLAGS = """
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
req = fcntl.ioctl(s, 0x8913, struct.pack('16sH', b'lo', 0).ljust(40, b'\\0'))  # SIOCGIFFLAGS
fcntl.ioctl(s, 0x8914, req)  # SIOCSIFFLAGS: the same flags
"""


def test_net_device_name_with_string_operators(loaded: Env, cgroups: Cgroups) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    load(
        loaded,
        cg_id,
        {
            "call": "__dev_change_flags",
            "args": [{"index": 0, "type": "net_device", "label": "dev"}],
            "selectors": [
                selector(arg(0, "NotEqual", "lo"), action="Sigkill"),  # never true here
                selector(arg(0, "Prefix", "l"), arg(0, "Postfix", "o")),
            ],
        },
    )
    first = run_py(cg, SET_LO_FLAGS)
    assert first.returncode == 0, first.stderr
    (posted,) = events(loaded, "kprobe/__dev_change_flags")
    assert posted["args"] == [{"name": "lo"}] and posted["selector"] == 1
    load(
        loaded,
        cg_id,
        {
            "call": "__dev_change_flags",
            "args": [{"index": 0, "type": "net_device"}],
            "selectors": [selector(arg(0, "Equal", "lo"), action="Sigkill")],
        },
    )
    assert run_py(cg, SET_LO_FLAGS).returncode == KILLED
    assert run_py(other, SET_LO_FLAGS).returncode == 0  # another container


def test_iov_iter_count_and_kiocb_path_on_a_write(loaded: Env, cgroups: Cgroups) -> None:
    cg, cg_id = cgroups()
    with tempfile.TemporaryDirectory(prefix="tpf-obj-") as tmp:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", tmp], check=True)  # shmem: generic
        try:
            load(
                loaded,
                cg_id,
                {
                    "call": "generic_file_write_iter",
                    "args": [
                        {"index": 0, "type": "kiocb", "label": "file"},
                        {"index": 1, "type": "iov_iter"},
                    ],
                    "selectors": [selector(arg(0, "Postfix", "/written.txt"))],
                },
            )
            for name in ("written.txt", "other.txt"):
                code = f"open({tmp + '/' + name!r}, 'wb', buffering=0).write(b'x' * 11)"
                wrote = run_py(cg, code)
                assert wrote.returncode == 0, wrote.stderr
        finally:
            subprocess.run(["umount", tmp], check=True)
    (posted,) = events(loaded, "kprobe/generic_file_write_iter")
    assert posted["args"] == [f"{tmp}/written.txt", {"count": 11}]


def test_module_of_a_filesystem_type(loaded: Env, cgroups: Cgroups) -> None:
    """The guest has no module files to load, but 9p is a module: a mount of type 9p takes
    a reference on it (try_module_get of the file system type's owner) before it fails."""
    cg, cg_id = cgroups()
    load(loaded, cg_id, {"call": "try_module_get", "args": [{"index": 0, "type": "module"}]})
    with tempfile.TemporaryDirectory(prefix="tpf-obj-") as tmp:
        code = f"sys.exit(libc.mount(b'tpf', {tmp.encode()!r}, b'9p', 0, b'trans=fd'))"
        assert run_py(cg, code).returncode != 0  # no file descriptors given: refused
    modules = [e["args"][0] for e in events(loaded, "kprobe/try_module_get")]
    assert {"name": "9p", "tainted": []} in modules, modules
