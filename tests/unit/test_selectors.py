"""Kubernetes label selector semantics, as users write them in YAML (camelCase)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from tpfilter.models import LabelSelector


def sel(**body: Any) -> LabelSelector:
    return LabelSelector.model_validate(body)


def expr(key: str, operator: str, values: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"key": key, "operator": operator}
    if values is not None:
        out["values"] = values
    return out


# --- matching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"app": "web"}, True),
        ({"app": "db"}, True),
        ({"app": "cache"}, False),
        ({"app": ""}, False),
        ({}, False),  # In needs the key present
        ({"other": "web"}, False),
        ({"app": "WEB"}, False),  # values are case-sensitive
    ],
)
def test_in(labels: dict[str, str], expected: bool) -> None:
    assert sel(matchExpressions=[expr("app", "In", ["web", "db"])]).matches(labels) is expected


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"app": "web"}, False),
        ({"app": "db"}, False),
        ({"app": "cache"}, True),
        ({"app": ""}, True),
        ({}, True),  # NotIn matches when the key is absent
        ({"other": "web"}, True),
    ],
)
def test_not_in(labels: dict[str, str], expected: bool) -> None:
    assert sel(matchExpressions=[expr("app", "NotIn", ["web", "db"])]).matches(labels) is expected


@pytest.mark.parametrize(
    ("labels", "exists"),
    [
        ({"app": "web"}, True),
        ({"app": ""}, True),  # present with an empty value is still present
        ({}, False),
        ({"application": "x"}, False),  # no prefix matching
        ({"ap": "x"}, False),
    ],
)
def test_exists_and_does_not_exist(labels: dict[str, str], exists: bool) -> None:
    assert sel(matchExpressions=[expr("app", "Exists")]).matches(labels) is exists
    assert sel(matchExpressions=[expr("app", "DoesNotExist")]).matches(labels) is (not exists)


def test_exists_with_explicit_empty_values_list_is_fine() -> None:
    assert sel(matchExpressions=[expr("app", "Exists", [])]).matches({"app": ""})


def test_match_labels_exact() -> None:
    s = sel(matchLabels={"app": "web", "tier": "front"})
    assert s.matches({"app": "web", "tier": "front"})
    assert s.matches({"app": "web", "tier": "front", "extra": "x"})
    assert not s.matches({"app": "web"})
    assert not s.matches({"app": "web", "tier": "back"})
    assert not s.matches({})


def test_match_labels_empty_value_requires_present_key() -> None:
    s = sel(matchLabels={"app": ""})
    assert s.matches({"app": ""})
    assert not s.matches({})
    assert not s.matches({"app": "x"})


def test_match_labels_and_expressions_are_anded() -> None:
    s = sel(
        matchLabels={"app": "web"},
        matchExpressions=[expr("env", "In", ["prod"]), expr("canary", "DoesNotExist")],
    )
    assert s.matches({"app": "web", "env": "prod"})
    assert not s.matches({"app": "db", "env": "prod"})  # labels fail
    assert not s.matches({"app": "web", "env": "dev"})  # first expression fails
    assert not s.matches({"app": "web", "env": "prod", "canary": "1"})  # second fails


def test_several_requirements_on_same_key_all_hold() -> None:
    # "duplicate keys": a In [x, y] AND a NotIn [y] == a is x
    s = sel(matchExpressions=[expr("a", "In", ["x", "y"]), expr("a", "NotIn", ["y"])])
    assert s.matches({"a": "x"})
    assert not s.matches({"a": "y"})
    assert not s.matches({})
    # two In on the same key intersect
    s2 = sel(matchExpressions=[expr("a", "In", ["x", "y"]), expr("a", "In", ["y", "z"])])
    assert s2.matches({"a": "y"})
    assert not s2.matches({"a": "x"})
    assert not s2.matches({"a": "z"})


@pytest.mark.parametrize(
    "body",
    [
        # matchLabels a=x with a In [y]
        {"matchLabels": {"a": "x"}, "matchExpressions": [expr("a", "In", ["y"])]},
        # Exists and DoesNotExist on the same key
        {"matchExpressions": [expr("a", "Exists"), expr("a", "DoesNotExist")]},
        # In and NotIn with the same values
        {"matchExpressions": [expr("a", "In", ["x"]), expr("a", "NotIn", ["x"])]},
        # matchLabels a=x and a DoesNotExist
        {"matchLabels": {"a": "x"}, "matchExpressions": [expr("a", "DoesNotExist")]},
    ],
)
def test_contradictory_selector_matches_nothing(body: dict[str, Any]) -> None:
    s = sel(**body)
    for labels in ({}, {"a": "x"}, {"a": "y"}, {"a": ""}, {"b": "x"}):
        assert not s.matches(labels), labels


def test_empty_selector_matches_everything() -> None:
    for s in (sel(), sel(matchLabels={}, matchExpressions=[])):
        assert s.matches({})
        assert s.matches({"app": "web", "x": ""})


def test_null_fields_mean_empty() -> None:
    s = sel(matchLabels=None, matchExpressions=None)
    assert s.matches({}) and s.matches({"a": "b"})
    s2 = sel(matchExpressions=[{"key": "a", "operator": "Exists", "values": None}])
    assert s2.matches({"a": "1"}) and not s2.matches({})


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["In", "NotIn"])
@pytest.mark.parametrize("values", [[], None])
def test_in_notin_require_values(operator: str, values: list[str] | None) -> None:
    e: dict[str, Any] = {"key": "a", "operator": operator}
    if values is not None:
        e["values"] = values
    with pytest.raises(ValidationError, match="non-empty"):
        sel(matchExpressions=[e])


@pytest.mark.parametrize("operator", ["Exists", "DoesNotExist"])
def test_exists_rejects_values(operator: str) -> None:
    with pytest.raises(ValidationError, match="must be empty"):
        sel(matchExpressions=[expr("a", operator, ["x"])])


@pytest.mark.parametrize("operator", ["in", "Equals", "", "notin", "exists"])
def test_unknown_operator_rejected(operator: str) -> None:
    with pytest.raises(ValidationError):
        sel(matchExpressions=[expr("a", operator, ["x"])])


def test_unknown_selector_field_rejected() -> None:
    with pytest.raises(ValidationError):
        sel(matchlabels={"a": "b"})  # wrong case: a typo must not silently match all
    with pytest.raises(ValidationError):
        sel(matchExpressions=[{"key": "a", "operator": "Exists", "value": ["x"]}])


BAD_KEYS = [
    "",
    "/a",  # empty prefix
    "a/",  # empty name
    "a/b/c",  # two slashes
    "-a",
    "a-",
    "_a",
    "a_",
    ".a",
    "a.",
    "a b",
    "a\tb",
    "a@b",
    "a:b",
    "ä",
    "x" * 64,  # name over 63
    "example.com/" + "x" * 64,
    "Example.com/a",  # prefix must be lower-case DNS
    "-example.com/a",
    "example..com/a",
    "example_com/a",
    "example.com-/a",
    ("a" * 63 + ".") * 4 + "a/b",  # prefix over 253
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_invalid_keys_rejected(key: str) -> None:
    with pytest.raises(ValidationError):
        sel(matchLabels={key: "v"})
    with pytest.raises(ValidationError):
        sel(matchExpressions=[expr(key, "Exists")])


BAD_VALUES = [
    "x" * 64,
    "-a",
    "a-",
    "_a",
    ".a",
    "a.",
    "a b",
    " a",
    "a ",
    "a/b",
    "a:b",
    "a@b",
    "ä",
]


@pytest.mark.parametrize("value", BAD_VALUES)
def test_invalid_values_rejected(value: str) -> None:
    with pytest.raises(ValidationError):
        sel(matchLabels={"a": value})
    with pytest.raises(ValidationError):
        sel(matchExpressions=[expr("a", "In", ["ok", value])])
    with pytest.raises(ValidationError):
        sel(matchExpressions=[expr("a", "NotIn", [value])])


@pytest.mark.parametrize(
    ("key", "value"),
    [("app\n", "web"), ("app", "web\n"), ("example.com\n/app", "web"), ("\napp", "web")],
)
def test_newlines_rejected(key: str, value: str) -> None:
    # Python's "$" also matches before a trailing newline; the API server's regexps do not
    with pytest.raises(ValidationError):
        sel(matchLabels={key: value})
    with pytest.raises(ValidationError):
        sel(matchExpressions=[expr(key, "In", [value])])


GOOD_KEYS = [
    "a",
    "A",
    "a1",
    "1",
    "a.b-c_d",
    "x" * 63,
    "example.com/a",
    "a/b",
    "k8s.io/app-name",
    "app.kubernetes.io/name",
    "a-b.c/D_e",
    ("a" * 63 + ".") * 3 + "a" * 61 + "/n",  # prefix of exactly 253
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_valid_keys_accepted(key: str) -> None:
    assert sel(matchLabels={key: "v"}).matches({key: "v"})
    assert sel(matchExpressions=[expr(key, "Exists")]).matches({key: ""})


GOOD_VALUES = ["", "a", "A", "1", "a.b-c_D", "x" * 63, "v1.2.3", "0"]


@pytest.mark.parametrize("value", GOOD_VALUES)
def test_valid_values_accepted(value: str) -> None:
    assert sel(matchLabels={"a": value}).matches({"a": value})
    assert sel(matchExpressions=[expr("a", "In", [value])]).matches({"a": value})
    assert not sel(matchExpressions=[expr("a", "NotIn", [value])]).matches({"a": value})


def test_253_char_prefix_is_the_edge() -> None:
    prefix = ("a" * 63 + ".") * 3 + "a" * 61
    assert len(prefix) == 253
    sel(matchLabels={prefix + "/n": "v"})
    with pytest.raises(ValidationError):
        sel(matchLabels={prefix + "a/n": "v"})


def test_values_must_be_a_list_not_a_string() -> None:
    with pytest.raises(ValidationError):
        sel(matchExpressions=[{"key": "a", "operator": "In", "values": "web"}])


def test_non_string_label_value_rejected() -> None:
    # YAML `version: 1.0` is a float; the API server would reject it, so must we.
    with pytest.raises(ValidationError):
        sel(matchLabels={"version": 1.0})


# --- properties -------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "x.io/a"])
VALUES = st.sampled_from(["", "1", "2", "v"])
LABELS = st.dictionaries(KEYS, VALUES, max_size=4)


@given(k=KEYS, v=VALUES, labels=LABELS)
def test_match_labels_is_in_with_one_value(k: str, v: str, labels: dict[str, str]) -> None:
    by_labels = sel(matchLabels={k: v})
    by_expr = sel(matchExpressions=[expr(k, "In", [v])])
    assert by_labels.matches(labels) == by_expr.matches(labels)
    # and both agree with the plain definition
    assert by_labels.matches(labels) == (labels.get(k) == v)


@given(k=KEYS, vs=st.lists(VALUES, min_size=1, max_size=3), labels=LABELS)
def test_not_in_is_negated_in_when_present(k: str, vs: list[str], labels: dict[str, str]) -> None:
    not_in = sel(matchExpressions=[expr(k, "NotIn", vs)]).matches(labels)
    is_in = sel(matchExpressions=[expr(k, "In", vs)]).matches(labels)
    if k in labels:
        assert not_in == (not is_in)
        assert is_in == (labels[k] in vs)
    else:
        assert not_in is True
        assert is_in is False


@given(
    exprs=st.lists(
        st.tuples(KEYS, st.sampled_from(["In", "NotIn"]), st.lists(VALUES, min_size=1)),
        max_size=4,
    ),
    labels=LABELS,
)
def test_expressions_are_a_conjunction(
    exprs: list[tuple[str, str, list[str]]], labels: dict[str, str]
) -> None:
    whole = sel(matchExpressions=[expr(k, op, vs) for k, op, vs in exprs]).matches(labels)
    parts = [sel(matchExpressions=[expr(k, op, vs)]).matches(labels) for k, op, vs in exprs]
    assert whole == all(parts)
