"""The Override programs of BPF LSM hooks: one small bcc module per hook in use.

A kprobe selector on ``security_<hook>`` records its ``argError`` for the task; the BPF LSM
program of ``<hook>`` (bpf/programs/tpf_lsm_override.c), which the kernel runs inside
``security_<hook>``, returns it. That program is compiled for one hook at a time because
bcc loads and attaches every LSM program of a module as it compiles it, and a kernel has a
few hundred hooks; a module shares the main module's verdict map (bcc's ``extern``), so it
must be made in the agent's process after the main module.
"""

from __future__ import annotations

import logging
from typing import Any

from tpfilter import bpfsrc

log = logging.getLogger(__name__)
SOURCE = "tpf_lsm_override.c"


class LsmOverrides:
    """The loaded Override programs, by LSM hook. Not thread-safe (the manager's lock)."""

    def __init__(self) -> None:
        self._modules: dict[str, Any] = {}  # LSM hook -> its bcc module

    @property
    def hooks(self) -> frozenset[str]:
        return frozenset(self._modules)

    def ensure(self, lsm_hook: str, kprobe_hook: int) -> None:
        """Load (compile, attach) the Override program of ``lsm_hook`` if it is not yet."""
        if lsm_hook in self._modules:
            return
        from bcc import BPF

        programs_dir = bpfsrc.include_dir() / "programs"
        text = (programs_dir / SOURCE).read_bytes()
        bpf = BPF(
            text=text,
            cflags=[
                f"-I{programs_dir}",
                f"-DTPF_LSM_HOOK={lsm_hook}",
                f"-DTPF_OVERRIDE_HOOK={kprobe_hook}",
            ],
        )  # bcc attaches the LSM program here
        self._modules[lsm_hook] = bpf
        log.info("Override program of BPF LSM hook %s loaded", lsm_hook)

    def release(self, lsm_hook: str) -> None:
        module = self._modules.pop(lsm_hook, None)
        if module is not None:
            module.cleanup()
            log.info("Override program of BPF LSM hook %s unloaded", lsm_hook)

    def close(self) -> None:
        for hook in list(self._modules):
            self.release(hook)
