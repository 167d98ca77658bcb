"""Network arguments of kprobes (sock, socket, sockaddr, skb) and their operators (DAddr,
SAddr, DPort, SPort, Not…, Protocol, Family, State), on Debian's stock kernel, loaded by the
agent's own ProgramManager: connects and sends on the guest's loopback (127.0.0.1 and ::1)
from a process in a selected container, another container and the host.

The ports are ones nothing listens on: a TCP connect still sends its SYN (tcp_connect runs,
the caller gets ECONNREFUSED), a UDP send still goes through ip_output / ip6_output.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernelkit import Cgroups, Env

from tpfilter.models import Policy

# The conftest fixtures' types (tests/vm/conftest.py)
RunPy = Callable[[Path | None, str], int]
MakePolicy = Callable[..., Policy]
Load = Callable[[Env, Policy, int], None]
POLICY_ID = 33
PORT = 47011  # nothing listens here
KILLED = -9


def tcp(host: str, port: int) -> str:
    family = "AF_INET6" if ":" in host else "AF_INET"
    return f"socket.socket(socket.{family}, socket.SOCK_STREAM).connect(({host!r}, {port}))"


def udp_send(host: str, port: int) -> str:
    family = "AF_INET6" if ":" in host else "AF_INET"
    return f"socket.socket(socket.{family}, socket.SOCK_DGRAM).sendto(b'x', ({host!r}, {port}))"


def udp_connect(host: str, port: int) -> str:
    family = "AF_INET6" if ":" in host else "AF_INET"
    return f"socket.socket(socket.{family}, socket.SOCK_DGRAM).connect(({host!r}, {port}))"


def kill(*match: dict[str, Any]) -> dict[str, Any]:
    return {"matchArgs": list(match), "matchActions": [{"action": "Sigkill"}]}


def arg(index: int, operator: str, *values: Any) -> dict[str, Any]:
    return {"index": index, "operator": operator, "values": list(values)}


def test_the_guest_has_ipv4_and_ipv6_loopback(run_py: RunPy) -> None:
    # Without ::1 the IPv6 cases below would pass for the wrong reason (EADDRNOTAVAIL).
    assert run_py(None, tcp("127.0.0.1", PORT)) == errno.ECONNREFUSED
    assert run_py(None, tcp("::1", PORT)) == errno.ECONNREFUSED


def test_sock_daddr_dport_kills_the_connect_ipv4_and_ipv6(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: MakePolicy, load: Load
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    p = policy(
        "connect-kill",
        kprobes=[
            {
                "call": "tcp_connect",
                "args": [{"index": 0, "type": "sock"}],
                "selectors": [
                    kill(arg(0, "DAddr", "127.0.0.1"), arg(0, "DPort", PORT)),
                    kill(arg(0, "DAddr", "::1/128"), arg(0, "DPort", f"{PORT}:{PORT + 1}")),
                ],
            }
        ],
    )
    load(loaded, p, POLICY_ID)
    assert run_py(cg, tcp("127.0.0.1", PORT)) == KILLED
    assert run_py(cg, tcp("127.0.0.1", PORT + 1)) == errno.ECONNREFUSED  # another port
    assert run_py(cg, tcp("127.0.0.2", PORT)) == errno.ECONNREFUSED  # another address
    assert run_py(cg, tcp("::1", PORT)) == KILLED
    assert run_py(cg, tcp("::1", PORT + 1)) == KILLED  # in the range
    assert run_py(cg, tcp("::1", PORT + 2)) == errno.ECONNREFUSED
    assert run_py(other, tcp("127.0.0.1", PORT)) == errno.ECONNREFUSED  # another container
    assert run_py(None, tcp("::1", PORT)) == errno.ECONNREFUSED  # the host
    loaded.manager.sync([])
    assert run_py(cg, tcp("127.0.0.1", PORT)) == errno.ECONNREFUSED  # deleting lifts it


def test_sock_tuple_in_events_with_not_daddr_family_state_protocol(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: MakePolicy, load: Load
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    loaded.pods[cg_id] = ("ns", "pod-net", "c")
    p = policy(
        "connect-post",
        kprobes=[
            {
                "call": "tcp_connect",
                "args": [{"index": 0, "type": "sock", "label": "sk"}],
                "selectors": [
                    {
                        "matchArgs": [
                            arg(0, "NotDAddr", "127.0.0.1", "::/0"),
                            arg(0, "Family", "AF_INET"),
                            arg(0, "State", "TCP_SYN_SENT"),
                            arg(0, "Protocol", "IPPROTO_TCP"),
                            arg(0, "NotSPortPriv"),
                        ]
                    }
                ],
            }
        ],
    )
    load(loaded, p, POLICY_ID)
    assert run_py(cg, tcp("127.0.0.1", PORT)) == errno.ECONNREFUSED  # not posted: NotDAddr
    assert run_py(cg, tcp("::1", PORT)) == errno.ECONNREFUSED  # not posted: NotDAddr, Family
    assert run_py(cg, tcp("127.0.0.3", PORT + 5)) == errno.ECONNREFUSED  # posted
    events = [e for e in loaded.lines() if e["hook"] == "kprobe/tcp_connect"]
    assert len(events) == 1, events
    (e,) = events
    sk = e["args"][0]
    assert e["arg_labels"] == ["sk"] and e["pod"] == "pod-net"
    assert 1024 <= sk.pop("sport") <= 65535, sk  # the ephemeral port bound before the SYN
    assert sk == {
        "family": "AF_INET",
        "protocol": "IPPROTO_TCP",
        "saddr": "127.0.0.1",
        "daddr": "127.0.0.3",
        "dport": PORT + 5,
        "state": "TCP_SYN_SENT",
    }


def test_security_socket_connect_socket_and_sockaddr(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: MakePolicy, load: Load
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    p = policy(
        "socket-connect-kill",
        kprobes=[
            {
                "call": "security_socket_connect",
                "args": [{"index": 0, "type": "socket"}, {"index": 1, "type": "sockaddr"}],
                "selectors": [
                    kill(  # TCP to 127.0.0.0/8:PORT; a UDP connect there is let through
                        arg(1, "SAddr", "127.0.0.0/8"),
                        arg(1, "SPort", PORT),
                        arg(1, "Family", "AF_INET"),
                        arg(0, "Protocol", "IPPROTO_TCP"),
                        arg(0, "State", "TCP_CLOSE"),  # a socket before its connect
                    ),
                    kill(arg(1, "SAddr", "::1"), arg(1, "NotSPort", f"0:{PORT - 1}")),
                ],
            }
        ],
    )
    load(loaded, p, POLICY_ID)
    assert run_py(cg, tcp("127.0.0.9", PORT)) == KILLED
    assert run_py(cg, udp_connect("127.0.0.9", PORT)) == 0  # Protocol UDP
    assert run_py(cg, tcp("127.0.0.9", PORT + 1)) == errno.ECONNREFUSED
    assert run_py(cg, tcp("::1", PORT)) == KILLED  # NotSPort 0..PORT-1
    assert run_py(cg, udp_connect("::1", PORT + 7)) == KILLED  # any protocol
    assert run_py(cg, tcp("::1", PORT - 1)) == errno.ECONNREFUSED
    assert run_py(None, tcp("127.0.0.9", PORT)) == errno.ECONNREFUSED  # the host


def test_skb_of_ip_output_and_ip6_output(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: MakePolicy, load: Load
) -> None:
    cg, cg_id = cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    p = policy(
        "skb",
        kprobes=[
            {  # ip_output(struct net *, struct sock *, struct sk_buff *): post UDP to PORT
                "call": "ip_output",
                "args": [{"index": 2, "type": "skb", "label": "skb"}],
                "selectors": [
                    {
                        "matchArgs": [
                            arg(2, "Protocol", "IPPROTO_UDP"),
                            arg(2, "DPort", PORT),
                            arg(2, "DAddr", "127.0.0.0/24"),
                            arg(2, "Family", "AF_INET"),
                        ]
                    }
                ],
            },
            {  # kill a process sending to [::1]:PORT from a source port >= 1024
                "call": "ip6_output",
                "args": [{"index": 2, "type": "skb"}],
                "selectors": [
                    kill(
                        arg(2, "DAddr", "::1"),
                        arg(2, "SAddr", "::1"),
                        arg(2, "DPort", PORT),
                        arg(2, "NotSPortPriv"),
                    )
                ],
            },
        ],
    )
    load(loaded, p, POLICY_ID)
    assert run_py(cg, udp_send("127.0.0.1", PORT)) == 0  # posted (the send itself works)
    assert run_py(cg, udp_send("127.0.1.1", PORT)) == 0  # not: DAddr
    assert run_py(cg, udp_send("127.0.0.1", PORT + 1)) == 0  # not: DPort
    assert run_py(cg, tcp("127.0.0.1", PORT)) == errno.ECONNREFUSED  # not: Protocol (SYN)
    events = [e for e in loaded.lines() if e["hook"] == "kprobe/ip_output"]
    assert len(events) == 1, events
    skb = events[0]["args"][0]
    assert 1024 <= skb.pop("sport") <= 65535, skb
    assert skb == {
        "family": "AF_INET",
        "protocol": "IPPROTO_UDP",
        "saddr": "127.0.0.1",
        "daddr": "127.0.0.1",
        "dport": PORT,
    }
    assert run_py(cg, udp_send("::1", PORT)) == KILLED
    assert run_py(cg, udp_send("::1", PORT + 1)) == 0
    assert run_py(None, udp_send("::1", PORT)) == 0  # the host


def test_override_on_security_socket_connect_denies_before_the_syn(
    loaded: Env, cgroups: Cgroups, run_py: RunPy, policy: MakePolicy, load: Load
) -> None:
    (cg, cg_id), (other, _) = cgroups(), cgroups()
    loaded.maps.install(POLICY_ID, {cg_id}, max_entries=8)
    deny = [{"action": "Override", "argError": -errno.EACCES}]
    p = policy(
        "socket-connect-override",
        lsmhooks=[
            {
                "hook": "socket_connect",
                "args": [{"index": 1, "type": "sockaddr"}],
                "selectors": [
                    {
                        "matchArgs": [arg(1, "SAddr", "127.0.0.1", "::1"), arg(1, "SPort", PORT)],
                        "matchActions": deny,
                    },
                ],
            }
        ],
    )
    load(loaded, p, POLICY_ID)
    assert run_py(cg, tcp("127.0.0.1", PORT)) == errno.EACCES
    assert run_py(cg, tcp("::1", PORT)) == errno.EACCES
    assert run_py(cg, udp_connect("127.0.0.1", PORT)) == errno.EACCES
    assert run_py(cg, tcp("127.0.0.1", PORT + 1)) == errno.ECONNREFUSED
    assert run_py(cg, tcp("127.0.0.2", PORT)) == errno.ECONNREFUSED
    assert run_py(other, tcp("127.0.0.1", PORT)) == errno.ECONNREFUSED
