"""``tpfilter controller`` as a separate process, the way its Deployment runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tpfilter_dev.agentproc import TPFILTER, eventually
from tpfilter_dev.controlplane import die_with_parent, free_port


@dataclass
class ControllerProcess:
    kubeconfig: Path
    log_path: Path
    interval: float = 0.2
    stale_after: float = 180.0
    sweep_seconds: float = 300.0
    leader_elect: bool = False
    lease_seconds: float = 4.0
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)

    def start(self, *, wait: bool = True) -> None:
        argv = [
            str(TPFILTER),
            "controller",
            "--interval",
            str(self.interval),
            "--stale-after",
            str(self.stale_after),
            "--sweep-seconds",
            str(self.sweep_seconds),
            "--liveness",
            f"http://127.0.0.1:{self.port}/healthz",
            "-v",
            *self.extra,
        ]
        if self.leader_elect:
            argv += ["--leader-elect", "--lease-seconds", str(self.lease_seconds)]
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        log = open(self.log_path, "ab")  # noqa: SIM115 (lives with the process)
        self.process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
        )
        if wait:
            eventually(self.health, timeout=60, what="controller up")

    def health(self) -> dict[str, object] | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"controller exited with {self.process.returncode}:\n{self.log()}")
        try:
            url = f"http://127.0.0.1:{self.port}/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                data: dict[str, object] = json.loads(response.read())
                return data
        except OSError:
            return None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def log(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
