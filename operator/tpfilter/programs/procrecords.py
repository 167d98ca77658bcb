"""Process records for matchNamespaceChanges and matchCapabilityChanges, kept only while a
loaded policy needs them.

A record is what a process had when it was created: its namespaces' inode numbers and its
capability sets (``struct tpf_proc``, bpf/programs/tpf_task.h); the selectors compare the
calling task with its record (:mod:`tpfilter.programs.changesel`). Tetragon keeps such a
record for every process on every node (its execve_map, one entry of several hundred bytes
per process, always). Here the records are a map of their own, made when the first policy
with a change selector is loaded and freed when the last one goes: a node that runs none
pays nothing, a node that does pays the map's bucket array (about 16 bytes per possible
record: ``MAX_RECORDS``) and one small entry per process.

While enabled:

* two raw tracepoint programs keep the map (bpf/programs/tpf_procs.c): a new process's
  record at its clone, removed when its leader exits;
* the processes already running are recorded from /proc (``BPF_NOEXIST``: a record the
  fork program made first was taken at the clone, the better moment). A change such a
  process made before the records started is not seen, as in Tetragon, which reads /proc
  the same way when it starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from pathlib import Path
from typing import Any

from tpfilter import bpfsys
from tpfilter.programs.build import RECORD_KEEPERS
from tpfilter.programs.tasksel import NAMESPACES, NS_LINKS

log = logging.getLogger(__name__)

PROCS_PIN_NAME = "policy_filter_maps_procs"  # tpf_programs.c: TPF_FILTER_PIN "_procs"
BPF_MAP_TYPE_ARRAY_OF_MAPS = 12
_SLOT = struct.Struct("<I")
MAX_RECORDS = 32768  # Tetragon's execve_map holds as many; a full map is counted, reported
RECORD = struct.Struct("<10I8x3Q")  # struct tpf_proc: ns[10], pad, caps[TPF_CAPS_*]
_CAP_FIELDS = ("CapEff", "CapInh", "CapPrm")  # TPF_CAPS_EFFECTIVE, _INHERITABLE, _PERMITTED


def read_record(pid: int, proc: Path = Path("/proc")) -> bytes | None:
    """A running process's record from /proc (None: it is gone, or not readable)."""
    base = proc / str(pid)
    try:
        caps = {}
        for line in (base / "status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in _CAP_FIELDS:
                caps[name] = int(value.strip(), 16)
    except (OSError, ValueError):
        return None
    if len(caps) != len(_CAP_FIELDS):
        return None
    inodes = []
    for name in NAMESPACES:
        try:
            inodes.append(os.stat(base / "ns" / NS_LINKS[name]).st_ino)
        except OSError:
            inodes.append(0)  # this kernel has no such namespace: never compared
    return RECORD.pack(*inodes, *(caps[f] for f in _CAP_FIELDS))


class ProcRecords:
    """The record map's one-slot array, the record map when enabled, and its keepers.

    Made before the programs compile (:meth:`bind` then hands over the compiled
    ``bcc.BPF``): the array is pinned only until bcc has opened it (``TPF_PROCS_PIN``),
    because an inner map must match the array's template and bcc's own templates carry
    BTF that the maps made here do not (Debian's 6.1 refuses such an inner map, EINVAL).
    """

    def __init__(self, pin_dir: Path) -> None:
        self._pin = Path(pin_dir) / PROCS_PIN_NAME
        self._bpf: Any = None
        self._fd: int | None = None
        template = self._create_inner(1)
        try:
            self._slot_fd = bpfsys.create_map_in_map(
                BPF_MAP_TYPE_ARRAY_OF_MAPS,
                name="tpf_procs_maps",
                key_size=4,
                max_entries=1,
                flags=0,
                inner_map_fd=template,
            )
        finally:
            os.close(template)
        self._pin.parent.mkdir(parents=True, exist_ok=True)
        self._pin.unlink(missing_ok=True)  # a killed agent's: its programs are gone
        bpfsys.obj_pin(self._slot_fd, self._pin)

    @staticmethod
    def _create_inner(max_entries: int) -> int:
        return bpfsys.create_map(
            bpfsys.BPF_MAP_TYPE_HASH,
            name="tpf_procs",
            key_size=4,
            value_size=RECORD.size,
            max_entries=max_entries,
            flags=bpfsys.BPF_F_NO_PREALLOC,
        )

    def bind(self, bpf: Any) -> None:
        """The programs are compiled (they hold the array): the pin has done its work."""
        self._bpf = bpf
        self.unpin()

    def unpin(self) -> None:
        self._pin.unlink(missing_ok=True)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def enable(self) -> None:
        if self._fd is not None:
            return
        fd = self._create_inner(MAX_RECORDS)
        try:
            bpfsys.map_update(self._slot_fd, _SLOT.pack(0), _SLOT.pack(fd))
            for tracepoint, program in RECORD_KEEPERS.items():
                self._bpf.attach_raw_tracepoint(tp=tracepoint.encode(), fn_name=program.encode())
        except Exception:
            self._fd = fd
            self.disable()
            raise
        self._fd = fd
        recorded = self._record_running(fd)
        log.info("process records on: %d running processes recorded from /proc", recorded)

    def _record_running(self, fd: int) -> int:
        n = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            record = read_record(int(entry.name))
            if record is None:
                continue
            with contextlib.suppress(OSError):  # EEXIST: the fork keeper was first
                bpfsys.map_update(
                    fd, struct.pack("<I", int(entry.name)), record, bpfsys.BPF_NOEXIST
                )
                n += 1
        return n

    def disable(self) -> None:
        if self._fd is None:
            return
        for tracepoint in RECORD_KEEPERS:
            with contextlib.suppress(Exception):  # not attached (enable failed half way)
                self._bpf.detach_raw_tracepoint(tp=tracepoint.encode())
        bpfsys.map_delete(self._slot_fd, _SLOT.pack(0))
        os.close(self._fd)  # the kernel frees the map once no program holds it
        self._fd = None
        log.info("process records off: no loaded policy compares with them")

    def close(self) -> None:
        self.disable()
        self.unpin()
        os.close(self._slot_fd)

    def count(self) -> int:
        """Records in the map now (for tests and metrics)."""
        if self._fd is None:
            return 0
        return sum(1 for _ in bpfsys.map_keys(self._fd, 4))

    def lookup(self, pid: int) -> bytes | None:
        if self._fd is None:
            return None
        return bpfsys.map_lookup(self._fd, struct.pack("<I", pid), RECORD.size)
