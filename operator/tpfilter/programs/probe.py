"""Which hook kinds this node can run, probed once at agent start.

Each answer is ``None`` (available) or the reason it is not, worded for a policy status.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tpfilter.programs.tracefs import find_tracefs

log = logging.getLogger(__name__)

KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe/type")
ERROR_INJECTION = Path("/sys/kernel/debug/error_injection/list")


@dataclass(frozen=True, slots=True)
class NodeFeatures:
    tracepoints: str | None
    kprobes: str | None
    kprobe_override: str | None
    lsm: str | None
    tracefs: Path | None

    def table(self) -> list[tuple[str, str]]:
        return [
            ("tracepoints", self.tracepoints or "yes"),
            ("kprobes", self.kprobes or "yes"),
            ("kprobe override", self.kprobe_override or "yes"),
            ("BPF LSM programs", self.lsm or "yes"),
            ("Override", self.override_mechanism),
        ]

    @property
    def override_mechanism(self) -> str:
        """What runs Override of a kprobe here (tpfilter.programs.kprobes)."""
        if self.kprobes is not None:
            return f"none: {self.kprobes}"
        if self.lsm is not None:
            return f"none (bpf_override_return is not used; BPF LSM: {self.lsm})"
        return "BPF LSM program of the security_<hook> function's hook (any int hook)"


def probe_kprobes(tracefs: Path | None) -> str | None:
    if KPROBE_PMU.exists() or (tracefs is not None and (tracefs / "kprobe_events").exists()):
        return None
    return (
        "this node's kernel has no kprobes (no kprobe PMU in /sys/bus/event_source/devices "
        "and no kprobe_events in tracefs: CONFIG_KPROBES is off)"
    )


def probe_override(kprobes: str | None) -> str | None:
    if kprobes is not None:
        return f"no kprobe override: {kprobes}"
    if not ERROR_INJECTION.exists():
        return "no kprobe override (no error injection list: CONFIG_BPF_KPROBE_OVERRIDE off?)"
    return None


def probe_lsm() -> str | None:
    """Load a do-nothing BPF LSM program (file_open); the kernel's answer is the probe."""
    try:
        from bcc import BPF
    except ImportError:
        return "bcc is not importable"
    if not BPF.support_lsm():
        return "the kernel has no BPF LSM hooks (bpf not in the LSM list, or no BTF)"
    # bcc prints the kernel's refusal on stderr (fd 2); keep the probe quiet.
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(io.StringIO()):
            os.dup2(null.fileno(), 2)
            try:
                probe = BPF(text=b"LSM_PROBE(file_open, struct file *file) { return 0; }")
            except Exception as exc:  # bcc raises plain Exception
                why = str(exc)
                if "super-user" in why:  # bcc's wording for EPERM
                    why = "EPERM"
                return (
                    "BPF LSM programs do not load on this node (the kernel refused a "
                    f"do-nothing file_open program: {why})"
                )
            finally:
                os.dup2(saved, 2)
        probe.cleanup()
    finally:
        os.close(saved)
    return None


def probe_features(*, lsm: bool = True) -> NodeFeatures:
    tracefs = find_tracefs()
    tracepoints = None if tracefs is not None else "tracefs is not mounted (/sys/kernel/tracing)"
    kprobes = probe_kprobes(tracefs)
    return NodeFeatures(
        tracepoints=tracepoints,
        kprobes=kprobes,
        kprobe_override=probe_override(kprobes),
        lsm=probe_lsm() if lsm else "not probed",
        tracefs=tracefs,
    )
