"""The hot paths bench_kprobe.py measures: a kernel function, the selector every policy puts
on it (never matched, action Sigkill, so a selected caller runs the whole path and lives),
and the caller's loop that calls the function once per iteration.

* ``open``: ``do_sys_openat2``, an ``int`` argument (Equal 4444; the caller opens relative
  to AT_FDCWD, -100): the integer baseline.
* ``sock``: ``tcp_sendmsg(struct sock *, ...)``, a ``sock`` argument (DAddr 192.0.2.1, a
  documentation address: the connection is on 127.0.0.1): the network reader of a socket
  (tpf_net.c) and an LPM lookup; the loop sends one byte on a loopback TCP connection
  (the receiving end, in the same process, is drained every 256 sends).
* ``skb``: ``ip_output(struct net *, struct sock *, struct sk_buff *)``, an ``skb``
  argument (DAddr 192.0.2.1): the packet's IP and UDP headers read per packet; the loop
  sends one UDP datagram to a socket of its own on 127.0.0.1 that never reads (a full
  receive buffer drops silently: no ICMP, so one ip_output per send).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NEVER_ADDR = "192.0.2.1"  # TEST-NET-1: nothing here talks to it


@dataclass(frozen=True, slots=True)
class Workload:
    function: str
    arg: dict[str, Any]  # the declared argument
    match: dict[str, Any]  # the matchArgs entry, never true
    setup: str  # Python run once by the caller
    op: str  # one call of the function
    every: str = ""  # run after every 256 ops (inside the measured loop)

    def kprobe(self) -> dict[str, Any]:
        return {
            "call": self.function,
            "syscall": False,
            "args": [self.arg],
            "selectors": [{"matchArgs": [self.match], "matchActions": [{"action": "Sigkill"}]}],
        }

    def loop(self) -> str:
        """The caller: warms up, says "ready", then for each line "N" on stdin runs the op N
        times and prints the loop's seconds; it ends at end of input."""
        every = f"        if (i & 255) == 255:\n            {self.every}\n" if self.every else ""
        return (
            "import os, sys, time, socket\n"
            f"{self.setup}\n"
            "def run(n):\n"
            "    for i in range(n):\n"
            f"        {self.op}\n"
            f"{every}"
            "run(100)\n"
            'print("ready", flush=True)\n'
            "for line in sys.stdin:\n"
            "    n = int(line)\n"
            "    t0 = time.perf_counter()\n"
            "    run(n)\n"
            "    print(time.perf_counter() - t0, flush=True)\n"
        )


_TCP_SETUP = """\
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
c = socket.create_connection(srv.getsockname()); a, _ = srv.accept(); a.setblocking(False)
def drain():
    try:
        while a.recv(1 << 16):
            pass
    except BlockingIOError:
        pass"""
_UDP_SETUP = """\
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); r.bind(("127.0.0.1", 0))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); dest = r.getsockname()"""

WORKLOADS = {
    "open": Workload(
        function="do_sys_openat2",
        arg={"index": 0, "type": "int", "label": "dfd"},
        match={"index": 0, "operator": "Equal", "values": ["4444"]},
        setup="",
        op='os.close(os.open("/dev/null", os.O_RDONLY))',
    ),
    "sock": Workload(
        function="tcp_sendmsg",
        arg={"index": 0, "type": "sock", "label": "sk"},
        match={"index": 0, "operator": "DAddr", "values": [NEVER_ADDR]},
        setup=_TCP_SETUP,
        op='c.send(b"x")',
        every="drain()",
    ),
    "skb": Workload(
        function="ip_output",
        arg={"index": 2, "type": "skb", "label": "skb"},
        match={"index": 2, "operator": "DAddr", "values": [NEVER_ADDR]},
        setup=_UDP_SETUP,
        op='s.sendto(b"x", dest)',
    ),
}
