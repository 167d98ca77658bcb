"""The e2e suite's pure readers (tpfilter_dev.e2ecluster): the kind backend reads the maps
through them, and on the real node the suite checks them against the host's own read, so
their logic is pinned here on the shapes the tools print."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tpfilter.interfaces import HOST_MARKER
from tpfilter_dev.e2ecluster import bpftool_keys, maps_from_status
from tpfilter_dev.kubectl import run_kubectl
from tpfilter_dev.realnode import RealNodeError


def row(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "policy_id": 1,
        "kind": "TracingPolicy",
        "namespace": None,
        "name": "p",
        "cgroup_ids": [],
        "host": False,
        "map_id": 10,
    }
    return base | fields


def test_maps_from_status_names_slots_as_the_host_read_does() -> None:
    status = {
        "policies": [
            row(policy_id=1, name="policy-1", cgroup_ids=[5, 7]),
            row(policy_id=2, kind="TracingPolicyNamespaced", namespace="ns", name="q"),
            row(policy_id=3, name="with-host", cgroup_ids=[9], host=True),
            # a reserved slot (no record: the CLI gives it a descriptive name)
            row(
                policy_id=4294967294,
                kind=None,
                name="(containers of hostPID pods)",
                cgroup_ids=[11],
            ),
            row(policy_id=5, name="no-map", map_id=None),  # nothing pinned to read
        ]
    }
    assert maps_from_status(status) == {
        "TracingPolicy/policy-1": frozenset({5, 7}),
        "TracingPolicyNamespaced/ns/q": frozenset(),
        "TracingPolicy/with-host": frozenset({9, HOST_MARKER}),
        "?4294967294": frozenset({11}),
    }


def test_bpftool_keys_are_host_order_u64() -> None:
    dump = json.dumps(
        [
            {
                "key": ["0x01", "0x02", "0x00", "0x00", "0x00", "0x00", "0x00", "0x00"],
                "value": ["0x01"],
            },
            {"key": ["0xff"] * 8, "value": ["0x01"]},
        ]
    )
    assert bpftool_keys(dump) == {0x0201, HOST_MARKER}
    assert bpftool_keys("[]") == frozenset()


def test_run_kubectl_passes_the_kubeconfig_and_raises_the_callers_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in kubectl on PATH: prints its arguments and stdin, fails on "fail".
    tool = tmp_path / "kubectl"
    tool.write_text('#!/bin/sh\necho "$@"; cat\n[ "$2" = fail ] && echo nope >&2 && exit 1\n:\n')
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert run_kubectl("/k", "get", "pods", stdin="in") == "--kubeconfig=/k get pods\nin"
    with pytest.raises(AssertionError, match="kubectl fail: nope"):
        run_kubectl("/k", "fail")
    with pytest.raises(RealNodeError, match="kubectl fail: nope"):
        run_kubectl("/k", "fail", error=RealNodeError)
    assert run_kubectl("/k", "fail", check=False) == "--kubeconfig=/k fail\n"
