"""The running kernel's BTF (/sys/kernel/btf/vmlinux), read without libbpf: which
functions exist and the types of their parameters, struct member offsets, BPF LSM hooks.

Offsets of kernel structs come from here (the kernel the programs run on), never from
headers of another kernel.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VMLINUX = Path("/sys/kernel/btf/vmlinux")
NO_BTF = "the node's BTF (/sys/kernel/btf/vmlinux) could not be read"

# A struct member, or a path of them whose offsets add up (``sock.__sk_common`` then
# ``sock_common.skc_family``), as the BPF readers take them: one -D flag per path.
Member = tuple[str, str]
MemberPath = Member | tuple[Member, ...]

# kinds
_INT, _PTR, _ARRAY, _STRUCT, _UNION, _ENUM, _FWD, _TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
_VOLATILE, _CONST, _RESTRICT, _FUNC, _FUNC_PROTO, _VAR, _DATASEC = 9, 10, 11, 12, 13, 14, 15
_FLOAT, _DECL_TAG, _TYPE_TAG, _ENUM64 = 16, 17, 18, 19
_EXTRA = {_INT: 4, _ARRAY: 12, _VAR: 4, _DECL_TAG: 4}  # fixed bytes after the common part
_PER_MEMBER = {_STRUCT: 12, _UNION: 12, _ENUM: 8, _FUNC_PROTO: 8, _DATASEC: 12, _ENUM64: 12}


@dataclass(slots=True)
class KernelBtf:
    # type ID -> (kind, name, size_or_type, members/params as (name, type, offset_bits))
    types: list[tuple[int, str, int, tuple[tuple[str, int, int], ...]]]
    funcs: dict[str, int] = field(default_factory=dict)  # name -> FUNC_PROTO type ID
    structs: dict[str, int] = field(default_factory=dict)  # unions too (union bpf_attr)

    @classmethod
    def parse(cls, data: bytes) -> KernelBtf:
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, _str_len = struct.unpack_from(
            "<HBBIIIII", data
        )
        if magic != 0xEB9F:
            raise ValueError("not BTF (little-endian)")
        strs = data[hdr_len + str_off :]

        def name(off: int) -> str:
            end = strs.index(b"\0", off)
            return strs[off:end].decode()

        types: list[tuple[int, str, int, tuple[tuple[str, int, int], ...]]] = [(0, "void", 0, ())]
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        while pos < end:
            name_off, info, size_type = struct.unpack_from("<III", data, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            members: tuple[tuple[str, int, int], ...] = ()
            if kind in (_STRUCT, _UNION):
                ms = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    ms.append((name(m_name), m_type, m_off & 0xFFFFFF if kflag else m_off))
                members = tuple(ms)
            elif kind == _FUNC_PROTO:
                members = tuple(
                    (name(struct.unpack_from("<I", data, pos + 8 * i)[0]),
                     struct.unpack_from("<I", data, pos + 8 * i + 4)[0], 0)
                    for i in range(vlen)
                )  # fmt: skip
            pos += _EXTRA.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
            types.append((kind, name(name_off) if name_off else "", size_type, members))
        btf = cls(types)
        for tid, (kind, tname, ref, _) in enumerate(types):
            if kind == _FUNC and tname:
                btf.funcs[tname] = ref
            elif kind in (_STRUCT, _UNION) and tname and tname not in btf.structs:
                btf.structs[tname] = tid
        return btf

    @classmethod
    def load(cls, path: Path = VMLINUX) -> KernelBtf:
        return cls.parse(path.read_bytes())

    @classmethod
    def load_or_none(cls, path: Path = VMLINUX) -> KernelBtf | None:
        try:
            return cls.load(path)
        except (OSError, ValueError, struct.error):
            return None

    def type_name(self, tid: int) -> str:
        """C spelling of a type, enough to check a parameter (``struct linux_binprm *``)."""
        kind, name, ref, _ = self.types[tid]
        if kind == _PTR:
            return self.type_name(ref) + " *"
        if kind in (_CONST, _VOLATILE, _RESTRICT, _TYPE_TAG):
            return self.type_name(ref)
        if kind in (_STRUCT, _FWD):
            return f"struct {name}"
        if kind == _UNION:
            return f"union {name}"
        return name or "?"

    def func_params(self, func: str) -> tuple[str, ...] | None:
        """The parameter types of a kernel function, None if BTF has no such function."""
        proto = self.funcs.get(func)
        if proto is None:
            return None
        return tuple(self.type_name(t) for _, t, _ in self.types[proto][3])

    def func_return(self, func: str) -> str | None:
        """The return type of a kernel function (``void``, ``int``), None if BTF has none."""
        proto = self.funcs.get(func)
        return None if proto is None else self.type_name(self.types[proto][2])

    def struct_size(self, struct_name: str) -> int | None:
        """``sizeof(struct <struct_name>)``, None if BTF has no such struct."""
        tid = self.structs.get(struct_name)
        return None if tid is None else self.types[tid][2]

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of a (non-bitfield) member, also one inside an anonymous struct or
        union member (newer kernels wrap e.g. ``file.f_path`` in one)."""
        tid = self.structs.get(struct_name)
        return None if tid is None else self._member_bits(tid, member, depth=0)

    def _member_bits(self, tid: int, member: str, *, depth: int) -> int | None:
        for m_name, m_type, off_bits in self.types[tid][3]:
            if m_name == member:
                return off_bits // 8
            inner = self._strip(m_type)
            if not m_name and depth < 4 and self.types[inner][0] in (_STRUCT, _UNION):
                found = self._member_bits(inner, member, depth=depth + 1)
                if found is not None:
                    return off_bits // 8 + found
        return None

    def _strip(self, tid: int) -> int:
        while self.types[tid][0] in (_CONST, _VOLATILE, _RESTRICT, _TYPE_TAG, _TYPEDEF):
            tid = self.types[tid][2]
        return tid

    def has_lsm_hook(self, hook: str) -> bool:
        return f"bpf_lsm_{hook}" in self.funcs

    def lsm_hook_params(self, hook: str) -> tuple[str, ...] | None:
        """The parameter types of a BPF LSM hook (its ``bpf_lsm_<hook>`` function)."""
        return self.func_params(f"bpf_lsm_{hook}")


