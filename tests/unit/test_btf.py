"""tpfilter.programs.btf on a hand-made BTF blob (and the node's own, where readable)."""

from __future__ import annotations

import struct

import pytest

from tpfilter.programs.btf import NO_BTF, VMLINUX, KernelBtf, feature_cflags, offsets


def _blob() -> bytes:
    names = b"\0int\0linux_binprm\0pad\0filename\0security_bprm_creds_for_exec\0bpf_lsm_x\0inner\0"

    def off(name: bytes) -> int:
        return names.index(b"\0" + name + b"\0") + 1

    def info(kind: int, vlen: int = 0) -> int:
        return (kind << 24) | vlen

    types = b"".join(
        [
            struct.pack("<IIII", off(b"int"), info(1), 4, 0x01000020),  # 1: int
            struct.pack("<III", 0, info(2), 4),  # 2: int *  (char * stand-in)
            struct.pack("<III", off(b"linux_binprm"), info(4, 3), 104)  # 3: struct
            + struct.pack("<III", off(b"pad"), 1, 0)
            + struct.pack("<III", off(b"filename"), 2, 96 * 8)
            + struct.pack("<III", 0, 8, 32 * 8),  # an anonymous union at byte 32
            struct.pack("<III", 0, info(2), 3),  # 4: struct linux_binprm *
            struct.pack("<III", 0, info(13, 1), 1) + struct.pack("<II", 0, 4),  # 5: proto
            struct.pack("<III", off(b"security_bprm_creds_for_exec"), info(12), 5),  # 6
            struct.pack("<III", off(b"bpf_lsm_x"), info(12), 5),  # 7
            struct.pack("<III", 0, info(5, 1), 8)  # 8: union { int inner @ byte 4 }
            + struct.pack("<III", off(b"inner"), 1, 4 * 8),
        ]
    )
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(names))
    return header + types + names


def test_functions_params_offsets_and_lsm_hooks() -> None:
    btf = KernelBtf.parse(_blob())
    assert btf.func_params("security_bprm_creds_for_exec") == ("struct linux_binprm *",)
    assert btf.func_params("nope") is None
    assert btf.member_offset("linux_binprm", "filename") == 96
    assert btf.member_offset("linux_binprm", "nope") is None
    assert btf.has_lsm_hook("x") and not btf.has_lsm_hook("y")
    assert btf.member_offset("linux_binprm", "inner") == 36  # inside the anonymous union
    assert btf.func_return("bpf_lsm_x") == "int" and btf.func_return("nope") is None
    assert btf.lsm_hook_params("x") == ("struct linux_binprm *",)


def test_offsets_add_up_member_paths_and_name_what_is_missing() -> None:
    btf = KernelBtf.parse(_blob())
    found = offsets(
        btf,
        {
            "A": ("linux_binprm", "filename"),
            "B": (("linux_binprm", "filename"), ("linux_binprm", "inner")),  # 96 + 36
        },
    )
    assert found == {"A": 96, "B": 132}
    assert feature_cflags("TPF_WITH_X", found) == ["-DTPF_WITH_X", "-DA=96", "-DB=132"]
    missing = offsets(btf, {"A": ("linux_binprm", "filename"), "C": ("linux_binprm", "gone")})
    assert missing == "struct linux_binprm has no member gone in this kernel's BTF"
    assert feature_cflags("TPF_WITH_X", missing) == []
    assert offsets(None, {"A": ("linux_binprm", "filename")}) == NO_BTF


def test_not_btf_is_refused() -> None:
    with pytest.raises(ValueError):
        KernelBtf.parse(b"\0" * 32)


@pytest.mark.skipif(not VMLINUX.exists(), reason="no /sys/kernel/btf/vmlinux")
def test_the_nodes_btf_has_the_seed_policys_function() -> None:
    btf = KernelBtf.load()
    assert btf.func_params("security_bprm_creds_for_exec") == ("struct linux_binprm *",)
    assert btf.member_offset("linux_binprm", "filename") is not None
    # the path walk's offsets (file.f_path sits in an anonymous union on newer kernels)
    from tpfilter.programs.pathwalk import path_offsets

    assert isinstance(path_offsets(btf), dict), path_offsets(btf)
