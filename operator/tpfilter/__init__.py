"""tpfilter: per-pod filtering of TracingPolicies with right-sized BPF maps.

Layers, from pure to I/O:

* ``models``, ``selectors``, ``pods``, ``desired``, ``sizing``, ``plan``: pure logic,
  no kernel, no API server; unit-tested with plain data.
* ``cgroups`` (cgroupfs), ``bpfmaps`` (bpf syscalls through bcc): the node's I/O, behind
  the small interfaces in ``interfaces``.
* ``engine``: the one writer that reconciles desired state against the kernel maps.
* ``agent`` (kopf handlers) and ``cli``: the outside world.
"""

__version__ = "0.1.0"
