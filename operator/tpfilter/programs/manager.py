"""ProgramManager: the agent's handle on the policy programs.

``start()`` probes the node, compiles bpf/programs/tpf_programs.c once and attaches the
exec program. ``sync(policies)`` makes the programs' maps say what the policies say -
compiling nothing - and returns a status per policy. Events from the ring buffer go out
as JSON lines, pod-attributed through the agent's ``resolve(cgroup_id)``.

How a sync changes the maps without a moment of wrong enforcement (per hook):

1. a new or changed policy's selectors and value sets are written under fresh config
   IDs (nothing points at them yet);
2. the hook's entries go from old to new (:mod:`tpfilter.programs.hooktable`: string
   masks widened first, a filtered policy's entries replaced whole under
   ``(hook, policy ID)``, the unfiltered list rewritten in place);
3. the old configs' selectors and sets are deleted.

A program that read an entry just before step 3 may find its selectors gone: it then
takes no decision for that policy (fail closed for Post, open for Sigkill, for that one
event in flight). Changes are effective when ``sync`` returns.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from tpfilter.models import Policy
from tpfilter.programs import layout
from tpfilter.programs.actionstats import ActionTotals, metric_families
from tpfilter.programs.btf import KernelBtf
from tpfilter.programs.compiler import compile_spec, hooks_of
from tpfilter.programs.eventpump import EventPump
from tpfilter.programs.events import ConfigInfo
from tpfilter.programs.hooktable import Entry as _Entry
from tpfilter.programs.hooktable import over_capacity, write_hook
from tpfilter.programs.hostns import host_namespaces
from tpfilter.programs.kprobes import SYSCALL_PREFIXES, KprobeHooks
from tpfilter.programs.metrics import Metrics
from tpfilter.programs.plan import HookConfig, NodeEnv
from tpfilter.programs.probe import NodeFeatures, probe_features
from tpfilter.programs.tasksel import needs_records
from tpfilter.programs.tracefs import TracepointFormat, read_format, syscall_numbers

log = logging.getLogger(__name__)

State = Literal["loaded", "unsupported", "error", "pending"]
Resolver = Callable[[int], "tuple[str, str, str] | None"]

EXEC_TRACEPOINT = "sched/sched_process_exec"


@dataclass(frozen=True, slots=True)
class ProgramStatus:
    """Where a policy stands with the programs on this node."""

    uid: str
    policy: str  # str(PolicyKey)
    policy_id: int | None
    state: State
    reasons: tuple[str, ...] = ()
    hooks: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "policy": self.policy,
            "policy_id": self.policy_id,
            "state": self.state,
            "reasons": list(self.reasons),
            "hooks": list(self.hooks),
        }


@dataclass(slots=True)
class _Loaded:
    uid: str
    policy: str
    policy_id: int
    fingerprint: tuple[int, tuple[HookConfig, ...]]
    configs: list[tuple[int, HookConfig]] = field(default_factory=list)


class ProgramManager:
    def __init__(
        self,
        *,
        pin_dir: Path,
        node_name: str,
        resolve: Resolver,
        events_out: TextIO | Path | None,
        metrics: Metrics | None = None,
        probe_lsm: bool = True,
    ) -> None:
        self._pin_dir = Path(pin_dir)
        self._node = node_name
        self._resolve = resolve
        self._events_out = events_out
        self.metrics = metrics
        self._probe_lsm = probe_lsm
        self._lock = threading.RLock()
        self._programs: Any = None  # loader.Programs once started
        self._unavailable: str | None = "not started"
        self.features: NodeFeatures | None = None
        self._kernel: KernelBtf | None = None  # the node's BTF (kprobes)
        self._host_ns = host_namespaces()  # what host_ns means in matchNamespaces
        self._khooks = KprobeHooks()
        self._formats: dict[tuple[str, str], TracepointFormat | None] = {}
        self._loaded: dict[str, _Loaded] = {}
        self._hooks: dict[int, list[_Entry]] = {}
        self._infos: dict[int, ConfigInfo] = {}
        self._retired: list[int] = []
        self._next_config = 1
        self._actions = ActionTotals()  # what the programs did, per policy, hook and action
        self._statuses: dict[str, ProgramStatus] = {}
        self._pump: EventPump | None = None  # ring buffer -> JSON lines (eventpump.py)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifetime ---------------------------------------------------------------------------

    def start(self, *, events_thread: bool = True) -> None:
        """Probe, compile once, load, attach the exec program; start the event reader.

        A node that cannot run the programs (no tracefs, a compile or load failure) is
        logged and every policy with hooks is then reported unsupported with that
        reason; the rest of the agent keeps working.
        """
        from tpfilter.programs.loader import Programs

        t0 = time.monotonic()
        self.features = features = probe_features(lsm=self._probe_lsm)
        for name, answer in features.table():
            log.info("node feature %-17s %s", name + ":", answer)
        self._unavailable = features.tracepoints
        exec_fmt = self._format("sched", "sched_process_exec")
        if self._unavailable is None and exec_fmt is None:
            self._unavailable = "tracepoint sched/sched_process_exec does not exist here"
        if self._unavailable is not None:
            log.error("policy programs unavailable on this node: %s", self._unavailable)
            return
        assert exec_fmt is not None
        try:
            self._kernel = KernelBtf.load_or_none()
            ok = features.kprobes is None, features.lsm is None
            programs = Programs(
                pin_dir=self._pin_dir,
                exec_format=exec_fmt,
                kprobes=ok[0],
                lsm=ok[1],
                kernel=self._kernel,
            )
        except Exception as exc:  # bcc raises plain Exception for compile/load errors
            self._unavailable = f"the policy programs failed to compile or load: {exc}"
            log.exception("policy programs unavailable")
            return
        self._programs = programs
        try:
            programs.attach(EXEC_TRACEPOINT)
            self._pump = EventPump(
                node=self._node, resolve=self._resolve, out=self._events_out, info=self._info_of
            )
            programs.open_events(self._on_event)
        except Exception:
            self.close()
            raise
        self._unavailable = None
        report = programs.report
        log.info(
            "policy programs ready: probe+compile+load %.2fs (compile %.2fs, load %.2fs), "
            "agent RSS after load %.1f MiB (peak %.1f MiB)",
            time.monotonic() - t0,
            report.compile_seconds,
            report.load_seconds,
            report.rss_now_bytes / 2**20,
            report.rss_after_bytes / 2**20,
        )
        if self.metrics is not None:
            self.metrics.compile_seconds.set(report.compile_seconds)
            self.metrics.load_seconds.set(report.load_seconds)
            self.metrics.rss_after_load.set(report.rss_now_bytes)
            self.metrics.rss_peak.set(report.rss_after_bytes)
            self.metrics.add_collector(self._collect_metrics)
        if events_thread:
            self._thread = threading.Thread(target=self._event_loop, name="tpf-events", daemon=True)
            self._thread.start()

    @property
    def load_report(self) -> Any:
        return self._programs.report if self._programs is not None else None

    @property
    def available(self) -> bool:
        return self._programs is not None

    def close(self) -> None:
        """Detach and unload the programs (the pinned filter maps stay)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._programs is not None:
                try:
                    self._programs.consume()
                except Exception:
                    log.debug("final ring buffer read failed", exc_info=True)
                self._programs.close()
                self._programs = None
            if self._pump is not None:
                self._pump.close()
                self._pump = None
            self._loaded.clear()
            self._hooks.clear()

    # -- events -----------------------------------------------------------------------------

    def poll_events(self, timeout_ms: int = 0) -> int:
        """Read the ring buffer (up to ``timeout_ms`` for a first event); events written."""
        if self._programs is None:
            return 0
        before = self.events_written
        self._programs.poll(timeout_ms)
        return self.events_written - before

    def _event_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_events(200)
            except Exception:
                log.exception("event reader failed")
                time.sleep(1)

    def _on_event(self, _ctx: Any, data: Any, _size: int) -> int:
        try:
            programs, pump = self._programs, self._pump
            if programs is not None and pump is not None:
                pump.feed(programs.event_type, data)
        except Exception:  # never let an exception unwind into bcc's C callback
            log.exception("event handling failed")
        return 0

    def _info_of(self, config: int) -> ConfigInfo | None:
        with self._lock:
            return self._infos.get(config)

    @property
    def events_written(self) -> int:
        return self._pump.written if self._pump is not None else 0

    # -- sync -------------------------------------------------------------------------------

    def _format(self, subsystem: str, event: str) -> TracepointFormat | None:
        key = (subsystem, event)
        if key not in self._formats:
            tracefs = self.features.tracefs if self.features else None
            self._formats[key] = read_format(tracefs, subsystem, event) if tracefs else None
        return self._formats[key]

    def _env(self) -> NodeEnv:
        features = self.features
        return NodeEnv(
            tracepoint_format=self._format,
            syscall_numbers=syscall_numbers(),
            kprobes=features.kprobes if features else "not probed",
            lsm=features.lsm if features else "not probed",
            tracepoints=self._unavailable,
            kernel=self._kernel,
            kprobe_hook=self._khooks,
            syscall_prefix=SYSCALL_PREFIXES.get(os.uname().machine, ""),
            host_ns=self._host_ns,
        )

    def statuses(self) -> dict[str, ProgramStatus]:
        with self._lock:
            return dict(self._statuses)

    def sync(self, policies: Sequence[tuple[Policy, int | None]]) -> dict[str, ProgramStatus]:
        """Make the programs enforce exactly ``policies`` (policy, its policy ID).

        Idempotent; unchanged policies cost nothing. A filtered policy needs its ID
        (``Engine.policy_id(uid)``): without one it is ``pending``, never run unfiltered.
        """
        with self._lock:
            env = self._env()
            statuses: dict[str, ProgramStatus] = {}
            wanted: dict[str, tuple[str, int, tuple[HookConfig, ...]]] = {}
            for policy, given_id in policies:
                name = str(policy.key)
                policy_id = given_id if policy.filtered else 0
                if policy.filtered and not policy_id:
                    statuses[policy.uid] = ProgramStatus(
                        policy.uid, name, None, "pending", ("no policy ID yet (filter map)",)
                    )
                    continue
                spec = dict(policy.spec.model_extra or {})
                plan = compile_spec(spec, env)
                if not plan.ok:
                    statuses[policy.uid] = ProgramStatus(
                        policy.uid, name, policy_id, "unsupported", plan.unsupported
                    )
                    continue
                wanted[policy.uid] = (name, policy_id or 0, plan.configs)
            self._apply(wanted, statuses)
            self._report(statuses)
            self._statuses = statuses
            return dict(statuses)

    def _alloc_config(self) -> int:
        while True:
            config = self._next_config
            self._next_config = config + 1 if config < layout.MAX_CONFIG_ID else 1
            if config not in self._infos:
                return config

    def _apply(
        self,
        wanted: dict[str, tuple[str, int, tuple[HookConfig, ...]]],
        statuses: dict[str, ProgramStatus],
    ) -> None:
        programs = self._programs
        old_hooks = {hook: list(entries) for hook, entries in self._hooks.items()}
        keep: dict[str, _Loaded] = {}
        retire: list[_Loaded] = []
        for uid, loaded in self._loaded.items():
            want = wanted.get(uid)
            if want is not None and (want[1], want[2]) == loaded.fingerprint:
                keep[uid] = loaded
            else:
                retire.append(loaded)
        retired_ids = {c for r in retire for c, _ in r.configs}
        new_hooks: dict[int, list[_Entry]] = {
            hook: [e for e in entries if e.config_id not in retired_ids]
            for hook, entries in old_hooks.items()
        }
        for uid, loaded in keep.items():
            statuses[uid] = ProgramStatus(
                uid, loaded.policy, loaded.policy_id, "loaded", (), hooks_of(loaded.fingerprint[1])
            )

        # Process records first, so that a change selector never runs without them.
        records = needs_records(c for _, _, configs in wanted.values() for c in configs)
        records_error = ""
        if programs is not None and records:
            try:
                programs.records.enable()
            except Exception as exc:  # reported by the policies that need them, not raised
                log.exception("process records could not be made")
                records_error = f"the process records of change selectors failed: {exc}"
        # New and changed policies, in a stable order (capacity errors are deterministic).
        added: dict[str, _Loaded] = {}
        for uid in sorted((u for u in wanted if u not in keep), key=lambda u: wanted[u][0]):
            name, policy_id, configs = wanted[uid]
            if programs is None:
                statuses[uid] = ProgramStatus(
                    uid, name, policy_id, "unsupported", (self._unavailable or "no programs",)
                )
                continue
            full = over_capacity(configs, policy_id, new_hooks)
            if full:
                statuses[uid] = ProgramStatus(uid, name, policy_id, "error", full)
                continue
            if records_error and needs_records(configs):
                statuses[uid] = ProgramStatus(uid, name, policy_id, "error", (records_error,))
                continue
            loaded = _Loaded(uid, name, policy_id, (policy_id, configs))
            try:
                for cfg in configs:
                    if cfg.attach is not None:
                        programs.attach(cfg.attach, cfg)
                    config_id = self._alloc_config()
                    self._infos[config_id] = ConfigInfo(name, uid, cfg)
                    loaded.configs.append((config_id, cfg))
                    programs.write_config(config_id, cfg)
            except Exception as exc:
                log.exception("policy %s: writing its program maps failed", name)
                for config_id, cfg in loaded.configs:
                    self._forget_config(config_id, cfg)
                statuses[uid] = ProgramStatus(
                    uid, name, policy_id, "error", (f"writing program maps failed: {exc}",)
                )
                continue
            for config_id, cfg in loaded.configs:
                new_hooks.setdefault(cfg.hook, []).append(_Entry(config_id, policy_id, cfg))
            added[uid] = loaded
            statuses[uid] = ProgramStatus(uid, name, policy_id, "loaded", (), hooks_of(configs))

        if programs is not None:
            for hook in sorted(set(old_hooks) | set(new_hooks)):
                self._write_hook(hook, old_hooks.get(hook, []), new_hooks.get(hook, []))
            self._refresh_stats()
            for loaded in retire:
                for config_id, cfg in loaded.configs:
                    self._forget_config(config_id, cfg)
            if not records:
                programs.records.disable()  # after the configs that compared with them
            in_use = {e.cfg.attach for entries in new_hooks.values() for e in entries}
            for tp in programs.attached - in_use - {EXEC_TRACEPOINT}:
                programs.detach(tp)
        self._hooks = {hook: entries for hook, entries in new_hooks.items() if entries}
        self._loaded = {**keep, **added}

    def _write_hook(self, hook: int, old: list[_Entry], new: list[_Entry]) -> None:
        write_hook(self._programs, hook, old, new)

    def _forget_config(self, config_id: int, cfg: HookConfig) -> None:
        programs = self._programs
        if programs is not None:
            try:
                programs.delete_config(config_id, cfg)
                programs.delete_stats([config_id])
            except Exception:
                log.exception("deleting config %d failed", config_id)
        self._actions.forget(config_id)
        # Keep the description a while: events of this config may still be in the ring.
        self._retired.append(config_id)
        while len(self._retired) > 4096:
            self._infos.pop(self._retired.pop(0), None)

    def _report(self, statuses: dict[str, ProgramStatus]) -> None:
        for uid, status in statuses.items():
            before = self._statuses.get(uid)
            if before == status:
                continue
            if status.state == "loaded":
                log.info("policy %s: loaded on %s", status.policy, ", ".join(status.hooks) or "-")
            else:
                log.warning(
                    "policy %s: %s on node %s: %s",
                    status.policy,
                    status.state,
                    self._node,
                    "; ".join(status.reasons),
                )
        for uid in self._statuses.keys() - statuses.keys():
            log.info("policy %s: removed from the programs", self._statuses[uid].policy)
        if self.metrics is not None:
            for state in ("loaded", "unsupported", "error", "pending"):
                n = sum(1 for s in statuses.values() if s.state == state)
                self.metrics.policies.labels(state).set(n)

    # -- stats and metrics ----------------------------------------------------------------

    def _refresh_stats(self) -> None:
        if self._programs is None:
            return
        lost = self._actions.records_lost
        self._actions.refresh(self._programs.read_stats(), self._infos)
        if self._actions.records_lost > lost:
            log.warning(
                "process record map full: %d new processes in all have no record, their "
                "change selectors cannot match (tpfilter_process_records_lost_total)",
                self._actions.records_lost,
            )

    def action_totals(self) -> dict[tuple[str, str, str], int]:
        """(policy, hook, action) -> count since start, including removed policies."""
        with self._lock:
            self._refresh_stats()
            return self._actions.totals()

    def _collect_metrics(self) -> Iterable[Any]:
        totals = self.action_totals()
        with self._lock:
            names = {lo.policy_id: lo.policy for lo in self._loaded.values() if lo.policy_id}
            names.update({s.policy_id: s.policy for s in self._statuses.values() if s.policy_id})
            mem = self._programs.map_memlock() if self._programs is not None else {}
        yield from metric_families(
            totals=totals,
            records_lost=self._actions.records_lost,
            policy_names=names,
            pin_dir=self._pin_dir,
            program_memlock=mem,
        )
