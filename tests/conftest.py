"""Settings for the whole suite.

Hypothesis' default per-example deadline (200 ms of wall clock) makes a property test fail
when a loaded machine pauses, not when the property is false: timing belongs in the
benchmarks, so no property test here has a deadline.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("tpfilter", deadline=None)
settings.load_profile("tpfilter")
