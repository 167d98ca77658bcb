"""Test harness: readers of what the agent left in the kernel."""

from __future__ import annotations

from tpfilter_dev.agentproc import AgentProcess, eventually, kernel_view

__all__ = ["AgentProcess", "eventually", "kernel_view"]
