"""Kernel-object arguments of kprobes (cred, user_namespace, capability, module, bpf_map,
bpf_attr, perf_event, net_device, iov_iter, kiocb), without a kernel: the node's BTF is a
fake with Debian 6.1's offsets. What runs in BPF is tested in the VM
(tests/vm/test_object_args.py)."""

from __future__ import annotations

import struct
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from tpfilter.programs import layout
from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.events import RawEvent, _arg_value
from tpfilter.programs.kprobes import KprobeHooks
from tpfilter.programs.layout import IntType, Kind, Op
from tpfilter.programs.objargs import (
    NO_HOP,
    OBJ_TYPES,
    STRPTR,
    decode,
    decode_copy,
    field_reads,
)
from tpfilter.programs.objargs import (
    layout as obj_layout,
)
from tpfilter.programs.plan import NodeEnv

OFFSETS = {  # Debian 6.1 (x86-64) offsets
    ("cred", "uid"): 4, ("cred", "gid"): 8, ("cred", "suid"): 12, ("cred", "sgid"): 16,
    ("cred", "euid"): 20, ("cred", "egid"): 24, ("cred", "fsuid"): 28, ("cred", "fsgid"): 32,
    ("cred", "securebits"): 36, ("cred", "cap_inheritable"): 40, ("cred", "cap_permitted"): 48,
    ("cred", "cap_effective"): 56, ("cred", "user_ns"): 136,
    ("user_namespace", "level"): 200, ("user_namespace", "owner"): 204,
    ("user_namespace", "group"): 208, ("user_namespace", "ns"): 216, ("ns_common", "inum"): 16,
    ("module", "name"): 24, ("module", "taints"): 472,
    ("bpf_map", "map_type"): 24, ("bpf_map", "key_size"): 28, ("bpf_map", "value_size"): 32,
    ("bpf_map", "max_entries"): 36, ("bpf_map", "name"): 96,
    ("bpf_attr", "prog_type"): 0, ("bpf_attr", "insn_cnt"): 4, ("bpf_attr", "prog_name"): 48,
    ("perf_event", "attr"): 200, ("perf_event_attr", "type"): 0,
    ("perf_event_attr", "config"): 8, ("perf_event_attr", "kprobe_func"): 56,
    ("perf_event_attr", "probe_offset"): 64,
    ("net_device", "name"): 0, ("iov_iter", "count"): 16, ("kiocb", "ki_filp"): 0,
    ("file", "f_path"): 16, ("path", "mnt"): 0, ("path", "dentry"): 8,
    ("vfsmount", "mnt_root"): 0, ("dentry", "d_parent"): 24, ("dentry", "d_name"): 32,
    ("qstr", "name"): 8, ("mount", "mnt_parent"): 16, ("mount", "mnt_mountpoint"): 24,
    ("mount", "mnt"): 32,
}  # fmt: skip


class ObjKernel:
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        "commit_creds": ("struct cred *",),
        "security_capable": ("struct cred *", "struct user_namespace *", "int", "unsigned int"),
        "security_bpf_map": ("struct bpf_map *", "fmode_t"),
        "security_bpf": ("int", "union bpf_attr *", "unsigned int"),
        "security_perf_event_alloc": ("struct perf_event *",),
        "__dev_change_flags": ("struct net_device *", "unsigned int", "void *"),
        "do_init_module": ("struct module *",),
        "generic_file_write_iter": ("struct kiocb *", "struct iov_iter *"),
        "three": ("struct cred *", "struct bpf_map *", "struct module *"),
        "__x64_sys_setuid": ("struct pt_regs *",),
    }
    missing: ClassVar[set[tuple[str, str]]] = set()

    def func_params(self, func: str) -> tuple[str, ...] | None:
        return self.funcs.get(func)

    def func_return(self, func: str) -> str | None:
        return "int" if func in self.funcs else None

    def member_offset(self, struct_name: str, member: str) -> int | None:
        if (struct_name, member) in self.missing:
            return None
        return OFFSETS.get((struct_name, member))

    def has_lsm_hook(self, hook: str) -> bool:
        return False


KERNEL = ObjKernel()
ENV = NodeEnv(
    tracepoint_format=lambda s, e: None,
    syscall_numbers={},
    kprobes=None,
    lsm=None,
    kernel=KERNEL,
    kprobe_hook=KprobeHooks(),
)


def spec(call: str, args: list[Any], match: list[Any], **extra: Any) -> dict[str, Any]:
    selectors = [{"matchArgs": match, "matchActions": [{"action": "Sigkill"}]}] if match else []
    return {"kprobes": [{"call": call, "args": args, "selectors": selectors, **extra}]}


