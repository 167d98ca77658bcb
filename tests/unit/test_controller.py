"""The controller's decisions with a fake API (tpfilter.controller) and the Lease rule
(tpfilter.leader)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from tpfilter.controller import Controller, ControllerConfig, PolicyRef
from tpfilter.leader import LeaseRecord, decide, lease_spec, record_of
from tpfilter.reporter import to_rfc3339


class FakeApi:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.events: list[tuple[str, bool, str]] = []
        self.deleted: list[str] = []
        self.leases: dict[str, float] = {}
        self.pages: dict[str, list[list[Mapping[str, Any]]]] = {}

    def list_page(self, what: str, token: str | None) -> tuple[list[Mapping[str, Any]], str | None]:
        pages = self.pages.get(what, [[]])
        index = int(token or 0)
        following = str(index + 1) if index + 1 < len(pages) else None
        return pages[index], following

    def patch_status(self, ref: PolicyRef, status: Mapping[str, Any]) -> None:
        self.patches.append((ref.name, dict(status)))

    def post_event(self, ref: PolicyRef, warning: bool, reason: str, message: str) -> None:
        self.events.append((ref.name, warning, reason))

    def node_names(self) -> set[str]:
        return set()

    def node_leases(self) -> dict[str, float]:
        return dict(self.leases)

    def delete_report(self, node: str) -> None:
        self.deleted.append(node)


NOW = 10_000.0


def policy(name: str = "p", generation: int = 1, rv: int = 1, **status: Any) -> dict[str, Any]:
    return {
        "kind": "TracingPolicy",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "generation": generation,
            "resourceVersion": str(rv),
        },
        "spec": {"podSelector": {}, "tracepoints": []},
        "status": status,
    }


def report(node: str, rv: int, heartbeat: float = NOW, state: str = "Ready") -> dict[str, Any]:
    return {
        "metadata": {"name": node, "resourceVersion": str(rv)},
        "nodeName": node,
        "writeTime": to_rfc3339(heartbeat),
        "policies": [{"uid": "uid-p", "state": state, "generation": 1, "pods": 2}],
    }


def make(clock: list[float] | None = None) -> tuple[Controller, FakeApi]:
    api = FakeApi()
    now = clock or [NOW]
    config = ControllerConfig(interval=0, stale_after=30)
    return Controller(api=api, config=config, clock=lambda: now[0]), api


def step(controller: Controller) -> None:
    asyncio.run(controller.step())


def test_writes_a_status_once_and_not_again_when_nothing_changed() -> None:
    controller, api = make()
    controller.report_event(None, report("a", 5))
    controller.policy_event(None, policy())
    step(controller)
    [(name, status)] = api.patches
    assert name == "p"
    assert (status["readyNodes"], status["totalNodes"], status["pods"]) == (1, 1, 2)
    # The watch brings the written status back: recomputed, equal, not written again.
    controller.policy_event("MODIFIED", policy(rv=2, **status))
    step(controller)
    assert len(api.patches) == 1
    # A heartbeat alone changes no policy.
    controller.report_event("MODIFIED", report("a", 6, heartbeat=NOW + 1))
    step(controller)
    assert len(api.patches) == 1
    assert ("p", False, "AllNodesReady") in api.events


def test_fields_dropped_from_status_are_removed() -> None:
    controller, api = make()
    controller.policy_event(None, policy(legacy="x"))
    step(controller)
    [(_, patch)] = api.patches
    assert patch["legacy"] is None


def test_older_events_lose_and_state_changes_are_written() -> None:
    controller, api = make()
    controller.report_event(None, report("a", 5))
    controller.policy_event(None, policy())
    step(controller)
    controller.report_event("MODIFIED", report("a", 4, state="Error"))  # older: ignored
    step(controller)
    assert len(api.patches) == 1
    controller.report_event("MODIFIED", report("a", 7, state="Error"))
    step(controller)
    assert api.patches[-1][1]["reason"] == "NodeErrors"
    assert ("p", True, "NodeErrors") in api.events


def test_a_silent_node_turns_stale_on_the_timer() -> None:
    clock = [NOW]
    controller, api = make(clock)
    controller.report_event(None, report("a", 5))
    controller.policy_event(None, policy())
    step(controller)
    clock[0] = NOW + 31  # no event at all: only time passed
    step(controller)
    assert api.patches[-1][1]["reason"] == "NodesStale"


def test_a_renewed_node_lease_keeps_a_quiet_node_alive() -> None:
    clock = [NOW]
    controller, api = make(clock)
    controller.report_event(None, report("a", 5))  # written once, never again: no change
    controller.policy_event(None, policy())
    api.leases["a"] = NOW + 100
    clock[0] = NOW + 110
    step(controller)
    assert api.patches[-1][1]["reason"] == "AllNodesReady"
    clock[0] = NOW + 200  # the lease is 100 s old, over stale_after (30 s)
    step(controller)
    assert api.patches[-1][1]["reason"] == "NodesStale"


def test_deleted_node_report_is_deleted_and_standby_writes_nothing() -> None:
    controller, api = make()
    controller.leading = lambda: False
    controller.report_event(None, report("a", 5))
    controller.policy_event(None, policy())
    controller.node_event("DELETED", {"metadata": {"name": "a"}})
    step(controller)
    assert api.patches == [] and api.deleted == []
    controller.leading = lambda: True
    step(controller)
    assert api.deleted == ["a"]
    assert len(api.patches) == 1


def test_first_status_waits_for_every_policy_page_and_the_reports_first_list() -> None:
    controller, api = make()
    api.pages["TracingPolicy"] = [[policy("p")], [policy("q")]]

    async def start() -> None:
        listing = asyncio.create_task(controller._initial_list())
        await asyncio.sleep(0.05)
        assert not listing.done()  # the reports are not in yet (tpfilter.reportsource)
        controller.report_event(None, report("a", 5))
        controller.report_event(None, report("b", 6))
        controller.reports_synced.set()
        await listing
        await controller.step()

    asyncio.run(start())
    statuses = dict(api.patches)
    assert sorted(statuses) == ["p", "q"]
    assert (statuses["p"]["readyNodes"], statuses["p"]["totalNodes"]) == (2, 2)
    assert (statuses["q"]["readyNodes"], statuses["q"]["totalNodes"]) == (0, 2)  # NotReported


def test_lease_rule() -> None:
    assert decide(None, "me", 100, 15) == LeaseRecord("me", 100, 15, 0, 100)
    held = LeaseRecord("other", 100, 15, 3, 50)
    assert decide(held, "me", 110, 15) is None  # still valid
    taken = decide(held, "me", 116, 15)
    assert taken == LeaseRecord("me", 116, 15, 4, 116)
    renewed = decide(taken, "me", 120, 15)
    assert renewed == LeaseRecord("me", 120, 15, 4, 116)
    assert record_of({"spec": lease_spec(taken)}).holder == "me"
    assert abs(record_of({"spec": lease_spec(taken)}).renewed - 116) < 1e-3


def test_lease_times_always_have_their_fraction() -> None:
    from tpfilter.leader import micro_time

    assert micro_time(0.0) == "1970-01-01T00:00:00.000001Z"
    assert micro_time(1.5) == "1970-01-01T00:00:01.500000Z"


def test_sweep_deletes_reports_of_nodes_that_are_gone() -> None:
    controller, api = make()
    controller.report_event(None, report("gone", 5))

    async def sweep_once() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(controller._sweep_loop(), 0.2)

    asyncio.run(sweep_once())
    assert api.deleted == ["gone"]  # FakeApi knows no Node at all
