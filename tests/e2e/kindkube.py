"""kubectl against the e2e kind cluster, the tpfilter agents in it, and polling.

A module of its own (not conftest.py) so that test modules can import it by a unique name.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
Doc = dict[str, Any]


def eventually(
    get: Callable[[], T],
    done: Callable[[T], bool],
    *,
    timeout: float = 90.0,
    interval: float = 1.0,
    what: str = "condition",
) -> T:
    """Call ``get`` until ``done`` accepts its value; fail with the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = get()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout:.0f}s; last: {value!r}")
        time.sleep(interval)


@dataclass(frozen=True)
class Kube:
    """kubectl with a fixed kubeconfig (never the user's default one)."""

    kubeconfig: str

    def run(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 180.0,
    ) -> subprocess.CompletedProcess[str]:
        argv = ["kubectl", f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def json(self, *args: str) -> Doc:
        data: Doc = json.loads(self.run(*args, "-o", "json").stdout)
        return data

    def apply(self, manifest: str | Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        if not isinstance(manifest, str):
            docs = [manifest] if isinstance(manifest, Mapping) else list(manifest)
            manifest = yaml.safe_dump_all(docs)
        self.run("apply", "-f", "-", input=manifest)


@dataclass
class Agents:
    """The chart's DaemonSet and its pods, one per node."""

    kube: Kube
    namespace: str
    release: str
    _args: list[str] = field(default_factory=list)

    @property
    def selector(self) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component=agent"

    def _list(self, resource: str) -> list[Doc]:
        items: list[Doc] = self.kube.json(
            "-n", self.namespace, "get", resource, "-l", self.selector
        )["items"]
        return items

    def daemonset(self) -> Doc:
        items = self._list("daemonsets")
        assert len(items) == 1, f"{len(items)} agent DaemonSets for release {self.release!r}"
        return items[0]

    def pods(self) -> list[Doc]:
        return self._list("pods")

    def pod_on(self, node: str) -> str:
        names: list[str] = [
            p["metadata"]["name"] for p in self.pods() if p["spec"].get("nodeName") == node
        ]
        assert len(names) == 1, f"agent pods on {node}: {names}"
        return names[0]

    def flag(self, name: str, default: str) -> str:
        """A ``--name=value`` argument of the agent container (the chart's values)."""
        if not self._args:
            container = self.daemonset()["spec"]["template"]["spec"]["containers"][0]
            self._args = list(container.get("args", []))
        prefix = f"--{name}="
        return next((a[len(prefix) :] for a in self._args if a.startswith(prefix)), default)

    @property
    def dirs(self) -> list[str]:
        return [
            f"--pin-dir={self.flag('pin-dir', '/sys/fs/bpf/tpfilter')}",
            f"--state-dir={self.flag('state-dir', '/run/tpfilter')}",
        ]

    def exec(
        self, node: str, *cmd: str, check: bool = True, pod: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        pod = pod or self.pod_on(node)
        return self.kube.run(
            "-n", self.namespace, "exec", pod, "-c", "agent", "--", *cmd, check=check
        )

    def status(self, node: str) -> Doc:
        """``tpfilter status --json`` as the agent on ``node`` sees it."""
        data: Doc = json.loads(self.exec(node, "tpfilter", "status", "--json", *self.dirs).stdout)
        return data

    def inner_map_keys(self, node: str, map_id: int) -> set[int]:
        """The cgroup IDs in an inner map (bpftool's JSON: keys as host-order bytes)."""
        out = self.exec(node, "bpftool", "-j", "map", "dump", "id", str(map_id)).stdout
        return {
            int.from_bytes(bytes(int(b, 16) for b in entry["key"]), "little")
            for entry in json.loads(out)
        }

    def map_exists(self, node: str, map_id: int) -> bool:
        return (
            self.exec(node, "bpftool", "map", "show", "id", str(map_id), check=False).returncode
            == 0
        )


def policy_rows(status: Mapping[str, Any], name: str, kind: str = "TracingPolicy") -> list[Doc]:
    return [p for p in status["policies"] if p["name"] == name and p["kind"] == kind]
