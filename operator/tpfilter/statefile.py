"""The agent's node-local bookkeeping: which policy owns which ID.

The kernel maps hold cgroup IDs keyed by policy ID; the kernel has no idea which policy
object an ID stands for. This small JSON file does, so a restarted agent adopts the pinned
maps instead of rebuilding them (no moment when a selected container is unfiltered), and
`tpfilter status` can name policies without asking the API server.

It lives on the host (``/run/tpfilter`` by default, a hostPath in the DaemonSet): like
bpffs it is gone after a reboot, and so are the maps it describes. Writes are atomic
(write, fsync, rename). The agent saves it *before* it creates a map, so a crash leaves at
worst a record without a map (harmless), never a map nobody owns.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tpfilter.ids import PolicyIds, PolicyRecord

FORMAT = 1
STATE_FILE = "policies.json"  # policy ID records (this module)
STATUS_FILE = "status.json"  # the agent's last reconcile result (tpfilter.agent)


def load(path: Path) -> PolicyIds:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return PolicyIds()
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown state format {data.get('format')!r}")
    return PolicyIds(
        (PolicyRecord(**r) for r in data.get("policies", [])), next_id=data.get("next_id")
    )


def save(path: Path, ids: PolicyIds) -> None:
    data = {"format": FORMAT, "next_id": ids.next_id, "policies": [r.to_json() for r in ids]}
    write_json(path, data)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
