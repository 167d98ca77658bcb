"""kubectl against one kubeconfig, as the dev harnesses run it (e2ecluster, realnode).

One place for the call, so the e2e backends and the real node agree on how a failure reads:
``kubectl <args>: <stderr>``, raised as the caller's error type (the e2e suite's
AssertionError, the real node's RealNodeError).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def run_kubectl(
    kubeconfig: Path | str,
    *args: str,
    check: bool = True,
    stdin: str | None = None,
    timeout: float | None = None,
    error: type[Exception] = AssertionError,
) -> str:
    """kubectl's stdout; with ``check``, a non-zero exit raises ``error`` with its stderr."""
    done = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        input=stdin,
        check=False,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise error(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout
