"""How big each policy's inner map is: sized to its content, not to a worst case.

A BPF hash map's kernel cost with BPF_F_NO_PREALLOC is a fixed part, plus a bucket per
``max_entries`` rounded up to a power of two, plus each live entry: on one machine
``896 + 16 * n_buckets + 72 * live_entries`` bytes (shared/notes/machine.md), though the
fixed part differs between machines (:mod:`tpfilter.mapcost` measures it on the running
kernel). The bucket array is the part that is paid for whether used or not, so
``max_entries`` follows the content:

* target capacity: the next power of two at or above twice the entries, at least
  :data:`MIN_ENTRIES`; a power of two because one more entry would double the buckets;
* grow only when the entries no longer fit; shrink only when they fall to an eighth of the
  capacity. The gap between the two is the hysteresis that keeps a pod flapping in and out
  of a selector from resizing the map on every event.

Resizing builds a new map and swaps it in (``FilterMaps.install``), so it costs a copy; the
rules above keep it rare (amortised O(1) per change, like a growing array).
"""

from __future__ import annotations

MIN_ENTRIES = 8
SHRINK_DIVISOR = 8


def next_power_of_two(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def target_capacity(entries: int, *, limit: int) -> int:
    """The max_entries a freshly built map holding ``entries`` IDs gets.

    Capped at ``limit`` (the configured max cgroups per policy); if ``entries`` exceeds the
    limit the caller must report the map as full, not build a smaller map.
    """
    return min(max(MIN_ENTRIES, next_power_of_two(2 * entries)), limit)


def needs_rebuild(entries: int, capacity: int, *, limit: int) -> bool:
    """Whether a map of ``capacity`` must be rebuilt to hold ``entries`` IDs well."""
    if entries > capacity:
        return capacity < limit  # at the limit there is nothing bigger to build: full
    target = target_capacity(entries, limit=limit)
    return capacity > MIN_ENTRIES and entries <= capacity // SHRINK_DIVISOR and target < capacity


def estimated_kernel_bytes(max_entries: int, entries: int) -> int:
    """An estimate of the kernel's accounting (memlock) of a no-prealloc u64->u8 hash map.

    One machine's measurement (Linux 6.18, 2 CPUs): good for ratios (how far a sized map is
    from the smallest one that holds its entries), never to compare for equality with what
    a kernel reports: another machine of the same kind charged 64 B more per map, and the
    fixed part grows with the CPU count. :func:`tpfilter.mapcost.measure` gives this
    kernel's figure.
    """
    return 896 + 16 * next_power_of_two(max_entries) + 72 * entries