def offsets(kernel: Any, members: Mapping[str, MemberPath]) -> dict[str, int] | str:
    """Each -D name's offset in ``kernel`` (a :class:`KernelBtf`; None where the node's BTF
    could not be read), or why one cannot be had. Every BPF reader of kernel structs (the
    path walk, the network tuple, the task's facts) gets its offsets here, so a kernel that
    moved or dropped a member refuses that reader naming the member, never reads garbage."""
    if kernel is None:
        return NO_BTF
    out = {}
    for define, path in members.items():
        total = 0
        for struct_name, member in _steps(path):
            offset = kernel.member_offset(struct_name, member)
            if offset is None:
                return f"struct {struct_name} has no member {member} in this kernel's BTF"
            total += offset
        out[define] = total
    return out


def param_slot(params: Sequence[str], index: int, ctypes: Container[str], limit: int) -> int | None:
    """The place of parameter ``index`` among a function's first six parameters whose C
    type is one of ``ctypes`` (the order the programs read such arguments in, so every
    entry on the function agrees), None if it is not one or not among the first ``limit``."""
    slots = [i for i, ctype in enumerate(params[:6]) if ctype in ctypes]
    slot = slots.index(index) if index in slots else None
    return slot if slot is not None and slot < limit else None


def _steps(path: MemberPath) -> tuple[Member, ...]:
    return (path,) if isinstance(path[0], str) else path


def feature_cflags(feature: str, found: Mapping[str, int] | str) -> list[str]:
    """The -D flags that compile a reader in (``-D<feature>`` and its offsets), none where
    its offsets could not be had: the reader is then left out, and the types that need it
    are refused with the reason by the compiler."""
    if isinstance(found, str):
        return []
    return [f"-D{feature}", *(f"-D{name}={value}" for name, value in found.items())]
