"""The controller's own list-then-watch of node reports on the real API server
(tpfilter.reportsource): a list of several pages, and a watch that expires (410 Gone).

The first test runs ``tpfilter controller`` with a page of 2 reports against three real
agents. The second runs the source in-process against an API server of its own, started
without its watch cache and with a compaction every second, so that a resourceVersion a
few seconds old is really gone: the source's watch is held back (the only test hook: a
gate before each new watch) while reports change and etcd compacts, then let go; the API
server answers 410, the source lists again, and the report cache (the controller's own,
``tpfilter.reportcache``) ends up exactly as the reports are, the deleted one included.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from harness import eventually
from test_status import TP, counts, wait_status, web_policy

from conftest import Cluster, MakeController, MakeNode
from tpfilter.reportcache import ReportCache
from tpfilter.reporter import GROUP, PLURAL, VERSION, report_body
from tpfilter.reportsource import Gone, ReportSource
from tpfilter.statusapi import KubeReportWatch
from tpfilter_dev.controlplane import ControlPlane

pytestmark = pytest.mark.apiserver
ROOT = Path(__file__).resolve().parents[2]


def test_the_controller_aggregates_from_a_list_of_several_pages_then_the_watch(
    cluster: Cluster, make_node: MakeNode, make_controller: MakeController
) -> None:
    nodes = [make_node(extra=("--no-programs",)) for _ in range(3)]
    cluster.apply_policy(TP, "paged-1", web_policy())

    def reported() -> bool:
        items = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
        mine = {o["metadata"]["name"]: o for o in items}
        return all(len(mine.get(n.name, {}).get("policies", [])) == 1 for n in nodes)

    eventually(reported, timeout=60, what="three reports written")
    controller = make_controller(extra=("--report-page-size", "2"))
    wait_status(cluster, "paged-1", lambda s: counts(s)[:2] == (3, 3))
    listed = [line for line in controller.log(200).splitlines() if "listed" in line]
    assert listed, controller.log(50)
    pages = int(listed[0].split(" in ")[1].split()[0])
    assert pages >= 2  # 3 reports (or more, left by other tests) at 2 a page

    cluster.apply_policy(TP, "paged-2", web_policy())  # comes through the watch
    wait_status(cluster, "paged-2", lambda s: counts(s)[:2] == (3, 3))
    gone = nodes[0]
    gone.agent.stop()
    gone.kubelet.core.delete_node(gone.name)
    wait_status(cluster, "paged-1", lambda s: counts(s)[:2] == (2, 2))


class GatedWatch(KubeReportWatch):
    """The real list and watch; a new watch waits while the gate is closed."""

    def __init__(self, api_client: Any) -> None:
        super().__init__(api_client)
        self.gate = threading.Event()
        self.gate.set()
        self.waiting: str | None = None  # the resourceVersion a held watch will start from

    def watch(self, resource_version: str, timeout: int) -> Iterator[tuple[str, Mapping[str, Any]]]:
        if not self.gate.is_set():
            self.waiting = resource_version
            self.gate.wait()
        return super().watch(resource_version, timeout)


def entry(uid: str, state: str = "Ready", pods: int = 1) -> dict[str, Any]:
    return {
        "uid": uid,
        "kind": "TracingPolicy",
        "name": "p",
        "generation": 1,
        "state": state,
        "cgroups": pods,
        "pods": pods,
    }


def test_an_expired_watch_relists_and_the_cache_loses_nothing(tmp_path: Path) -> None:
    import kubernetes

    args = ("--watch-cache=false", "--etcd-compaction-interval=1s")
    with ControlPlane(workdir=tmp_path / "cp", extra_apiserver_args=args) as plane:
        plane.install_crds(ROOT / "crds")
        client = kubernetes.config.new_client_from_config(config_file=str(plane.kubeconfig))
        custom = kubernetes.client.CustomObjectsApi(client)
        core = kubernetes.client.CoreV1Api(client)

        def put(node: str, state: str = "Ready", pods: int = 1) -> None:
            body = report_body(node, [entry("u", state, pods)], time.time())
            try:
                custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, node, body)
            except kubernetes.client.ApiException as exc:
                assert exc.status == 404
                custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

        for i in range(5):
            put(f"n{i}")
        cache = ReportCache()
        lock = threading.Lock()

        def deliver(event_type: str | None, body: Mapping[str, Any]) -> None:
            with lock:
                cache.update(event_type, body)

        def view() -> dict[str, tuple[str, int]]:
            with lock:
                return {
                    n: (r.entries["u"].state, r.entries["u"].pods) for n, r in cache.reports.items()
                }

        api = GatedWatch(client)
        source = ReportSource(api, deliver, page_size=2, watch_timeout=1)
        stop = threading.Event()
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        try:
            eventually(source.synced.is_set, timeout=30, what="first list")
            assert source.counters.pages == 3  # 5 reports, 2 a page
            assert view() == {f"n{i}": ("Ready", 1) for i in range(5)}
            put("n0", "Error")  # through the watch
            eventually(lambda: view()["n0"] == ("Error", 1), timeout=30, what="watch event")

            api.gate.clear()  # the next watch waits: nothing is watched meanwhile
            eventually(lambda: api.waiting is not None, timeout=30, what="watch held")
            held = str(api.waiting)
            custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, "n1")
            put("n2", pods=7)
            put("n5")

            def compacted() -> bool:  # the held resourceVersion is really gone
                for _ in range(3):  # more revisions for the compactor to pass
                    core.create_namespaced_config_map(
                        "default", {"metadata": {"generateName": "churn-"}}
                    )
                try:
                    list(KubeReportWatch(client).watch(held, 1))
                except Gone:
                    return True
                return False

            eventually(compacted, timeout=60, interval=1.0, what="etcd compaction")
            assert source.counters.relists == 0
            api.gate.set()
            want = {
                "n0": ("Error", 1),
                "n2": ("Ready", 7),
                "n3": ("Ready", 1),
                "n4": ("Ready", 1),
                "n5": ("Ready", 1),
            }
            eventually(lambda: view() == want, timeout=30, what=f"relisted cache {want}")
            assert source.counters.relists == 1
            put("n3", "Pending")  # and the watch goes on after the relist
            eventually(lambda: view()["n3"] == ("Pending", 1), timeout=30, what="watch again")
        finally:
            stop.set()
            api.gate.set()
            thread.join(timeout=10)
