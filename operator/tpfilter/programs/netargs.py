"""Network arguments of kprobes (``sock``, ``socket``, ``sockaddr``, ``skb``) and their
matchArgs operators (SAddr, DAddr, SPort, DPort and their Not…, SPortPriv/DPortPriv,
Protocol, Family, State), with Tetragon's semantics. Pure, except :func:`write_sets`, which
writes a compiled entry into the program's map.

What runs (bpf/programs/tpf_net.c): a hook reads at most two network arguments into
tuples (family, protocol, addresses, ports, TCP state), in the order of the *function's*
parameters (a policy's args do not change which tuple is which, so every entry on a
function agrees), after the filter check, for selected tasks only. Every struct offset
comes from the node's BTF (-D flags, like the path walk's: tpfilter.programs.pathwalk). An
operator is one lookup in an LPM trie keyed by the matchArgs entry: a CIDR is a prefix of
the address, a port range the few prefixes of the 16-bit port that cover it, so any number
of values costs the same.

Refused with the reason (never silently ignored): DAddr/DPort/Protocol/State on a sockaddr
(it has one address: Tetragon matches it with SAddr/SPort), State on an skb (a packet has no
TCP state), InMap/NotInMap (integer arguments only, as in Tetragon), every string/integer
operator on these types.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from tpfilter.programs import btf
from tpfilter.programs.argmatch import Errors, Source, compile_match_arg
from tpfilter.programs.layout import IntType, Kind, Op
from tpfilter.programs.plan import ArgMatch
from tpfilter.programs.values import parse_int

NR_NET = 2  # tpf_net.h TPF_NR_NET: network arguments read per hook
SOCK, SOCKET, SOCKADDR, SKB = 1, 2, 3, 4  # tpf_net.h TPF_NET_*
# type in a policy -> (the parameter's C type it needs, TPF_NET_*)
NET_TYPES: Mapping[str, tuple[str, int]] = {
    "sock": ("struct sock *", SOCK),
    "socket": ("struct socket *", SOCKET),
    "sockaddr": ("struct sockaddr *", SOCKADDR),
    "skb": ("struct sk_buff *", SKB),
}
_KIND_OF_CTYPE = {ctype: kind for ctype, kind in NET_TYPES.values()}
_TYPE_OF_KIND = {kind: name for name, (_, kind) in NET_TYPES.items()}

# -D name -> (struct, member) or ((struct, member), (struct, member)) added up
MEMBERS: Mapping[str, btf.MemberPath] = {
    "TPF_OFF_SOCKET_SK": (("socket", "sk"),),
    "TPF_OFF_SKC_FAMILY": (("sock", "__sk_common"), ("sock_common", "skc_family")),
    "TPF_OFF_SKC_STATE": (("sock", "__sk_common"), ("sock_common", "skc_state")),
    "TPF_OFF_SKC_NUM": (("sock", "__sk_common"), ("sock_common", "skc_num")),
    "TPF_OFF_SKC_DPORT": (("sock", "__sk_common"), ("sock_common", "skc_dport")),
    "TPF_OFF_SKC_RCV_SADDR": (("sock", "__sk_common"), ("sock_common", "skc_rcv_saddr")),
    "TPF_OFF_SKC_DADDR": (("sock", "__sk_common"), ("sock_common", "skc_daddr")),
    "TPF_OFF_SKC_V6_RCV_SADDR": (("sock", "__sk_common"), ("sock_common", "skc_v6_rcv_saddr")),
    "TPF_OFF_SKC_V6_DADDR": (("sock", "__sk_common"), ("sock_common", "skc_v6_daddr")),
    "TPF_OFF_SK_PROTOCOL": (("sock", "sk_protocol"),),  # a u16 since Linux 5.6
    "TPF_OFF_SKB_HEAD": (("sk_buff", "head"),),
    "TPF_OFF_SKB_NETWORK_HEADER": (("sk_buff", "network_header"),),
    "TPF_OFF_SIN_PORT": (("sockaddr_in", "sin_port"),),
    "TPF_OFF_SIN_ADDR": (("sockaddr_in", "sin_addr"),),
    "TPF_OFF_SIN6_PORT": (("sockaddr_in6", "sin6_port"),),
    "TPF_OFF_SIN6_ADDR": (("sockaddr_in6", "sin6_addr"),),
}

FAMILIES = {
    "AF_UNSPEC": 0, "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10,
    "AF_NETLINK": 16, "AF_PACKET": 17, "AF_VSOCK": 40, "AF_XDP": 44,
}  # fmt: skip
PROTOCOLS = {
    "IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_IGMP": 2, "IPPROTO_TCP": 6,
    "IPPROTO_UDP": 17, "IPPROTO_IPV6": 41, "IPPROTO_GRE": 47, "IPPROTO_ESP": 50,
    "IPPROTO_AH": 51, "IPPROTO_ICMPV6": 58, "IPPROTO_SCTP": 132, "IPPROTO_UDPLITE": 136,
    "IPPROTO_RAW": 255, "IPPROTO_MPTCP": 262,
}  # fmt: skip
STATES = {
    "TCP_ESTABLISHED": 1, "TCP_SYN_SENT": 2, "TCP_SYN_RECV": 3, "TCP_FIN_WAIT1": 4,
    "TCP_FIN_WAIT2": 5, "TCP_TIME_WAIT": 6, "TCP_CLOSE": 7, "TCP_CLOSE_WAIT": 8,
    "TCP_LAST_ACK": 9, "TCP_LISTEN": 10, "TCP_CLOSING": 11, "TCP_NEW_SYN_RECV": 12,
}  # fmt: skip

# operator (lower case) -> (Op, Not…, privileged ports only)
_OPS: Mapping[str, tuple[Op, bool, bool]] = {
    "saddr": (Op.SADDR, False, False),
    "daddr": (Op.DADDR, False, False),
    "notsaddr": (Op.SADDR, True, False),
    "notdaddr": (Op.DADDR, True, False),
    "sport": (Op.SPORT, False, False),
    "dport": (Op.DPORT, False, False),
    "notsport": (Op.SPORT, True, False),
    "notdport": (Op.DPORT, True, False),
    "sportpriv": (Op.SPORT, False, True),
    "dportpriv": (Op.DPORT, False, True),
    "notsportpriv": (Op.SPORT, True, True),
    "notdportpriv": (Op.DPORT, True, True),
    "protocol": (Op.PROTOCOL, False, False),
    "family": (Op.FAMILY, False, False),
    "state": (Op.STATE, False, False),
}
NET_OPERATORS = frozenset(_OPS)
_SOCKADDR_OPS = frozenset({Op.SADDR, Op.SPORT, Op.FAMILY})
_NAMES = {Op.PROTOCOL: PROTOCOLS, Op.FAMILY: FAMILIES, Op.STATE: STATES}
_LIMITS = {Op.PROTOCOL: 0xFFFF, Op.FAMILY: 0xFFFF, Op.STATE: 0xFF}


def net_offsets(kernel: Any) -> dict[str, int] | str:
    """The offsets by -D name, or why the network readers cannot be compiled here."""
    return btf.offsets(kernel, MEMBERS)


def net_cflags(kernel: Any) -> list[str]:
    """-D flags that compile the network readers in (tpf_net.c), none where they cannot be."""
    return btf.feature_cflags("TPF_WITH_NET", net_offsets(kernel))


def net_slot(params: Sequence[str], index: int) -> int | None:
    """Which tuple a network parameter is read into: its place among the function's
    network parameters (the first NR_NET of them are read)."""
    return btf.param_slot(params, index, _KIND_OF_CTYPE, NR_NET)


def net_source(
    user_type: str, params: Sequence[str] | None, index: int, kernel: Any
) -> Source | str:
    """Where a declared network argument is read (its tuple), or why it cannot be."""
    ctype, _ = NET_TYPES[user_type]
    if params is None:
        return f"type {user_type}: a syscall's arguments are user pointers, not a {ctype}"
    if params[index] != ctype:
        return f"parameter {index} is {params[index]}, not {ctype} (type {user_type})"
    offsets = net_offsets(kernel)
    if isinstance(offsets, str):
        return f"type {user_type} cannot be read on this node: {offsets}"
    slot = net_slot(params, index)
    if slot is None:
        return f"type {user_type}: only a function's first {NR_NET} network parameters are read"
    return Source(Kind.NET, slot, IntType.U64)


def readers(
    sources: Mapping[int, Source], params: Sequence[str] | None
) -> tuple[tuple[int, int, int], ...]:
    """(tuple slot, argument index, TPF_NET_*) of the network arguments a hook entry reads."""
    if params is None:
        return ()
    return tuple(
        sorted(
            (s.src, index, _KIND_OF_CTYPE[params[index]])
            for index, s in sources.items()
            if s.kind is Kind.NET
        )
    )


def port_prefixes(lo: int, hi: int) -> list[tuple[int, int]]:
    """The (prefix bits, first port) of the fewest 16-bit prefixes covering [lo, hi]."""
    out = []
    while lo <= hi:
        size = (lo & -lo) if lo else 1 << 16
        while size > hi - lo + 1:
            size //= 2
        out.append((16 - (size.bit_length() - 1), lo))
        lo += size
    return out


def _port_range(raw: Any) -> tuple[int, int]:
    text = str(raw).strip()
    parts = text.split(":")
    if len(parts) > 2:
        raise ValueError(f"{raw!r} is not a port or a range a:b")
    try:
        lo, hi = (int(p, 10) for p in (parts[0], parts[-1]))
    except ValueError:
        raise ValueError(f"{raw!r} is not a port or a range a:b") from None
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"{raw!r} is not a port range within 0..65535 (a <= b)")
    return lo, hi


def _named(raw: Any, op: Op) -> int:
    names = _NAMES[op]
    text = str(raw).strip()
    if text.upper() in names:
        return names[text.upper()]
    try:
        value = parse_int(text)
    except ValueError:
        raise ValueError(
            f"{raw!r} is neither a number nor one of {', '.join(sorted(names))}"
        ) from None
    if not 0 <= value <= _LIMITS[op]:
        raise ValueError(f"{raw!r} is out of range (0..{_LIMITS[op]})")
    return value


def net_values(op: Op, priv: bool, values: Sequence[Any]) -> tuple[tuple[int, int, bytes], ...]:
    """The LPM entries (prefix bits after the entry's header, family byte, value bytes)."""
    out: set[tuple[int, int, bytes]] = set()
    if op in (Op.SADDR, Op.DADDR):
        for raw in values:
            try:
                net = ipaddress.ip_network(str(raw).strip(), strict=False)
            except ValueError:
                raise ValueError(f"{raw!r} is not an IPv4 or IPv6 address or CIDR") from None
            out.add((net.prefixlen, net.version, net.network_address.packed))
    elif op in (Op.SPORT, Op.DPORT):
        for lo, hi in [(0, 1023)] if priv else [_port_range(v) for v in values]:
            out.update((bits, 0, port.to_bytes(2, "big")) for bits, port in port_prefixes(lo, hi))
    else:
        out.update((16, 0, _named(v, op).to_bytes(2, "big")) for v in values)
    return tuple(sorted(out))


def _compile_net(
    entry: Mapping[str, Any], where: str, source: Source, net_type: str, errors: Errors
) -> ArgMatch | None:
    name = str(entry.get("operator", ""))
    got = _OPS.get(name.lower())
    if got is None:
        if name.lower() in ("inmap", "notinmap"):
            errors.add(where, f"operator {name} compares integer arguments only (Tetragon's)")
        else:
            errors.add(
                where,
                f"operator {name!r} is not supported on a {net_type} argument (SAddr, DAddr, "
                "SPort, DPort, their Not… and …Priv forms, Protocol, Family, State)",
            )
        return None
    op, negate, priv = got
    if net_type == "sockaddr" and op not in _SOCKADDR_OPS:
        errors.add(
            where,
            f"operator {name} is not supported on a sockaddr: it has one address and port, "
            "matched with [Not]SAddr, [Not]SPort[Priv] and Family (as in Tetragon)",
        )
        return None
    if net_type == "skb" and op is Op.STATE:
        errors.add(where, "operator State is not supported on an skb: a packet has no TCP state")
        return None
    values = entry.get("values")
    values = [] if values is None else values
    if not isinstance(values, list) or (not values and not priv):
        errors.add(where, "values must be a non-empty list")
        return None
    try:
        sets = net_values(op, priv, values)
    except ValueError as exc:
        errors.add(where, f"{name}: {exc}")
        return None
    return ArgMatch(Kind.NET, source.src, op, imm=1 if negate else 0, net=sets)


def compile_match(
    entry: Any,
    where: str,
    sources: Mapping[int, Source],
    params: Sequence[str] | None,
    errors: Errors,
) -> ArgMatch | None:
    """A kprobe's matchArgs entry: a network argument's here, the others the compiler's."""
    if isinstance(entry, Mapping):
        index = entry.get("index", 0)
        source = sources.get(index) if isinstance(index, int) else None
        if source is not None and source.kind is Kind.NET and params is not None:
            extra = set(entry) - {"index", "operator", "values"}
            if extra:
                errors.add(where, f"{', '.join(sorted(extra))} not supported")
                return None
            net_type = _TYPE_OF_KIND[_KIND_OF_CTYPE[params[index]]]
            return _compile_net(entry, where, source, net_type, errors)
        if str(entry.get("operator", "")).lower() in NET_OPERATORS:
            errors.add(
                where,
                f"operator {entry.get('operator')} needs a sock, socket, skb or sockaddr "
                f"argument (index {index} is not one)",
            )
            return None
    return compile_match_arg(entry, where, sources, errors)


# -- events ---------------------------------------------------------------------------------


def _addr(data: bytes, family: int) -> str | None:
    if family == FAMILIES["AF_INET"]:
        return str(ipaddress.IPv4Address(bytes(data[:4])))
    if family == FAMILIES["AF_INET6"]:
        return str(ipaddress.IPv6Address(bytes(data[:16])))
    return None


def _name(table: Mapping[str, int], value: int) -> str | int:
    for name, v in table.items():
        if v == value and name not in ("AF_LOCAL",):
            return name
    return value


def decode_tuple(t: Any) -> dict[str, Any] | None:
    """An event's network argument (struct tpf_net_tuple), as Tetragon names its fields;
    None if it could not be read."""
    kind, family = int(t.kind), int(t.family)
    if kind not in _TYPE_OF_KIND:
        return None
    if kind == SOCKADDR:
        return {
            "family": _name(FAMILIES, family),
            "addr": _addr(bytes(t.saddr), family),
            "port": int(t.sport),
        }
    out: dict[str, Any] = {
        "family": _name(FAMILIES, family),
        "protocol": _name(PROTOCOLS, int(t.protocol)),
        "saddr": _addr(bytes(t.saddr), family),
        "daddr": _addr(bytes(t.daddr), family),
        "sport": int(t.sport),
        "dport": int(t.dport),
    }
    if kind != SKB:
        out["state"] = _name(STATES, int(t.state))
    return out


# -- the map ----------------------------------------------------------------------------------


def write_sets(table: Any, config: int, s: int, j: int, arg: ArgMatch, *, delete: bool) -> None:
    """Write (or delete) a network matchArgs entry's values in tpf_netsets."""
    for bits, family, data in arg.net:
        key = table.Key()
        key.prefixlen = 64 + bits
        key.config, key.sel, key.arg, key.family = config, s, j, family
        for i, b in enumerate(data):
            key.data[i] = b
        if delete:
            with contextlib.suppress(KeyError):
                del table[key]
        else:
            import ctypes as ct

            table[key] = ct.c_uint8(1)
