"""bcc side: the compiled programs (:mod:`tpfilter.programs.build`), attached, and their
maps written.

Only this module, :mod:`tpfilter.programs.build` and :mod:`tpfilter.programs.probe` import
bcc. Map writes go through
bcc's table objects with the ctypes types bcc derives from the compiled program, so the
layout is the C header's by construction.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tpfilter.programs import layout
from tpfilter.programs.build import build
from tpfilter.programs.kprobe_attach import kprobe_attach, kprobe_detach
from tpfilter.programs.layout import Kind, Op
from tpfilter.programs.lsm_override import LsmOverrides
from tpfilter.programs.netargs import write_sets
from tpfilter.programs.plan import ArgMatch, HookConfig
from tpfilter.programs.procrecords import ProcRecords
from tpfilter.programs.retsel import write_return_filter
from tpfilter.programs.tasksel import fill_tsel, sel_task_flags
from tpfilter.programs.tasksets import TaskSets
from tpfilter.programs.tracefs import TracepointFormat

log = logging.getLogger(__name__)


class Programs:
    """The compiled programs and their maps. Not thread-safe: callers serialise writes."""

    def __init__(
        self,
        *,
        pin_dir: Path,
        exec_format: TracepointFormat,
        kprobes: bool = False,
        lsm: bool = False,
        kernel: Any = None,
    ) -> None:
        """``kprobes``: also the kprobe programs (tpf_kprobe.c); ``lsm``: BPF LSM programs
        load here (the compiler refuses Override where they do not; the Override program of
        a hook is compiled when an entry first needs it: tpfilter.programs.lsm_override);
        ``kernel``: the node's BTF (programs.btf.KernelBtf), whose offsets the kprobes' path
        walk is compiled with (tpfilter.programs.pathwalk)."""
        # matchNamespaceChanges/matchCapabilityChanges' records: their array before the
        # programs that open it, the record map itself only while needed
        self.records = ProcRecords(pin_dir)
        try:
            built = build(pin_dir=pin_dir, exec_format=exec_format, kprobes=kprobes, kernel=kernel)
        except BaseException:
            self.records.close()
            raise
        self.records.bind(built.bpf)
        self.bpf: Any = built.bpf
        self.kprobes = kprobes
        # Override programs of BPF LSM hooks, one module per hook in use (lsm=False: none)
        self.lsm_overrides = LsmOverrides()
        self.kretprobes: set[str] = set()  # functions whose return probe is attached
        self.report = built.report
        # followForks' and matchBinaries' filter bits and their node-wide sets
        self._task_sets = TaskSets(self.bpf.get_table, binaries=built.binaries)
        self._attached: set[str] = set()
        self.event_type: Any = self.bpf.get_table(b"tpf_event_layout").Leaf
        self._t = {
            name: self.bpf.get_table(name.encode())
            for name in (
                "tpf_hooks",
                "tpf_slots",
                "tpf_pcfg",
                "tpf_sels",
                "tpf_tsels",
                "tpf_follow",
                "tpf_strs",
                "tpf_prefix",
                "tpf_postfix",
                "tpf_ints",
                "tpf_stats",
            )
        }

    # -- attach ----------------------------------------------------------------------------

    def attach(self, tracepoint: str, cfg: HookConfig | None = None) -> None:
        """Attach (no compile): the exec program, the generic sys_enter program, or (a
        ``kprobe/<function>`` of ``cfg``) the kprobe program."""
        if tracepoint.startswith("kprobe/"):  # per entry: its return probe, its Override
            assert cfg is not None, "a kprobe is attached for a hook entry"
            attached = tracepoint in self._attached
            kprobe_attach(self, tracepoint.removeprefix("kprobe/"), cfg, attached=attached)
            self._attached.add(tracepoint)
            return
        if tracepoint in self._attached:
            return
        fn = b"tpf_exec" if tracepoint == "sched/sched_process_exec" else b"tpf_sys_enter"
        self.bpf.attach_tracepoint(tp=tracepoint.replace("/", ":").encode(), fn_name=fn)
        self._attached.add(tracepoint)

    def detach(self, tracepoint: str) -> None:
        if tracepoint not in self._attached:
            return
        if tracepoint.startswith("kprobe/"):
            kprobe_detach(self, tracepoint.removeprefix("kprobe/"))
            self._attached.discard(tracepoint)
            return
        self.bpf.detach_tracepoint(tracepoint.replace("/", ":").encode())
        self._attached.discard(tracepoint)

    @property
    def attached(self) -> frozenset[str]:
        return frozenset(self._attached)

    def program_fd(self, name: str) -> int:
        """The fd of a loaded program (``tpf_exec``, ``tpf_sys_enter``, ...): benchmarks read
        its run-time statistics from it."""
        return int(self.bpf.funcs[name.encode()].fd)

    # -- config writes ---------------------------------------------------------------------

    def write_config(self, config_id: int, cfg: HookConfig) -> None:
        """The selectors and value sets of one hook entry, keyed by its config ID."""
        sels = self._t["tpf_sels"]
        for s, sel in enumerate(cfg.selectors):
            leaf = sels.Leaf()
            leaf.nargs = len(sel.args)
            leaf.bin_op = int(sel.bin_op)
            leaf.actions = int(sel.actions)
            leaf.error = sel.error
            leaf.sig = sel.signal
            leaf.task = sel_task_flags(sel.task)
            if sel.task:  # before the selector that points to them
                ids, bids = self._task_sets.assign(config_id, sel.task)
                tsels = self._t["tpf_tsels"]
                tsels[tsels.Key(config_id, s)] = fill_tsel(tsels.Leaf(), sel.task, ids, bids)
            for j, arg in enumerate(sel.args):
                a = leaf.args[j]
                a.kind = int(arg.kind)
                a.src = arg.src
                a.type = int(arg.int_type)
                a.op = int(arg.op)
                a.imm = arg.imm
                self._write_sets(config_id, s, j, arg)
            for path in sel.binaries:
                self._strs_put(config_id, s, layout.ARG_BINARY, path)
            write_return_filter(self.bpf, config_id, s, sel.ret_args, self._write_sets)
            sels[sels.Key(config_id, s)] = leaf

    def delete_config(self, config_id: int, cfg: HookConfig) -> None:
        sels = self._t["tpf_sels"]
        for s, sel in enumerate(cfg.selectors):
            _delete(sels, sels.Key(config_id, s))
            _delete(self._t["tpf_tsels"], self._t["tpf_tsels"].Key(config_id, s))
            for path in sel.binaries:
                _delete(self._t["tpf_strs"], self._str_key(config_id, s, layout.ARG_BINARY, path))
            for j, arg in enumerate(sel.args):
                self._write_sets(config_id, s, j, arg, delete=True)
            write_return_filter(self.bpf, config_id, s, sel.ret_args, self._write_sets, delete=True)
        self._task_sets.release(config_id)  # after the selectors that used them

    def _write_sets(
        self, config: int, s: int, j: int, arg: ArgMatch, *, delete: bool = False
    ) -> None:
        if arg.kind is Kind.NET:
            write_sets(self.bpf.get_table(b"tpf_netsets"), config, s, j, arg, delete=delete)
            return
        if arg.kind is Kind.INT:
            ints = self._t["tpf_ints"]
            for value in arg.ints:
                key = ints.Key(config, s, j, (ct.c_uint8 * 2)(), value)
                if delete:
                    _delete(ints, key)
                else:
                    ints[key] = ct.c_uint8(1)
            return
        for text in arg.strings:
            if arg.op in (Op.EQ, Op.NE):
                if delete:
                    _delete(self._t["tpf_strs"], self._str_key(config, s, j, text))
                else:
                    self._strs_put(config, s, j, text)
            else:
                table = self._t["tpf_prefix" if arg.op.prefix_set else "tpf_postfix"]
                data = text if arg.op.prefix_set else text[::-1]
                key = table.Key()
                key.prefixlen = 64 + 8 * len(data)
                key.config, key.sel, key.arg = config, s, j
                key.s = data
                if delete:
                    _delete(table, key)
                else:
                    table[key] = ct.c_uint8(1)

    def _str_key(self, config: int, s: int, j: int, value: bytes) -> Any:
        key = self._t["tpf_strs"].Key()
        key.word0 = 0
        key.config, key.sel, key.arg = config, s, j
        key.s = value
        return key

    def _strs_put(self, config: int, s: int, j: int, value: bytes) -> None:
        self._t["tpf_strs"][self._str_key(config, s, j, value)] = ct.c_uint8(1)

    def write_slot(
        self, hook: int, slot: int, config_id: int, policy_id: int, cfg: HookConfig
    ) -> None:
        slots = self._t["tpf_slots"]
        slots[slots.Key(hook, slot)] = slots.Leaf(
            config_id, policy_id, len(cfg.selectors), cfg.capture
        )

    def delete_slot(self, hook: int, slot: int) -> None:
        slots = self._t["tpf_slots"]
        _delete(slots, slots.Key(hook, slot))

    def write_policy_hook(
        self, hook: int, policy_id: int, entries: Sequence[tuple[int, HookConfig]]
    ) -> None:
        """A filtered policy's entries on a hook, replaced whole (one map update)."""
        table = self._t["tpf_pcfg"]
        leaf = table.Leaf()
        leaf.n = len(entries)
        for j, (config_id, cfg) in enumerate(entries):
            slot = leaf.slots[j]
            slot.config, slot.policy_id = config_id, policy_id
            slot.nsel, slot.capture = len(cfg.selectors), cfg.capture
        table[table.Key(hook, policy_id)] = leaf

    def delete_policy_hook(self, hook: int, policy_id: int) -> None:
        table = self._t["tpf_pcfg"]
        _delete(table, table.Key(hook, policy_id))

    def write_hook(
        self,
        hook: int,
        n: int,
        npol: int,
        str_mask: int,
        rev_mask: int,
        capture: int,
        bin_mask: int = 0,
    ) -> None:
        hooks = self._t["tpf_hooks"]
        leaf = hooks.Leaf()
        leaf.n, leaf.str_mask, leaf.rev_mask, leaf.capture = n, str_mask, rev_mask, capture
        leaf.npol, leaf.bin_mask = npol, bin_mask
        hooks[ct.c_int(hook)] = leaf

    # -- stats and events -----------------------------------------------------------------

    def read_stats(self) -> dict[tuple[int, int], int]:
        """(config ID, layout.Stat) -> count, summed over CPUs."""
        out: dict[tuple[int, int], int] = {}
        for key, values in self._t["tpf_stats"].items():
            k = int(key.value)
            out[(k >> 8, k & 0xFF)] = sum(int(v) for v in values)
        return out

    def delete_stats(self, config_ids: Iterable[int]) -> None:
        table = self._t["tpf_stats"]
        for config in config_ids:
            for stat in layout.Stat:
                _delete(table, table.Key((config << 8) | int(stat)))

    def open_events(self, callback: Any) -> None:
        self.bpf[b"tpf_events"].open_ring_buffer(callback)

    def poll(self, timeout_ms: int) -> None:
        self.bpf.ring_buffer_poll(timeout_ms)

    def consume(self) -> None:
        self.bpf.ring_buffer_consume()

    def map_memlock(self) -> Mapping[str, int]:
        """Kernel memory of the program's own maps (fdinfo memlock), by map name."""
        from tpfilter import bpfsys

        result: dict[str, int] = {}
        for name, table in self._t.items():
            try:
                result[name] = bpfsys.memlock(table.map_fd)
            except OSError:
                continue
        return result

    def close(self) -> None:
        for tp in list(self._attached):
            try:
                self.detach(tp)
            except Exception:  # best effort: cleanup detaches the rest
                log.exception("detach %s", tp)
        self.lsm_overrides.close()
        self.records.close()
        self.bpf.cleanup()


def _delete(table: Any, key: Any) -> None:
    with contextlib.suppress(KeyError):
        del table[key]
