"""parse_policy: TracingPolicy / TracingPolicyNamespaced as the API server sends them."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tpfilter.models import (
    ContainerSelector,
    PolicyError,
    PolicyKind,
    parse_policy,
)

SEED = Path(__file__).resolve().parents[2] / "examples" / "seed-policy.yaml"


def seed_body() -> dict[str, Any]:
    body = yaml.safe_load(SEED.read_text())
    assert isinstance(body, dict)
    return body


def body(
    spec: Any,
    *,
    kind: str = "TracingPolicy",
    name: str = "p",
    namespace: str | None = None,
    uid: str = "uid-1",
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "uid": uid, "resourceVersion": "7"}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": "cilium.io/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}


# --- the seed policy --------------------------------------------------------------------


def test_seed_policy_parses_unchanged() -> None:
    raw = seed_body()
    pristine = copy.deepcopy(raw)
    raw["metadata"]["uid"] = "u-seed"
    policy = parse_policy(raw)
    assert policy.key.kind is PolicyKind.CLUSTER
    assert policy.key.name == "policy-1"
    assert policy.key.namespace is None
    assert policy.uid == "u-seed"
    assert policy.filtered
    sel = policy.spec.pod_selector
    assert sel is not None
    assert sel.matches({"app": "ubuntu"})
    assert sel.matches({"app": "ubuntu", "x": "y"})
    assert not sel.matches({"app": "debian"})
    assert not sel.matches({})
    assert policy.spec.container_selector is None
    # parsing did not touch the input
    raw["metadata"].pop("uid")
    assert raw == pristine


def test_seed_policy_keeps_other_spec_fields_verbatim() -> None:
    raw = seed_body()
    policy = parse_policy(raw)
    extra = policy.spec.model_extra
    assert extra is not None
    expected = {k: v for k, v in raw["spec"].items() if k != "podSelector"}
    assert set(extra) == {"kprobes", "options"}
    assert extra == expected
    # nested camelCase keys untouched (argError, matchArgs, matchActions), values exact
    kprobe = extra["kprobes"][0]
    assert kprobe["call"] == "security_bprm_creds_for_exec"
    assert kprobe["syscall"] is False
    assert kprobe["selectors"][0]["matchActions"] == [{"action": "Override", "argError": -1}]
    assert kprobe["selectors"][0]["matchArgs"][0]["values"] == [
        "/usr/bin/sleep",
        "/usr/bin/cat",
        "/usr/bin/my-server-1",
    ]
    assert extra["options"] == [{"name": "disable-kprobe-multi", "value": "1"}]


def test_dump_by_alias_round_trips_extra_fields() -> None:
    raw = seed_body()
    dumped = parse_policy(raw).spec.model_dump(by_alias=True)
    assert dumped["kprobes"] == raw["spec"]["kprobes"]
    assert dumped["options"] == raw["spec"]["options"]
    assert dumped["podSelector"]["matchLabels"] == {"app": "ubuntu"}


@pytest.mark.parametrize(
    "field",
    ["tracepoints", "lsmhooks", "uprobes", "usdts", "lists", "enforcers", "loader"],
)
def test_any_other_spec_field_is_kept(field: str) -> None:
    value = [{"someCamelKey": {"nested": [1, "two", None]}}]
    policy = parse_policy(body({field: value, "podSelector": {}}))
    assert policy.spec.model_extra == {field: value}


# --- kinds and metadata -----------------------------------------------------------------


def test_namespaced_policy_needs_namespace() -> None:
    with pytest.raises(PolicyError, match=r"metadata\.namespace"):
        parse_policy(body({}, kind="TracingPolicyNamespaced"))
    with pytest.raises(PolicyError, match=r"metadata\.namespace"):
        parse_policy(body({}, kind="TracingPolicyNamespaced", namespace=""))


def test_namespaced_policy_key() -> None:
    p = parse_policy(body({}, kind="TracingPolicyNamespaced", namespace="ns1", name="q"))
    assert p.key.kind is PolicyKind.NAMESPACED
    assert p.key.namespace == "ns1"
    assert p.key.name == "q"
    assert "ns1" in str(p.key) and "q" in str(p.key)
    assert p.resource_version == "7"


def test_cluster_policy_ignores_stray_namespace() -> None:
    p = parse_policy(body({}, namespace="ns1"))
    assert p.key.namespace is None


@pytest.mark.parametrize("kind", [None, "Pod", "tracingpolicy", ""])
def test_unknown_kind_rejected(kind: str | None) -> None:
    b = body({})
    b["kind"] = kind
    with pytest.raises(PolicyError, match="kind"):
        parse_policy(b)


def test_missing_spec_is_empty_spec() -> None:
    b = body({})
    del b["spec"]
    p = parse_policy(b)
    assert not p.filtered
    b["spec"] = None
    assert not parse_policy(b).filtered


# --- error paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}},
            "spec.podSelector.matchExpressions.0",
        ),
        (
            {
                "podSelector": {
                    "matchExpressions": [
                        {"key": "a", "operator": "Exists"},
                        {"key": "b", "operator": "In", "values": ["bad value"]},
                    ]
                }
            },
            "spec.podSelector.matchExpressions.1.values",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "-a", "operator": "Exists"}]}},
            "spec.podSelector.matchExpressions.0.key",
        ),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals"}]}},
            "spec.podSelector.matchExpressions.0.operator",
        ),
        ({"podSelector": {"matchLabels": {"a": "b c"}}}, "spec.podSelector.matchLabels"),
        (
            {"containerSelector": {"matchExpressions": [{"key": "name", "operator": "In"}]}},
            "spec.containerSelector.matchExpressions.0",
        ),
        (
            {"containerSelector": {"matchLabels": {"image": "x"}}},
            "spec.containerSelector.matchLabels.image",
        ),
        (
            {"containerSelector": {"matchExpressions": [{"key": "image", "operator": "Exists"}]}},
            "spec.containerSelector.matchExpressions.0.key",
        ),
        ({"podSelector": {"matchLabel": {"a": "b"}}}, "spec.podSelector.matchLabel"),
    ],
)
def test_errors_name_the_field_path(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(body(spec))
    message = str(info.value)
    # pydantic names a bad dict key as "<key>.[key]"
    assert re.match(rf"{re.escape(path)}(\.\[key\])?: ", message), message


def test_several_errors_are_all_reported() -> None:
    spec = {
        "podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
        "containerSelector": {"matchLabels": {"pod": "x"}},
    }
    with pytest.raises(PolicyError) as info:
        parse_policy(body(spec))
    assert "spec.podSelector.matchExpressions.0" in str(info.value)
    assert "spec.containerSelector" in str(info.value)


def test_policy_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_policy(body({"podSelector": {"matchLabels": {"-": "x"}}}))


@pytest.mark.parametrize("name", [None, 5, "absent"])
def test_bad_metadata_name_is_reported_as_metadata(name: object) -> None:
    b = body({})
    if name == "absent":
        del b["metadata"]["name"]
    else:
        b["metadata"]["name"] = name
    with pytest.raises(PolicyError) as info:
        parse_policy(b)
    assert str(info.value).startswith("metadata.name: "), str(info.value)


@pytest.mark.parametrize("field", ["uid", "resourceVersion"])
def test_null_uid_is_not_the_string_none(field: str) -> None:
    b = body({"podSelector": {}})
    b["metadata"][field] = None
    try:
        p = parse_policy(b)
    except PolicyError as exc:
        assert f"metadata.{field}" in str(exc)
    else:
        assert (p.uid, p.resource_version)[field == "resourceVersion"] == ""


# --- containerSelector ------------------------------------------------------------------


def test_container_selector_keys_are_name_and_repo() -> None:
    p = parse_policy(
        body(
            {
                "containerSelector": {
                    "matchLabels": {"name": "main"},
                    "matchExpressions": [{"key": "repo", "operator": "NotIn", "values": ["x"]}],
                }
            }
        )
    )
    cs = p.spec.container_selector
    assert isinstance(cs, ContainerSelector)
    assert cs.matches({"name": "main", "repo": "nginx"})
    assert not cs.matches({"name": "main", "repo": "x"})
    assert not cs.matches({"name": "side", "repo": "nginx"})


@pytest.mark.parametrize("key", ["image", "Name", "app", "example.com/name", "repository"])
def test_container_selector_other_keys_rejected(key: str) -> None:
    with pytest.raises(PolicyError, match=r"spec\.containerSelector"):
        parse_policy(body({"containerSelector": {"matchLabels": {key: "x"}}}))
    with pytest.raises(PolicyError, match=r"spec\.containerSelector"):
        parse_policy(
            body({"containerSelector": {"matchExpressions": [{"key": key, "operator": "Exists"}]}})
        )


@pytest.mark.parametrize(
    "repo",
    [
        "nginx",
        "docker.io/library/nginx",
        "registry.example.com:5000/team/app",
        "localhost:5000/app",
        "quay.io/cilium/tetragon",
        "ghcr.io/org/img_name",
    ],
)
def test_container_selector_repo_values_are_repositories(repo: str) -> None:
    for spec in (
        {"containerSelector": {"matchLabels": {"repo": repo}}},
        {
            "containerSelector": {
                "matchExpressions": [{"key": "repo", "operator": "In", "values": ["other", repo]}]
            }
        },
    ):
        cs = parse_policy(body(spec)).spec.container_selector
        assert cs is not None
        assert cs.matches({"name": "main", "repo": repo})
        assert not cs.matches({"name": "main", "repo": repo + "x"})


@pytest.mark.parametrize(
    "value", ["", " nginx", "nginx ", "a b", "nginx\n", "/nginx", "nginx@sha256", "x" * 256]
)
def test_container_selector_bad_values_rejected(value: str) -> None:
    with pytest.raises(PolicyError, match=r"spec\.containerSelector\.matchLabels"):
        parse_policy(body({"containerSelector": {"matchLabels": {"repo": value}}}))
    with pytest.raises(PolicyError, match=r"spec\.containerSelector\.matchExpressions\.0\.values"):
        parse_policy(
            body(
                {
                    "containerSelector": {
                        "matchExpressions": [
                            {"key": "name", "operator": "NotIn", "values": [value]}
                        ]
                    }
                }
            )
        )


def test_container_selector_still_checks_operators() -> None:
    with pytest.raises(PolicyError, match=r"spec\.containerSelector\.matchExpressions\.0"):
        parse_policy(
            body(
                {
                    "containerSelector": {
                        "matchExpressions": [
                            {"key": "repo", "operator": "Exists", "values": ["nginx"]}
                        ]
                    }
                }
            )
        )


def test_pod_selector_values_remain_label_values() -> None:
    # the relaxed rule is for containerSelector only
    with pytest.raises(PolicyError, match=r"spec\.podSelector"):
        parse_policy(body({"podSelector": {"matchLabels": {"app": "docker.io/library/nginx"}}}))


def test_pod_selector_keys_are_not_limited() -> None:
    p = parse_policy(body({"podSelector": {"matchLabels": {"image": "x"}}}))
    assert p.spec.pod_selector is not None
    assert p.spec.pod_selector.matches({"image": "x"})


# --- filtered ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "filtered"),
    [
        ({}, False),
        ({"kprobes": []}, False),
        ({"podSelector": None}, False),  # null is absence, as in the API
        ({"containerSelector": None}, False),
        ({"podSelector": None, "containerSelector": None}, False),
        ({"podSelector": {}}, True),  # an empty selector is a filter (all pods, no host)
        ({"containerSelector": {}}, True),
        ({"podSelector": {"matchLabels": None}}, True),
        ({"podSelector": {"matchLabels": {"a": "b"}}}, True),
        ({"containerSelector": {"matchLabels": {"name": "c"}}}, True),
    ],
)
def test_cluster_policy_filtered(spec: dict[str, Any], filtered: bool) -> None:
    assert parse_policy(body(spec)).filtered is filtered


@pytest.mark.parametrize(
    "spec", [{}, {"podSelector": None}, {"podSelector": {}}, {"containerSelector": {}}]
)
def test_namespaced_policy_always_filtered(spec: dict[str, Any]) -> None:
    p = parse_policy(body(spec, kind="TracingPolicyNamespaced", namespace="ns"))
    assert p.filtered


# --- nulls as YAML writes them ----------------------------------------------------------


def test_yaml_nulls_accepted() -> None:
    doc = """
apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: nulls
spec:
  podSelector:
    matchLabels:
    matchExpressions:
    - key: app
      operator: Exists
      values:
  containerSelector:
    matchLabels: null
    matchExpressions: ~
  kprobes:
"""
    p = parse_policy(yaml.safe_load(doc))
    assert p.filtered
    ps = p.spec.pod_selector
    cs = p.spec.container_selector
    assert ps is not None and cs is not None
    assert ps.match_labels == {}
    assert ps.matches({"app": ""}) and not ps.matches({})
    assert cs.matches({"name": "anything", "repo": "r"})
    assert p.spec.model_extra == {"kprobes": None}


def test_policy_is_immutable() -> None:
    p = parse_policy(seed_body())
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises ValidationError
        p.uid = "other"  # type: ignore[misc]
