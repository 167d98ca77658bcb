"""One node on this machine: what the tests, the benchmarks and the demo each need.

A scratch cgroup tree inside the real cgroup v2 mount (where the kubelet stand-in makes
its containers), a bpffs pin directory and a state directory for the agent, the kubelet
stand-in with its Node registered, and the agent process (not started). ``close()``
removes all of it: processes, cgroups and pins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tpfilter.bpfmaps import OUTER_PIN_NAME, PinnedFilterMaps
from tpfilter.indexmap import INDEX_PIN_NAME
from tpfilter.reporter import GROUP, PLURAL, VERSION
from tpfilter_dev.agentproc import AgentProcess
from tpfilter_dev.cgroupfs import remove_cgroup_tree
from tpfilter_dev.controlplane import ControlPlane
from tpfilter_dev.kubelet import Kubelet


class LocalNode:
    def __init__(
        self,
        *,
        plane: ControlPlane,
        api_client: Any,
        name: str,
        cgroup_root: Path,
        pin_dir: Path,
        work: Path,
        labels: dict[str, str] | None = None,
        driver: str = "systemd",
        runtime: str = "containerd",
    ) -> None:
        self.name = name
        self.cgroup_root = cgroup_root
        self.pin_dir = pin_dir
        self.state_dir = work / "state"
        cgroup_root.mkdir(exist_ok=True)
        self.kubelet = Kubelet(
            api_client=api_client,
            node_name=name,
            cgroup_root=cgroup_root,
            driver=driver,
            runtime=runtime,
        )
        self.kubelet.register_node(labels)
        self._api_client = api_client
        self.agent = AgentProcess(
            kubeconfig=plane.kubeconfig,
            node_name=name,
            pin_dir=pin_dir,
            state_dir=self.state_dir,
            cgroup_root=cgroup_root,
            log_path=work / "agent.log",
        )

    def close(self) -> None:
        self.agent.stop()
        try:
            self.kubelet.close()
            self.delete_from_api()
        finally:
            remove_cgroup_tree(self.cgroup_root)
            (self.pin_dir / INDEX_PIN_NAME).unlink(missing_ok=True)
            if (self.pin_dir / OUTER_PIN_NAME).exists():
                with PinnedFilterMaps(pin_dir=self.pin_dir) as maps:
                    maps.remove_pins()

    def delete_from_api(self) -> None:
        """Remove this node's Node object and its report, every shard of it (a node leaving
        the cluster)."""
        import kubernetes

        custom: Any = kubernetes.client.CustomObjectsApi(self._api_client)
        listed: dict[str, Any] = custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        reports: list[dict[str, Any]] = listed["items"]
        names = {self.name} | {
            str(r["metadata"]["name"]) for r in reports if r.get("nodeName") == self.name
        }

        def delete(name: str | None) -> None:
            if name is None:
                kubernetes.client.CoreV1Api(self._api_client).delete_node(self.name)
            else:
                custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)

        for name in [None, *sorted(names)]:
            try:
                delete(name)
            except Exception as exc:  # gone already: fine
                if getattr(exc, "status", None) != 404:
                    raise