def compiled(call: str, args: list[Any], match: list[Any] | None = None) -> Any:
    plan = compile_spec(spec(call, args, match or []), ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    return cfg


def refused(call: str, args: list[Any], match: list[Any] | None = None, **extra: Any) -> str:
    plan = compile_spec(spec(call, args, match or [], **extra), ENV)
    assert not plan.ok
    (reason,) = plan.unsupported
    return reason


def test_cred_is_three_copies_with_offsets_from_btf_and_one_pointer_hop() -> None:
    assert field_reads("cred", KERNEL) == (
        (4, NO_HOP, 60, 0, 0),  # uid .. securebits, the three sets: adjacent here
        (200, 136, 12, 60, 0),  # through cred->user_ns: level, owner, group
        (216 + 16, 136, 4, 72, 0),  # ns.inum
    )


def test_every_type_fits_the_reader() -> None:
    for name, t in OBJ_TYPES.items():
        if not t.fields:
            continue
        reads = field_reads(name, KERNEL)
        assert not isinstance(reads, str), (name, reads)
        assert len(reads) <= 16 and all(dst < 128 and size < 64 for _, _, size, dst, _ in reads)
    perf = field_reads("perf_event", KERNEL)
    assert not isinstance(perf, str)
    assert perf[-1] == (200 + 56, NO_HOP, 63, 20, STRPTR)  # attr.kprobe_func: a char *


def test_a_missing_member_refuses_the_type_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ObjKernel, "missing", {("user_namespace", "group")})
    reason = refused("commit_creds", [{"index": 0, "type": "cred"}])
    assert "spec.kprobes[0].args[0]" in reason
    assert "user_namespace has no member group in this kernel's BTF" in reason


def test_cred_user_namespace_capability_on_security_capable() -> None:
    cfg = compiled(
        "security_capable",
        [
            {"index": 0, "type": "cred"},
            {"index": 1, "type": "user_namespace"},
            {"index": 2, "type": "capability"},
        ],
        [{"index": 2, "operator": "Equal", "values": ["CAP_SYS_ADMIN", "cap_net_raw", 7]}],
    )
    assert [(a.kind, a.src, a.obj) for a in cfg.args] == [
        (Kind.OBJ, 0, "cred"),
        (Kind.OBJ, 1, "user_namespace"),
        (Kind.OBJ, 3, "capability"),  # values[3]: the int itself
    ]
    assert [(slot, arg) for slot, arg, _ in cfg.obj_readers] == [(0, 0), (1, 1)]
    (m,) = cfg.selectors[0].args
    assert (m.kind, m.src, m.op, m.int_type) == (Kind.INT, 3, Op.EQ, IntType.S32)
    assert m.ints == (7, 13, 21)
    assert cfg.str_add == () and cfg.kern_strs == 0


@pytest.mark.parametrize(
    ("op", "values", "want"),
    [("GT", ["CAP_SYS_ADMIN"], 21), ("LT", [3], 3), ("Mask", [1, 4], 5)],
)
def test_capability_integer_operators(op: str, values: list[Any], want: int) -> None:
    cfg = compiled(
        "security_capable",
        [{"index": 2, "type": "capability"}],
        [{"index": 2, "operator": op, "values": values}],
    )
    assert cfg.selectors[0].args[0].imm == want


def test_net_device_name_is_a_kernel_string_at_its_offset() -> None:
    cfg = compiled(
        "__dev_change_flags",
        [{"index": 0, "type": "net_device"}],
        [{"index": 0, "operator": "Prefix", "values": ["eth", "lo"]}],
    )
    (m,) = cfg.selectors[0].args
    assert (m.kind, m.src, m.op, m.strings) == (Kind.USER_STR, 1, Op.PREFIX, (b"eth", b"lo"))
    assert cfg.str_add == ((1, 0),) and cfg.kern_strs == 0b10 and cfg.str_mask == 0b10
    assert cfg.obj_readers == ((0, 0, ((0, NO_HOP, 16, 0, 0),)),)


def test_bpf_types_perf_event_module_iov_iter_are_reported() -> None:
    for call, index, name in [
        ("security_bpf_map", 0, "bpf_map"),
        ("security_bpf", 1, "bpf_attr"),
        ("security_perf_event_alloc", 0, "perf_event"),
        ("do_init_module", 0, "module"),
        ("generic_file_write_iter", 1, "iov_iter"),
    ]:
        cfg = compiled(call, [{"index": index, "type": name}])
        assert [(a.kind, a.obj) for a in cfg.args] == [(Kind.OBJ, name)]
        ((slot, arg, reads),) = cfg.obj_readers
        assert (slot, arg) == (0, index) and reads == field_reads(name, KERNEL)


def test_kiocb_is_its_files_path() -> None:
    cfg = compiled(
        "generic_file_write_iter",
        [{"index": 0, "type": "kiocb"}],
        [{"index": 0, "operator": "Postfix", "values": [".log"]}],
    )
    assert cfg.str_reader == (0, 0) and cfg.reader_kind == layout.READ_KIOCB
    assert cfg.selectors[0].args[0].kind is Kind.PATH


