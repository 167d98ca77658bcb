"""Network arguments of kprobes (sock, socket, sockaddr, skb) and their operators, without a
kernel: the node's BTF is a fake. What runs in BPF is tested in the VM
(tests/vm/test_net_hooks.py)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from tpfilter.programs.compiler import compile_spec
from tpfilter.programs.kprobes import KprobeHooks
from tpfilter.programs.layout import Kind, Op
from tpfilter.programs.netargs import (
    MEMBERS,
    SKB,
    SOCK,
    SOCKADDR,
    SOCKET,
    decode_tuple,
    net_cflags,
    net_values,
    port_prefixes,
)
from tpfilter.programs.plan import NodeEnv


class NetKernel:
    funcs: ClassVar[dict[str, tuple[str, ...]]] = {
        "tcp_connect": ("struct sock *",),
        "security_socket_connect": ("struct socket *", "struct sockaddr *", "int"),
        "ip_output": ("struct net *", "struct sock *", "struct sk_buff *"),
        "tcp_sendmsg": ("struct sock *", "struct msghdr *", "size_t"),
        "__x64_sys_connect": ("struct pt_regs *",),
        "three": ("struct sock *", "struct sk_buff *", "struct sock *"),
    }
    missing: ClassVar[set[tuple[str, str]]] = set()

    def func_params(self, func: str) -> tuple[str, ...] | None:
        return self.funcs.get(func)

    def func_return(self, func: str) -> str | None:
        return "int" if func in self.funcs else None

    def member_offset(self, struct: str, member: str) -> int | None:
        return None if (struct, member) in self.missing else 4

    def has_lsm_hook(self, hook: str) -> bool:
        return False


ENV = NodeEnv(
    tracepoint_format=lambda s, e: None,
    syscall_numbers={},
    kprobes=None,
    lsm=None,
    kernel=NetKernel(),
    kprobe_hook=KprobeHooks(),
)


def spec(call: str, args: list[Any], match: list[Any], **extra: Any) -> dict[str, Any]:
    selectors = [{"matchArgs": match, "matchActions": [{"action": "Sigkill"}]}] if match else []
    return {"kprobes": [{"call": call, "args": args, "selectors": selectors, **extra}]}


def one_match(call: str, args: list[Any], match: dict[str, Any]) -> Any:
    plan = compile_spec(spec(call, args, [match]), ENV)
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    return cfg, cfg.selectors[0].args[0]


def refused(call: str, args: list[Any], match: list[Any], **extra: Any) -> str:
    plan = compile_spec(spec(call, args, match, **extra), ENV)
    assert not plan.ok
    (reason,) = plan.unsupported
    return reason


def test_sock_daddr_cidrs_ipv4_and_ipv6() -> None:
    cfg, arg = one_match(
        "tcp_connect",
        [{"index": 0, "type": "sock"}],
        {"index": 0, "operator": "DAddr", "values": ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]},
    )
    assert (arg.kind, arg.src, arg.op, arg.imm) == (Kind.NET, 0, Op.DADDR, 0)
    assert set(arg.net) == {
        (32, 4, bytes([127, 0, 0, 1])),
        (8, 4, bytes([10, 0, 0, 0])),
        (128, 6, ipaddress.IPv6Address("::1").packed),
        (8, 6, ipaddress.IPv6Address("fd00::").packed),
    }
    assert cfg.net_readers == ((0, 0, SOCK),)  # tuple 0 <- argument 0, read as a sock


def test_not_operators_set_the_negation_and_priv_means_0_to_1023() -> None:
    _, arg = one_match(
        "tcp_connect", [{"index": 0, "type": "sock"}], {"index": 0, "operator": "NotDPortPriv"}
    )
    assert (arg.op, arg.imm, arg.net) == (Op.DPORT, 1, ((6, 0, b"\x00\x00"),))  # 0..1023
    _, arg = one_match(
        "tcp_connect",
        [{"index": 0, "type": "sock"}],
        {"index": 0, "operator": "NotSAddr", "values": ["192.168.1.7/16"]},
    )
    assert (arg.op, arg.imm, arg.net) == (Op.SADDR, 1, ((16, 4, bytes([192, 168, 0, 0])),))


def test_port_ranges_are_the_fewest_prefixes_that_cover_them() -> None:
    for lo, hi in [(0, 0), (80, 80), (1, 1023), (1000, 2000), (0, 65535), (65535, 65535)]:
        covered = set()
        for bits, start in port_prefixes(lo, hi):
            size = 1 << (16 - bits)
            assert start % size == 0
            covered |= set(range(start, start + size))
        assert covered == set(range(lo, hi + 1)), (lo, hi)
    assert port_prefixes(0, 65535) == [(0, 0)]
    assert net_values(Op.DPORT, False, [443, "8000:8001"]) == (
        (15, 0, (8000).to_bytes(2, "big")),
        (16, 0, (443).to_bytes(2, "big")),
    )


def test_protocol_family_state_by_name_or_number() -> None:
    assert net_values(Op.PROTOCOL, False, ["IPPROTO_TCP", 17]) == (
        (16, 0, b"\x00\x06"),
        (16, 0, b"\x00\x11"),
    )
    assert net_values(Op.FAMILY, False, ["AF_INET6", "af_inet"]) == (
        (16, 0, b"\x00\x02"),
        (16, 0, b"\x00\x0a"),
    )
    assert net_values(Op.STATE, False, ["TCP_SYN_SENT"]) == ((16, 0, b"\x00\x02"),)


def test_security_socket_connect_reads_socket_and_sockaddr_in_parameter_order() -> None:
    plan = compile_spec(
        spec(
            "security_socket_connect",
            [{"index": 1, "type": "sockaddr"}, {"index": 0, "type": "socket"}],
            [
                {"index": 1, "operator": "SPort", "values": ["9000:9009"]},
                {"index": 1, "operator": "Family", "values": ["AF_INET"]},
                {"index": 0, "operator": "State", "values": ["TCP_CLOSE"]},
            ],
        ),
        ENV,
    )
    assert plan.ok, plan.unsupported
    (cfg,) = plan.configs
    assert cfg.net_readers == ((0, 0, SOCKET), (1, 1, SOCKADDR))
    assert [a.src for a in cfg.selectors[0].args] == [1, 1, 0]


def test_skb_tuple_follows_the_functions_network_parameters() -> None:
    cfg, arg = one_match(
        "ip_output",
        [{"index": 2, "type": "skb"}],
        {"index": 2, "operator": "Protocol", "values": ["IPPROTO_UDP"]},
    )
    assert arg.src == 1  # struct sock * (parameter 1) is the function's first network one
    assert cfg.net_readers == ((1, 2, SKB),)


@pytest.mark.parametrize(
    ("call", "args", "match", "expected"),
    [
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "DAddr", "values": ["127.0.0.300"]}],
         "matchArgs[0]: DAddr: '127.0.0.300' is not an IPv4 or IPv6 address or CIDR"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "SAddr", "values": ["10.0.0.0/33"]}],
         "SAddr: '10.0.0.0/33' is not an IPv4 or IPv6 address or CIDR"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "DPort", "values": ["70000"]}],
         "DPort: '70000' is not a port range within 0..65535"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "DPort", "values": ["90:80"]}],
         "DPort: '90:80' is not a port range within 0..65535 (a <= b)"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "SPort", "values": ["http"]}],
         "SPort: 'http' is not a port or a range a:b"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "Protocol", "values": ["IPPROTO_NOPE"]}],
         "Protocol: 'IPPROTO_NOPE' is neither a number nor one of"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "State", "values": ["TCP_SYN_SENDING"]}],
         "State: 'TCP_SYN_SENDING' is neither a number nor one of"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "Family", "values": ["AF_BANANA"]}],
         "Family: 'AF_BANANA' is neither a number nor one of"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "DAddr", "values": []}],
         "values must be a non-empty list"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "Equal", "values": ["1"]}],
         "operator 'Equal' is not supported on a sock argument"),
        ("tcp_connect", [{"index": 0, "type": "sock"}],
         [{"index": 0, "operator": "InMap", "values": ["1"]}],
         "operator InMap compares integer arguments only"),
        ("security_socket_connect", [{"index": 1, "type": "sockaddr"}],
         [{"index": 1, "operator": "DAddr", "values": ["::1"]}],
         "operator DAddr is not supported on a sockaddr: it has one address and port"),
        ("security_socket_connect", [{"index": 1, "type": "sockaddr"}],
         [{"index": 1, "operator": "State", "values": ["TCP_CLOSE"]}],
         "operator State is not supported on a sockaddr"),
        ("ip_output", [{"index": 2, "type": "skb"}],
         [{"index": 2, "operator": "State", "values": ["TCP_ESTABLISHED"]}],
         "operator State is not supported on an skb: a packet has no TCP state"),
        ("tcp_sendmsg", [{"index": 2, "type": "size_t"}],
         [{"index": 2, "operator": "DPort", "values": ["80"]}],
         "operator DPort needs a sock, socket, skb or sockaddr argument (index 2 is not one)"),
        ("tcp_sendmsg", [{"index": 1, "type": "sock"}], [],
         "parameter 1 is struct msghdr *, not struct sock * (type sock)"),
        ("security_socket_connect", [{"index": 0, "type": "sock"}], [],
         "parameter 0 is struct socket *, not struct sock * (type sock)"),
        ("three", [{"index": 2, "type": "sock"}], [],
         "only a function's first 2 network parameters are read"),
    ],
)  # fmt: skip
def test_bad_values_and_unsupported_operators_are_refused_naming_the_field(
    call: str, args: list[Any], match: list[Any], expected: str
) -> None:
    reason = refused(call, args, match)
    assert reason.startswith("spec.kprobes[0].")
    assert expected in reason, reason


def test_a_syscalls_arguments_are_not_kernel_structs() -> None:
    reason = refused("connect", [{"index": 1, "type": "sockaddr"}], [], syscall=True)
    assert "a syscall's arguments are user pointers, not a struct sockaddr *" in reason


def test_a_kernel_without_an_offset_refuses_the_types_naming_the_member() -> None:
    kernel = NetKernel()
    kernel.missing = {("sock_common", "skc_v6_daddr")}
    env = replace(ENV, kernel=kernel)
    plan = compile_spec(spec("tcp_connect", [{"index": 0, "type": "sock"}], []), env)
    assert plan.unsupported == (
        "spec.kprobes[0].args[0]: type sock cannot be read on this node: struct sock_common "
        "has no member skc_v6_daddr in this kernel's BTF",
    )
    assert net_cflags(kernel) == []
    flags = net_cflags(NetKernel())
    assert flags[0] == "-DTPF_WITH_NET" and len(flags) == 1 + len(MEMBERS)
    assert "-DTPF_OFF_SKC_FAMILY=8" in flags  # sock.__sk_common + sock_common.skc_family


def tuple_of(kind: int, family: int, saddr: bytes, daddr: bytes, **rest: int) -> Any:
    return SimpleNamespace(
        kind=kind, family=family, saddr=saddr.ljust(16, b"\0"), daddr=daddr.ljust(16, b"\0"),
        protocol=rest.get("protocol", 0), sport=rest.get("sport", 0),
        dport=rest.get("dport", 0), state=rest.get("state", 0),
    )  # fmt: skip


def test_events_decode_the_tuple_as_tetragon_names_its_fields() -> None:
    lo = bytes([127, 0, 0, 1])
    sock = tuple_of(SOCK, 2, lo, lo, protocol=6, sport=40000, dport=8080, state=2)
    assert decode_tuple(sock) == {
        "family": "AF_INET", "protocol": "IPPROTO_TCP", "saddr": "127.0.0.1",
        "daddr": "127.0.0.1", "sport": 40000, "dport": 8080, "state": "TCP_SYN_SENT",
    }  # fmt: skip
    v6 = ipaddress.IPv6Address("::1").packed
    skb = tuple_of(SKB, 10, v6, v6, protocol=17, sport=1, dport=2)
    assert decode_tuple(skb) == {
        "family": "AF_INET6", "protocol": "IPPROTO_UDP", "saddr": "::1", "daddr": "::1",
        "sport": 1, "dport": 2,
    }  # fmt: skip
    sa = tuple_of(SOCKADDR, 10, v6, b"", sport=9000)
    assert decode_tuple(sa) == {"family": "AF_INET6", "addr": "::1", "port": 9000}
    assert decode_tuple(tuple_of(0, 0, b"", b"")) is None  # not read
    unix = tuple_of(SOCK, 1, b"", b"", state=7)
    assert decode_tuple(unix)["family"] == "AF_UNIX"
    assert decode_tuple(unix)["saddr"] is None


def test_the_example_policy_is_valid_and_compiles() -> None:
    from pathlib import Path

    import yaml
    from test_crds import validate

    path = Path(__file__).resolve().parents[2] / "examples" / "kprobe-network.yaml"
    body = yaml.safe_load(path.read_text())
    assert validate(body) == []
    env = replace(ENV, kernel=NetKernel(), kprobe_hook=KprobeHooks())
    plan = compile_spec(body["spec"], env)
    assert plan.ok, plan.unsupported
    connect, output = plan.configs
    assert [a.op for a in connect.selectors[1].args] == [Op.DADDR, Op.DPORT]
    assert connect.selectors[1].args[0].imm == 1  # NotDAddr
    assert output.net_readers == ((1, 2, SKB),)
