"""What a policy's inner map costs on the running kernel: measured, never assumed.

Why this exists: the kernel's accounting of a hash map (fdinfo ``memlock``) is not a
constant of the kernel release. Two machines of one kind, same release, same possible
CPUs, reported maps 64 B apart; and the fixed part changes with ``max_entries`` in steps
that depend on the CPU count (a hash map above 64 entries per online CPU counts its
elements with a per-CPU counter). So :func:`tpfilter.sizing.estimated_kernel_bytes` is one
machine's figure, good for ratios and docs only. Anything compared with what the kernel
reports is calibrated here instead, against reference maps of the same shape made on this
kernel, in the same process.

The reference map is spelled out here (u64 key, u8 value, ``BPF_F_NO_PREALLOC``) rather
than borrowed from :mod:`tpfilter.bpfmaps` on purpose: a test that compares a policy map
with this reference then also catches a policy map built with the wrong shape or flags
(a preallocated map, for one, would not grow with its entries).
"""

from __future__ import annotations

import itertools
import os
import struct
from dataclasses import dataclass

from tpfilter import bpfsys

__all__ = ["InnerMapCost", "measure"]

_KEY = struct.Struct("=Q")
_VALUE = b"\x01"
# Enough live entries that the per-entry cost is an average, few enough for any map.
_SAMPLE_ENTRIES = 8
_FIRST_SAMPLE_ID = 1 << 32  # well clear of the reserved IDs (2**64-1 and friends)


@dataclass(frozen=True, slots=True)
class InnerMapCost:
    """The kernel's accounting of a no-prealloc u64 -> u8 hash map of one ``max_entries``."""

    max_entries: int
    empty: int  # memlock of the empty map: its bucket array and fixed part
    per_entry: int  # what each live entry adds

    def bytes(self, entries: int) -> int:
        """memlock of such a map holding ``entries`` IDs, as this kernel accounts it."""
        return self.empty + self.per_entry * entries


def measure(max_entries: int) -> InnerMapCost:
    """Build a reference map of ``max_entries`` and read what the kernel charges for it.

    Raises :class:`ValueError` if the kernel's figure is not linear in the entries (the
    model above would then be wrong, and a silent average would hide it), and
    :class:`OSError` where BPF maps cannot be made.
    """
    if max_entries < 1:
        raise ValueError(f"max_entries must be positive, got {max_entries}")
    sample = min(_SAMPLE_ENTRIES, max_entries)
    fd = bpfsys.create_map(
        bpfsys.BPF_MAP_TYPE_HASH,
        name="tpf_memcal",
        key_size=_KEY.size,
        value_size=len(_VALUE),
        max_entries=max_entries,
        flags=bpfsys.BPF_F_NO_PREALLOC,
    )
    try:
        readings = [bpfsys.memlock(fd)]
        for i in range(sample):
            bpfsys.map_update(fd, _KEY.pack(_FIRST_SAMPLE_ID + i), _VALUE, bpfsys.BPF_ANY)
            readings.append(bpfsys.memlock(fd))
    finally:
        os.close(fd)
    steps = {after - before for before, after in itertools.pairwise(readings)}
    if len(steps) != 1:
        raise ValueError(
            f"memlock of a no-prealloc hash map (max_entries {max_entries}) does not grow "
            f"by a fixed amount per entry on this kernel: readings {readings}"
        )
    return InnerMapCost(max_entries=max_entries, empty=readings[0], per_entry=steps.pop())