@pytest.mark.parametrize(
    ("call", "args", "match", "why"),
    [
        ("commit_creds", [{"index": 0, "type": "bpf_map"}], [], "parameter 0 is struct cred *, "
         "not struct bpf_map * (type bpf_map)"),
        ("security_capable", [{"index": 3, "type": "capability"}], [],
         "parameter 3 is unsigned int, not int (type capability)"),
        ("security_bpf", [{"index": 1, "type": "bpf_attr"}],
         [{"index": 1, "operator": "Equal", "values": ["x"]}], "index 1 is a bpf_attr: its "
         "fields are reported, not compared"),
        ("commit_creds", [{"index": 0, "type": "cred"}],
         [{"index": 0, "operator": "Equal", "values": [0]}], "index 0 is a cred"),
        ("__dev_change_flags", [{"index": 0, "type": "net_device"}],
         [{"index": 0, "operator": "GT", "values": [1]}], "not supported on strings"),
        ("security_capable", [{"index": 2, "type": "capability"}],
         [{"index": 2, "operator": "Equal", "values": ["CAP_NOPE"]}], "bad integer value"),
        ("three", [{"index": 2, "type": "module"}], [],
         "only a function's first 2 object parameters are read"),
        ("setuid", [{"index": 0, "type": "cred"}], [], "a syscall's arguments are user "
         "pointers"),
    ],
)  # fmt: skip
def test_refused_with_the_reason(call: str, args: list[Any], match: list[Any], why: str) -> None:
    extra = {"syscall": True} if call == "setuid" else {}
    reason = refused(call, args, match, **extra)
    assert reason.startswith("spec.kprobes[0]."), reason
    assert why in reason, reason


def _copy(data: bytes) -> Any:
    return SimpleNamespace(read=1, data=data.ljust(192, b"\0"))


def test_cred_decodes_as_tetragon_names_its_fields() -> None:
    ids = struct.pack("<9I", 1, 2, 3, 4, 5, 6, 7, 8, 0b10001)
    caps = struct.pack("<3Q", 0, 1 << 21 | 1 << 7, (1 << 41) - 1)
    ns = struct.pack("<iIII", 0, 0, 0, 4026531837)
    got = decode_copy("cred", _copy(ids + caps + ns))
    assert got == {
        "uid": 1, "gid": 2, "suid": 3, "sgid": 4, "euid": 5, "egid": 6, "fsuid": 7, "fsgid": 8,
        "securebits": ["SecBitNoRoot", "SecBitKeepCaps"],
        "caps": {
            "inheritable": [],
            "permitted": ["CAP_SETUID", "CAP_SYS_ADMIN"],
            "effective": [c for c in got["caps"]["effective"]],
        },
        "user_ns": {"level": 0, "uid": 0, "gid": 0, "ns": {"inum": 4026531837}},
    }  # fmt: skip
    assert len(got["caps"]["effective"]) == 41 and got["caps"]["effective"][-1] == (
        "CAP_CHECKPOINT_RESTORE"
    )
    assert decode_copy("cred", SimpleNamespace(read=0, data=b"")) is None


def test_other_types_decode() -> None:
    assert decode("bpf_map", struct.pack("<4I", 2, 4, 8, 3) + b"tpfmap\0".ljust(16, b"\0")) == {
        "MapType": 2, "KeySize": 4, "ValueSize": 8, "MaxEntries": 3, "MapName": "tpfmap",
    }  # fmt: skip
    assert decode("module", b"dummy".ljust(56, b"\0") + struct.pack("<Q", 1 << 12 | 1 << 13)) == {
        "name": "dummy", "tainted": ["TAINT_OUT_OF_TREE_MODULE", "TAINT_UNSIGNED_MODULE"],
    }  # fmt: skip
    perf = struct.pack("<IQQ", 6, 0, 16) + b"do_sys_openat2\0"
    assert decode("perf_event", perf.ljust(83, b"\0")) == {
        "Type": 6, "Config": 0, "ProbeOffset": 16, "KprobeFunc": "do_sys_openat2",
    }  # fmt: skip
    assert [f.name for f, _ in obj_layout(OBJ_TYPES["bpf_attr"])] == [
        "ProgType", "InsnCnt", "ProgName",
    ]  # fmt: skip


def test_events_report_the_object_and_the_capability() -> None:
    cfg = compiled(
        "security_capable",
        [{"index": 1, "type": "user_namespace", "label": "ns"}, {"index": 2, "type": "capability"}],
    )
    ns = _copy(struct.pack("<iIII", 1, 1000, 1000, 4026532000))
    ev = RawEvent(
        0, 0, 1, 1, 0, 0, cfg.hook, 0, 1, 0, (0, 0, 0, 21, 0, 0, 0, 0), "c", "", "",
        obj=(_copy(b""), ns),  # the function's second object parameter: copy 1
    )  # fmt: skip
    assert [_arg_value(ev, a, cfg.capture) for a in cfg.args] == [
        {"level": 1, "uid": 1000, "gid": 1000, "ns": {"inum": 4026532000}},
        {"value": 21, "name": "CAP_SYS_ADMIN"},
    ]
