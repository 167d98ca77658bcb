"""Kernel-object arguments of kprobes (``cred``, ``user_namespace``, ``capability``, ``module``,
``bpf_map``, ``bpf_attr``, ``perf_event``, ``net_device``, ``iov_iter``): which fields of the
object are copied into the event, from where, and their names in the event (Tetragon's).
Pure: the node comes in as its BTF.

What runs (bpf/programs/tpf_obj.c): one generic reader. An object argument is a list of
field copies, (offset, size, destination), optionally through one pointer member first
(a cred's ``user_ns``), that this module computes from the node's BTF when a policy is
compiled; the program copies the bytes after the filter check (only selected tasks pay)
and this module names them. So a type is a table below, not BPF code, and no offset is
guessed: a kernel whose BTF lacks a member refuses the type naming it.

What selectors compare, as in Tetragon (bpf/process/types/basic.h ``filter_arg``): a
``net_device``'s name with the string operators (read as a kernel string at the argument
plus the name's offset, by the strings stage), a ``capability`` (an int parameter) with
the integer operators, its values as numbers or ``CAP_*`` names. Tetragon compares no
field of the other types (they are reported only): matchArgs on them is refused, naming
the argument, rather than accepted and ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tpfilter.programs.argmatch import Errors, Source, compile_match_arg
from tpfilter.programs.btf import offsets, param_slot
from tpfilter.programs.layout import IntType, Kind
from tpfilter.programs.plan import ArgMatch
from tpfilter.programs.tasksel import CAP_NUMBERS, CAPABILITIES

NR_OBJ = 2  # tpf_obj.h TPF_NR_OBJ: object arguments read per hook
OBJ_FIELDS = 16  # TPF_OBJ_FIELDS: field copies per object (a cred unmerged: 16)
OBJ_BYTES = 192  # TPF_OBJ_BYTES
_DST_MAX = 0x7F  # TPF_OBJ_DST_MASK: a copy starts below 128 ...
_SIZE_MAX = 0x3F  # TPF_OBJ_SIZE_MASK: ... and is shorter than 64 bytes
NO_HOP = 0xFFFF  # TPF_OBJ_NO_HOP
STRPTR = 1  # TPF_OBJ_STRPTR

Path = tuple[tuple[str, str], ...]  # (struct, member) steps whose offsets add up


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an object as the event reports it."""

    name: str
    members: Path  # where it is in the struct (or in the struct ``hop`` points to)
    fmt: str  # struct module format of its bytes; "s": a NUL-terminated string
    size: int
    hop: Path = ()  # a pointer member followed first
    strptr: bool = False  # the member is a char *: the string it points to is copied


def _u32(name: str, *members: tuple[str, str], hop: Path = ()) -> Field:
    return Field(name, members, "<I", 4, hop)


def _cred_fields() -> tuple[Field, ...]:
    # struct cred's order (uid ... securebits, then the three sets): two copies
    ids = ("uid", "gid", "suid", "sgid", "euid", "egid", "fsuid", "fsgid", "securebits")
    caps = tuple(Field(f"caps.{n}", (("cred", f"cap_{n}"),), "<Q", 8) for n in _CAP_SETS)
    user_ns = _user_ns_fields("user_ns.", hop=(("cred", "user_ns"),))
    return (*(_u32(n, ("cred", n)) for n in ids), *caps, *user_ns)


def _user_ns_fields(prefix: str, hop: Path = ()) -> tuple[Field, ...]:
    return (
        Field(f"{prefix}level", (("user_namespace", "level"),), "<i", 4, hop),
        _u32(f"{prefix}uid", ("user_namespace", "owner"), hop=hop),
        _u32(f"{prefix}gid", ("user_namespace", "group"), hop=hop),
        _u32(f"{prefix}ns.inum", ("user_namespace", "ns"), ("ns_common", "inum"), hop=hop),
    )


_CAP_SETS = ("inheritable", "permitted", "effective")  # struct cred's order: one copy
_ATTR = ("perf_event", "attr")


@dataclass(frozen=True, slots=True)
class ObjType:
    ctype: str  # the parameter's C type the type needs
    fields: tuple[Field, ...]
    matched: str = ""  # what matchArgs compares ("" : nothing, refused)


