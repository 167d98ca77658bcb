"""The TracingPolicy programs: generic BPF programs compiled once, driven by maps.

See :mod:`tpfilter.programs.manager` (the agent's entry point) and docs/policies.md.
"""

from __future__ import annotations

from tpfilter.programs.manager import ProgramManager, ProgramStatus
from tpfilter.programs.metrics import Metrics

__all__ = ["Metrics", "ProgramManager", "ProgramStatus"]
