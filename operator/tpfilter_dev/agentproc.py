"""``tpfilter agent`` as a separate process, the way a DaemonSet runs it on a node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tpfilter import statefile
from tpfilter.bpfmaps import PinnedFilterMaps
from tpfilter.statefile import STATUS_FILE
from tpfilter_dev.controlplane import die_with_parent, free_port

T = TypeVar("T")
TPFILTER = Path(sys.executable).parent / "tpfilter"


def eventually(
    check: Callable[[], T],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``check`` until it returns a truthy value; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout}s; last value: {last!r}")


@dataclass
class AgentProcess:
    """``tpfilter agent`` for one node, as a DaemonSet would run it."""

    kubeconfig: Path
    node_name: str
    pin_dir: Path
    state_dir: Path
    cgroup_root: Path
    log_path: Path
    resync_seconds: float = 300.0
    # The node report's write rates: fast, so that tests see a change within a second.
    report_interval: float = 0.2
    report_counts_interval: float = 0.5
    heartbeat_seconds: float = 2.0
    extra: tuple[str, ...] = ()  # more arguments, e.g. ("--no-programs",)
    process: subprocess.Popen[bytes] | None = None
    _started: float = 0.0
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)

    def start(self, *, wait: bool = True) -> None:
        argv = [
            str(TPFILTER),
            "agent",
            "--node-name",
            self.node_name,
            "--pin-dir",
            str(self.pin_dir),
            "--state-dir",
            str(self.state_dir),
            "--cgroup-root",
            str(self.cgroup_root),
            "--resync-seconds",
            str(self.resync_seconds),
            "--liveness",
            f"http://127.0.0.1:{self.port}/healthz",
            "--metrics-port",
            str(self.metrics_port),
            "--events-file",
            str(self.events_path),
            "--report-interval",
            str(self.report_interval),
            "--report-counts-interval",
            str(self.report_counts_interval),
            "--heartbeat-seconds",
            str(self.heartbeat_seconds),
            "-v",
            *self.extra,
        ]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives with the process)
        self._started = time.time()
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
        )
        if wait:
            eventually(self.synced, timeout=60, what=f"agent {self.node_name} synced")

    @property
    def events_path(self) -> Path:
        """Where the agent writes policy events (JSON lines)."""
        return self.log_path.with_name(f"{self.node_name}-events.jsonl")

    def health(self) -> dict[str, object] | None:
        try:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                data: dict[str, object] = json.loads(response.read())
                return data
        except OSError:
            return None

    def synced(self) -> bool:
        """The agent has listed the cluster and finished a reconcile since it last started.

        Read from the status file the agent writes after each reconcile, not from the
        liveness endpoint: kopf caches probe results for 10 seconds.
        """
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"agent exited with {self.process.returncode}:\n{self.log()}")
        try:
            status = json.loads((self.state_dir / STATUS_FILE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return bool(status.get("synced")) and status.get("time", 0) >= self._started

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def kernel_view(pin_dir: Path, state_dir: Path) -> dict[str, frozenset[int]]:
    """{policy name as "kind/ns/name" or "kind/name": cgroup IDs in its inner map}.

    Read straight from the pinned maps, named through the agent's state file; a map whose ID
    no record names shows up as "?<id>" (an orphan: a test would fail on it).
    """
    records = {r.policy_id: r for r in statefile.load(state_dir / statefile.STATE_FILE)}
    if not (pin_dir / "policy_filter_maps").exists():
        return {}
    maps = PinnedFilterMaps(pin_dir=pin_dir)
    try:
        state = maps.read_all()
    finally:
        maps.close()
    view = {}
    for pid, inner in state.items():
        record = records.get(pid)
        name = str(record.key) if record else f"?{pid}"
        view[name] = inner.cgroup_ids
    return view