OBJ_TYPES: Mapping[str, ObjType] = {
    "cred": ObjType("struct cred *", _cred_fields()),
    "user_namespace": ObjType("struct user_namespace *", _user_ns_fields("")),
    "capability": ObjType("int", (), matched="int"),
    "module": ObjType(
        "struct module *",
        (
            Field("name", (("module", "name"),), "s", 56),  # MODULE_NAME_LEN: an array
            Field("tainted", (("module", "taints"),), "<Q", 8),
        ),
    ),
    "bpf_map": ObjType(
        "struct bpf_map *",
        (
            _u32("MapType", ("bpf_map", "map_type")),
            _u32("KeySize", ("bpf_map", "key_size")),
            _u32("ValueSize", ("bpf_map", "value_size")),
            _u32("MaxEntries", ("bpf_map", "max_entries")),
            Field("MapName", (("bpf_map", "name"),), "s", 16),  # BPF_OBJ_NAME_LEN
        ),
    ),
    "bpf_attr": ObjType(
        "union bpf_attr *",
        (
            _u32("ProgType", ("bpf_attr", "prog_type")),
            _u32("InsnCnt", ("bpf_attr", "insn_cnt")),
            Field("ProgName", (("bpf_attr", "prog_name"),), "s", 16),
        ),
    ),
    "perf_event": ObjType(
        "struct perf_event *",
        (
            _u32("Type", _ATTR, ("perf_event_attr", "type")),
            Field("Config", (_ATTR, ("perf_event_attr", "config")), "<Q", 8),
            Field("ProbeOffset", (_ATTR, ("perf_event_attr", "probe_offset")), "<Q", 8),
            # a user pointer: perf_event_open's attr.kprobe_func (config1)
            Field("KprobeFunc", (_ATTR, ("perf_event_attr", "kprobe_func")), "s", 63, (), True),
        ),
    ),
    "net_device": ObjType(
        "struct net_device *",
        (Field("name", (("net_device", "name"),), "s", 16),),  # IFNAMSIZ
        matched="string",
    ),
    "iov_iter": ObjType("struct iov_iter *", (Field("count", (("iov_iter", "count"),), "<Q", 8),)),
}
_TYPE_OF_CTYPE = {t.ctype: name for name, t in OBJ_TYPES.items() if t.fields}

Read = tuple[int, int, int, int, int]  # (offset, hop, size, dst, flags): a tpf_obj_field


def layout(obj_type: ObjType) -> list[tuple[Field, int]]:
    """Each field with its place in the event's copy (in order, packed)."""
    out, dst = [], 0
    for f in obj_type.fields:
        out.append((f, dst))
        dst += f.size
    return out


def _offset(kernel: Any, path: Path) -> int | str:
    found = offsets(kernel, {"field": path})  # the one place BPF readers get offsets
    return found if isinstance(found, str) else found["field"]


def field_reads(type_name: str, kernel: Any) -> tuple[Read, ...] | str:
    """The copies the program makes for a type on this kernel (adjacent fields merged into
    one copy), or why the type cannot be read here."""
    reads: list[Read] = []
    for f, dst in layout(OBJ_TYPES[type_name]):
        off = _offset(kernel, f.members)
        hop = _offset(kernel, f.hop) if f.hop else NO_HOP
        if isinstance(off, str) or isinstance(hop, str):
            return off if isinstance(off, str) else str(hop)
        flags = STRPTR if f.strptr else 0
        last = reads[-1] if reads else None
        if (
            last is not None
            and not flags
            and not last[4]
            and last[1] == hop
            and last[0] + last[2] == off
            and last[3] + last[2] == dst
            and last[2] + f.size <= _SIZE_MAX
        ):
            reads[-1] = (last[0], hop, last[2] + f.size, last[3], 0)
        else:
            reads.append((off, hop, f.size, dst, flags))
    if len(reads) > OBJ_FIELDS or any(r[3] > _DST_MAX or r[2] > _SIZE_MAX for r in reads):
        return f"its fields need more than the reader's {OBJ_FIELDS} copies"
    return tuple(reads)


def obj_slot(params: Sequence[str], index: int) -> int | None:
    """Which event copy an object parameter is read into: its place among the function's
    object parameters (the first NR_OBJ of them are read), so every entry agrees."""
    return param_slot(params, index, _TYPE_OF_CTYPE, NR_OBJ)


def obj_source(
    user_type: str, params: Sequence[str] | None, index: int, kernel: Any
) -> Source | str:
    """Where a declared object argument is reported from, or why it cannot be read."""
    obj = OBJ_TYPES[user_type]
    if params is None:
        return f"type {user_type}: a syscall's arguments are user pointers, not a {obj.ctype}"
    if params[index] != obj.ctype:
        return f"parameter {index} is {params[index]}, not {obj.ctype} (type {user_type})"
    if not obj.fields:  # capability: the integer itself
        return Source(Kind.OBJ, index + 1, IntType.S32)
    reads = field_reads(user_type, kernel)
    if isinstance(reads, str):
        return f"type {user_type} cannot be read on this node: {reads}"
    slot = obj_slot(params, index)
    if slot is None:
        return f"type {user_type}: only a function's first {NR_OBJ} object parameters are read"
    return Source(Kind.OBJ, slot, IntType.U64)


def type_of(params: Sequence[str], index: int) -> str:
    """The object type a parameter of an OBJ source was declared as (its C type's)."""
    return _TYPE_OF_CTYPE.get(params[index], "capability")


def readers(
    sources: Mapping[int, Source], params: Sequence[str] | None, kernel: Any
) -> tuple[tuple[int, int, tuple[Read, ...]], ...]:
    """(event copy, argument index, copies) of the object arguments a hook entry reads."""
    if params is None:
        return ()
    out = []
    for index, s in sources.items():
        if s.kind is Kind.OBJ and params[index] in _TYPE_OF_CTYPE:
            reads = field_reads(type_of(params, index), kernel)
            if not isinstance(reads, str):
                out.append((s.src, index, reads))
    return tuple(sorted(out))


def string_adds(
    sources: Mapping[int, Source], params: Sequence[str] | None, kernel: Any
) -> tuple[tuple[int, int], ...]:
    """(strs[] k, offset): a net_device's name is the kernel string at values[k] + offset."""
    if params is None:
        return ()
    out = []
    for index, s in sources.items():
        if s.kind is Kind.OBJ and type_of(params, index) == "net_device":
            off = _offset(kernel, OBJ_TYPES["net_device"].fields[0].members)
            if isinstance(off, int):
                out.append((index + 1, off))
    return tuple(sorted(out))


def _cap_value(raw: Any) -> Any:
    text = str(raw).strip()
    return CAP_NUMBERS.get(text.upper(), raw)


def compile_match(
    entry: Any,
    where: str,
    sources: Mapping[int, Source],
    params: Sequence[str] | None,
    errors: Errors,
    otherwise: Callable[..., ArgMatch | None],
) -> ArgMatch | None:
    """A kprobe's matchArgs entry on an object argument here, others by ``otherwise``."""
    index = entry.get("index", 0) if isinstance(entry, Mapping) else None
    source = sources.get(index) if isinstance(index, int) else None
    if source is None or source.kind is not Kind.OBJ or params is None:
        return otherwise(entry, where, sources, params, errors)
    assert isinstance(entry, Mapping) and isinstance(index, int)
    user_type = type_of(params, index)
    matched = OBJ_TYPES[user_type].matched
    if matched == "int":  # capability: the integer argument, CAP_* names accepted
        values = entry.get("values")
        named = dict(entry)
        if isinstance(values, list):
            named["values"] = [_cap_value(v) for v in values]
        return compile_match_arg(
            named, where, {index: Source(Kind.INT, index + 1, IntType.S32)}, errors
        )
    if matched == "string":  # net_device: its name, a kernel string (tpf_work.str_add)
        return compile_match_arg(
            entry, where, {index: Source(Kind.USER_STR, index + 1, IntType.U64)}, errors
        )
    errors.add(
        where,
        f"index {index} is a {user_type}: its fields are reported, not compared (Tetragon "
        "compares a net_device's name and a capability; no field of this type)",
    )
    return None


# -- events ---------------------------------------------------------------------------------

SECUREBITS = (
    "SecBitNoRoot", "SecBitNoRootLocked", "SecBitNoSetUidFixup", "SecBitNoSetUidFixupLocked",
    "SecBitKeepCaps", "SecBitKeepCapsLocked", "SecBitNoCapAmbientRaise",
    "SecBitNoCapAmbientRaiseLocked",
)  # fmt: skip
TAINTS = {  # kernel taint bit -> Tetragon's TaintedBitsType name
    0: "TAINT_PROPRIETARY_MODULE", 1: "TAINT_FORCED_MODULE", 3: "TAINT_FORCED_UNLOAD_MODULE",
    10: "TAINT_STAGED_MODULE", 12: "TAINT_OUT_OF_TREE_MODULE", 13: "TAINT_UNSIGNED_MODULE",
    15: "TAINT_KERNEL_LIVEPATCH_MODULE", 18: "TAINT_TEST_MODULE",
}  # fmt: skip


def cap_names(bits: int) -> list[str]:
    return [CAPABILITIES[i] for i in range(len(CAPABILITIES)) if bits >> i & 1]


def capability(value: int) -> dict[str, Any]:
    value = value - (1 << 32) if value & 0xFFFF_FFFF >= 1 << 31 else value & 0xFFFF_FFFF
    name = CAPABILITIES[value] if 0 <= value < len(CAPABILITIES) else None
    return {"value": value, "name": name}


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def decode(type_name: str, data: bytes) -> dict[str, Any]:
    """An event's copy of an object (tpf_obj_copy.data), as Tetragon names its fields."""
    flat: dict[str, Any] = {}
    for f, dst in layout(OBJ_TYPES[type_name]):
        raw = data[dst : dst + f.size]
        if f.fmt == "s":
            flat[f.name] = raw.split(b"\0", 1)[0].decode(errors="replace")
        else:
            flat[f.name] = struct.unpack(f.fmt, raw)[0]
    if type_name == "cred":
        flat["securebits"] = [n for i, n in enumerate(SECUREBITS) if flat["securebits"] >> i & 1]
        for n in _CAP_SETS:
            flat[f"caps.{n}"] = cap_names(flat[f"caps.{n}"])
    if type_name == "module":
        taints = flat["tainted"]
        flat["tainted"] = [TAINTS.get(i, f"TAINT_{i}") for i in range(64) if taints >> i & 1]
    return _nest(flat)


def decode_copy(type_name: str, copy: Any) -> dict[str, Any] | None:
    """A struct tpf_obj_copy of the event; None if the object was not read (NULL)."""
    if not int(copy.read):
        return None
    return decode(type_name, bytes(copy.data))
