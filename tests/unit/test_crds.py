"""The TracingPolicy CRDs in crds/: up to date, structural, and accepting what they should.

There is no OpenAPI or CEL library in this project, so policies are checked here by
:class:`LocalValidator`, a small validator that implements exactly the schema keywords
the generator uses (it refuses any other, so a new keyword cannot be silently ignored)
and that follows the API server's order for custom resources:

1. strict decoding: with ``fieldValidation=Strict`` (kubectl's default) an unknown field
   fails the request before anything else;
2. null fields are dropped and defaults applied;
3. OpenAPI validation (types, required, enum, pattern, lengths, bounds);
4. ``x-kubernetes-validations``, unless step 3 produced an error of a kind that blocks
   them (unsupported value, required, too long, too many, wrong type), as
   ``hasBlockingErr`` in apiextensions-apiserver does.

Error messages are formatted like the API server's (``<path>: Unsupported value: ...``,
``... in body should match '...'``), so the ``# expect:`` substrings of
``tests/data/invalid/*.yaml`` hold for both this validator and a real kube-apiserver.

What it does not do: evaluate CEL. Each rule is evaluated through the Python twin the
generator keeps next to its expression (``gen_crds.CEL_TWINS``); that the twin and the CEL
agree, and that the CEL fits the API server's cost budget, is only shown by loading these
CRDs and examples into a real kube-apiserver. String and integer ``format`` is not checked.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tpfilter.selectors import label_key_error, label_value_error

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
DATA = REPO / "tests" / "data"
SHARED_SEED = REPO.parent / "shared" / "examples" / "seed-policy.yaml"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
VALID = sorted((DATA / "valid").glob("*.yaml"))
INVALID = sorted((DATA / "invalid").glob("*.yaml"))


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_crds", CRD_DIR / "gen_crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gen = _load_generator()


@functools.cache
def _crd(kind_name: str) -> dict[str, Any]:
    """The committed CRD of a kind (parsed once: it is large; callers must not modify it)."""
    for kind in gen.KINDS:
        if kind.kind == kind_name:
            with (CRD_DIR / kind.filename).open(encoding="utf-8") as f:
                doc: dict[str, Any] = yaml.load(f, Loader=_LOADER)
            return doc
    raise KeyError(kind_name)


def _root_schema(crd: Mapping[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


# ------------------------------------------------------------------------------------
# The local validator.
# ------------------------------------------------------------------------------------

#: Every schema keyword the validator implements (description and format: accepted, not
#: checked). The structural test below requires the CRDs to use no other.
KEYWORDS = frozenset(
    {
        "type",
        "description",
        "format",
        "properties",
        "additionalProperties",
        "items",
        "required",
        "enum",
        "default",
        "pattern",
        "maxLength",
        "maxItems",
        "maxProperties",
        "minimum",
        "x-kubernetes-validations",
        "x-kubernetes-preserve-unknown-fields",
        "x-kubernetes-list-type",
        "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type",
    }
)
BLOCKING = ("Unsupported value", "Required value", "Too long", "Too many", "must be of type")
_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "boolean": (bool,),
}


def _is_type(value: Any, kind: str) -> bool:
    """JSON type check (a bool is not an integer, though Python says it is)."""
    return isinstance(value, _TYPES[kind]) and not (kind == "integer" and isinstance(value, bool))


def _quote(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)


def _go_regex(pattern: str) -> re.Pattern[str]:
    """Go's ``$`` (no multiline) is the end of the text; Python's also matches before a
    trailing newline, hence ``\\Z``."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


class LocalValidator:
    """Validates an object against a CRD's schema the way the API server does (see module
    docstring for what is and is not covered)."""

    def __init__(self, crd: Mapping[str, Any]) -> None:
        self.schema = _root_schema(crd)

    def validate(self, obj: Mapping[str, Any]) -> list[str]:
        body = _drop_nulls(copy.deepcopy(dict(obj)))
        body.pop("status", None)  # the status subresource: create ignores status
        unknown = list(self._unknown(self.schema, body, "", root=True))
        if unknown:
            return [f'strict decoding error: unknown field "{path}"' for path in unknown]
        self._default(self.schema, body)
        errors = list(self._openapi(self.schema, body, "", root=True))
        if any(b in e for e in errors for b in BLOCKING):
            return [
                *errors,
                "some validation rules were not checked because the object was invalid; "
                "correct the existing errors to complete validation",
            ]
        return errors + list(self._cel(self.schema, body, ""))

    # Step 1: unknown fields ----------------------------------------------------------

    def _unknown(
        self, schema: Mapping[str, Any], value: Any, path: str, *, root: bool = False
    ) -> Iterator[str]:
        if isinstance(value, dict) and schema.get("type") == "object":
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if root and key == "metadata":
                    continue  # ObjectMeta is decoded and validated by the server itself
                if props is not None and key in props:
                    yield from self._unknown(props[key], item, child)
                elif isinstance(extra, dict):
                    yield from self._unknown(extra, item, child)
                elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                    yield child
        elif isinstance(value, list) and schema.get("type") == "array":
            for i, item in enumerate(value):
                yield from self._unknown(schema["items"], item, f"{path}[{i}]")

    # Step 2: defaults ----------------------------------------------------------------

    def _default(self, schema: Mapping[str, Any], value: Any) -> None:
        if isinstance(value, dict):
            for key, prop in (schema.get("properties") or {}).items():
                if key not in value and "default" in prop:
                    value[key] = copy.deepcopy(prop["default"])
                if key in value:
                    self._default(prop, value[key])
            extra = schema.get("additionalProperties")
            if isinstance(extra, dict):
                for item in value.values():
                    self._default(extra, item)
        elif isinstance(value, list) and "items" in schema:
            for item in value:
                self._default(schema["items"], item)

    # Step 3: OpenAPI -----------------------------------------------------------------

    def _openapi(
        self, schema: Mapping[str, Any], value: Any, path: str, *, root: bool = False
    ) -> Iterator[str]:
        unsupported = set(schema) - KEYWORDS
        if unsupported:
            raise NotImplementedError(f"{path}: schema keywords {sorted(unsupported)}")
        kind = schema["type"]
        if not _is_type(value, kind):
            yield (
                f"{path}: Invalid value: {_quote(value)}: {path} in body must be of type {kind}: "
                f'"{type(value).__name__}"'
            )
            return
        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(_quote(v) for v in schema["enum"])
            yield f"{path}: Unsupported value: {_quote(value)}: supported values: {supported}"
        if kind == "string":
            if "maxLength" in schema and len(value.encode()) > schema["maxLength"]:
                yield f"{path}: Too long: may not be more than {schema['maxLength']} bytes"
            if "pattern" in schema and not _go_regex(schema["pattern"]).search(value):
                yield (
                    f"{path}: Invalid value: {_quote(value)}: {path} in body should match "
                    f"'{schema['pattern']}'"
                )
        if kind == "integer" and "minimum" in schema and value < schema["minimum"]:
            yield (
                f"{path}: Invalid value: {value}: {path} in body should be greater than or "
                f"equal to {schema['minimum']}"
            )
        if kind == "array":
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                yield (
                    f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items"
                )
            for i, item in enumerate(value):
                yield from self._openapi(schema["items"], item, f"{path}[{i}]")
        if kind == "object":
            if "maxProperties" in schema and len(value) > schema["maxProperties"]:
                yield (
                    f"{path}: Too many: {len(value)}: must have at most "
                    f"{schema['maxProperties']} items"
                )
            for key in schema.get("required", ()):
                if key not in value:
                    yield f"{path + '.' if path else ''}{key}: Required value"
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if root and key == "metadata":
                    continue
                if key in props:
                    yield from self._openapi(props[key], item, child)
                elif isinstance(extra, dict):
                    yield from self._openapi(extra, item, child)

    # Step 4: x-kubernetes-validations, through the generator's Python twins -----------

    def _cel(self, schema: Mapping[str, Any], value: Any, path: str) -> Iterator[str]:
        for rule in schema.get("x-kubernetes-validations", ()):
            twin = gen.CEL_TWINS.get(rule["rule"])
            if twin is None:
                raise NotImplementedError(f"{path}: no Python twin for CEL {rule['rule']!r}")
            if not twin(value):
                where = path + rule.get("fieldPath", "")
                reason = rule.get("reason", "FieldValueInvalid")
                detail = {
                    "FieldValueInvalid": 'Invalid value: "object"',
                    "FieldValueForbidden": "Forbidden",
                    "FieldValueRequired": "Required value",
                    "FieldValueDuplicate": "Duplicate value",
                }[reason]
                yield f"{where}: {detail}: {rule['message']}"
        if isinstance(value, dict):
            props = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            for key, item in value.items():
                child = f"{path}.{key}" if path else key
                if key in props:
                    yield from self._cel(props[key], item, child)
                elif isinstance(extra, dict):
                    yield from self._cel(extra, item, child)
        elif isinstance(value, list) and "items" in schema:
            for i, item in enumerate(value):
                yield from self._cel(schema["items"], item, f"{path}[{i}]")


def _drop_nulls(value: Any) -> Any:
    """The API server drops null fields whose schema is not nullable (none here is)."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def validate(obj: Mapping[str, Any]) -> list[str]:
    """Errors for an object of either kind; a wrong apiVersion or kind is an error too."""
    if obj.get("apiVersion") != f"{gen.GROUP}/{gen.VERSION}":
        return [f"apiVersion: {obj.get('apiVersion')!r} is not {gen.GROUP}/{gen.VERSION}"]
    kinds = {k.kind: k for k in gen.KINDS}
    kind = kinds.get(obj.get("kind", ""))
    if kind is None:
        return [f"kind: {obj.get('kind')!r} is not one of {sorted(kinds)}"]
    metadata = obj.get("metadata") or {}
    if kind.scope == "Namespaced" and not metadata.get("namespace"):
        return ["metadata.namespace: the examples name their namespace"]
    return LocalValidator(_crd(kind.kind)).validate(obj)


def _documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def _expectations(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.split(":", 1)[1].strip() for line in lines if line.startswith("# expect:")]


# ------------------------------------------------------------------------------------
# The generated files.
# ------------------------------------------------------------------------------------


def test_generated_files_are_up_to_date(tmp_path: Path) -> None:
    written = gen.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(
        [*(k.filename for k in gen.KINDS), gen.REPORT_FILENAME]
    )
    for path in written:
        committed = CRD_DIR / path.name
        assert committed.read_bytes() == path.read_bytes(), (
            f"{committed} is stale: run python crds/gen_crds.py"
        )
    assert gen.main(["--check"]) == 0
    assert gen.main(["--check", "--out", str(tmp_path / "missing")]) == 1


def test_rendering_is_deterministic() -> None:
    for kind in gen.KINDS:
        assert gen.render(kind) == gen.render(kind)


@pytest.mark.parametrize("kind", [k.kind for k in gen.KINDS])
def test_crd_metadata(kind: str) -> None:
    crd = _crd(kind)
    k = next(k for k in gen.KINDS if k.kind == kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == f"{k.plural}.cilium.io"
    spec = crd["spec"]
    assert spec["group"] == "cilium.io"
    assert spec["scope"] == ("Cluster" if kind == "TracingPolicy" else "Namespaced")
    names = spec["names"]
    assert (names["kind"], names["listKind"]) == (kind, f"{kind}List")
    expected = {
        "TracingPolicy": ("tracingpolicies", "tracingpolicy", ["tgtp"]),
        "TracingPolicyNamespaced": (
            "tracingpoliciesnamespaced",
            "tracingpolicynamespaced",
            ["tgtpn"],
        ),
    }[kind]
    assert (names["plural"], names["singular"], names["shortNames"]) == expected
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1"
    assert version["served"] is True and version["storage"] is True
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == [
        "Pod-Selector",
        "Container-Selector",
        "Ready",
        "Nodes",
        "Pods",
        "Reason",
        "Age",
    ]
    assert columns["Pod-Selector"]["jsonPath"] == ".spec.podSelector"
    status = _root_schema(crd)["properties"]["status"]["properties"]
    for name in ("Ready", "Nodes", "Pods", "Reason"):
        field = columns[name]["jsonPath"].removeprefix(".status.")
        assert status[field]["type"] == columns[name]["type"]
        assert "[" not in columns[name]["jsonPath"], "the API server prints only a first match"
    assert columns["Age"] == {
        "name": "Age",
        "type": "date",
        "jsonPath": ".metadata.creationTimestamp",
    }
    for column in columns.values():
        assert column["type"] in {"string", "integer", "number", "boolean", "date"}
        assert column["jsonPath"].startswith(".")


def test_report_crd() -> None:
    """tpfilter's own kind: cluster-scoped, its own group, no status subresource (the agent
    writes the whole object), named after its node (CEL, with its twin), UID-keyed entries."""
    with (CRD_DIR / gen.REPORT_FILENAME).open(encoding="utf-8") as f:
        crd = yaml.load(f, Loader=_LOADER)
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "tracingpolicynodereports.tpfilter.io"
    assert (spec["group"], spec["scope"]) == ("tpfilter.io", "Cluster")
    [version] = spec["versions"]
    assert "subresources" not in version
    root = version["schema"]["openAPIV3Schema"]
    [rule] = root["x-kubernetes-validations"]
    twin = gen.CEL_TWINS[rule["rule"]]
    assert twin({"metadata": {"name": "n1"}, "nodeName": "n1"})
    assert not twin({"metadata": {"name": "n1"}, "nodeName": "n2"})
    policies = root["properties"]["policies"]
    assert policies["x-kubernetes-list-map-keys"] == ["uid"]
    assert set(policies["items"]["required"]) == {"uid", "state"}
    entry = policies["items"]["properties"]
    assert entry["state"]["enum"] == ["Ready", "Pending", "Unsupported", "Skipped", "Error"]
    for path, node in _walk(root):
        assert node.get("type") in _TYPES, f"{path}: every node needs a type"


def _walk(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for key, prop in (schema.get("properties") or {}).items():
        yield from _walk(prop, f"{path}.{key}")
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        yield from _walk(extra, f"{path}.*")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


@pytest.mark.parametrize("kind", [k.kind for k in gen.KINDS])
def test_schema_is_structural(kind: str) -> None:
    """The rules of a structural schema that a hand or generator can get wrong."""
    root = _root_schema(_crd(kind))
    assert set(root["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}
    assert root["properties"]["metadata"] == {"type": "object"}
    for path, node in _walk(root):
        where = path or "<root>"
        assert set(node) <= KEYWORDS, f"{where}: unknown keywords {set(node) - KEYWORDS}"
        assert node.get("type") in _TYPES, f"{where}: every node needs a type"
        assert not ("properties" in node and "additionalProperties" in node), where
        assert node.get("x-kubernetes-preserve-unknown-fields", True) is True, where
        if node["type"] == "array":
            assert "items" in node, where
        else:
            assert "items" not in node, where
        if "properties" in node or "additionalProperties" in node:
            assert node["type"] == "object", where
        for key in node.get("required", ()):
            assert key in node.get("properties", {}), f"{where}: required {key} has no schema"
        for value in node.get("enum", ()):
            assert isinstance(value, _TYPES[node["type"]]), f"{where}: enum {value!r}"
        if "default" in node:
            errors = list(
                LocalValidator.__new__(LocalValidator)._openapi(node, node["default"], where)
            )
            assert errors == [], f"{where}: default does not validate: {errors}"
        if node.get("x-kubernetes-list-type") == "map":
            keys = node["x-kubernetes-list-map-keys"]
            assert set(keys) <= set(node["items"].get("required", ())), where
        for rule in node.get("x-kubernetes-validations", ()):
            assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, where
            assert rule["rule"] in gen.CEL_TWINS, f"{where}: no Python twin for {rule['rule']}"
            assert rule["message"], where


@pytest.mark.parametrize("kind", [k.kind for k in gen.KINDS])
def test_cel_rules_are_bounded_for_the_cost_estimate(kind: str) -> None:
    """The API server estimates each rule's worst-case cost times how often its node can
    occur, assuming an unbounded list or map fills a 3 MiB request; rules must sit under
    bounded lists and maps only, and iterate or match only bounded ones."""
    root = _root_schema(_crd(kind))

    def visit(node: Mapping[str, Any], path: str, bounded: bool) -> Iterator[str]:
        rules = [r["rule"] for r in node.get("x-kubernetes-validations", ())]
        if rules and not bounded:
            yield f"{path}: rules under an unbounded list or map"
        for rule in rules:
            if "self.all(" in rule or "self.exists(" in rule:
                if node["type"] == "array" and "maxItems" not in node:
                    yield f"{path}: {rule} iterates an unbounded list"
                if node["type"] == "object" and "maxProperties" not in node:
                    yield f"{path}: {rule} iterates an unbounded map"
            for field in re.findall(r"self\.(\w+)\.matches\(", rule):
                if "maxLength" not in node["properties"][field]:
                    yield f"{path}.{field}: matched by a regex without maxLength"
        for key, prop in (node.get("properties") or {}).items():
            yield from visit(prop, f"{path}.{key}", bounded)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict):
            yield from visit(extra, f"{path}.*", bounded and "maxProperties" in node)
        if "items" in node:
            yield from visit(node["items"], f"{path}[]", bounded and "maxItems" in node)

    assert list(visit(root, "", True)) == []


def test_both_kinds_share_the_spec_schema() -> None:
    cluster = _root_schema(_crd("TracingPolicy"))["properties"]["spec"]
    namespaced = copy.deepcopy(_root_schema(_crd("TracingPolicyNamespaced"))["properties"]["spec"])
    refusals = namespaced.pop("x-kubernetes-validations")
    assert namespaced == cluster
    assert "x-kubernetes-validations" not in cluster
    assert [(r["fieldPath"], r["message"]) for r in refusals] == [
        (".hostSelector", "TracingPolicyNamespaced does not support spec.hostSelector"),
        (".uprobes", "TracingPolicyNamespaced does not support spec.uprobes"),
        (".usdts", "TracingPolicyNamespaced does not support spec.usdts"),
    ]


def test_every_tetragon_spec_field_is_accepted() -> None:
    spec = _root_schema(_crd("TracingPolicy"))["properties"]["spec"]["properties"]
    assert set(spec) == {
        "kprobes", "fentries", "tracepoints", "lsmhooks", "uprobes", "usdts", "loader",
        "lists", "enforcers", "options", "selectorsMacros", "podSelector",
        "containerSelector", "hostSelector", "nodeSelector",
    }  # fmt: skip
    kprobe = spec["kprobes"]["items"]["properties"]
    assert {"call", "syscall", "return", "args", "returnArg", "returnArgAction", "data",
            "selectors", "tags", "message", "ignore"} <= set(kprobe)  # fmt: skip
    assert kprobe["syscall"]["default"] is True, "Tetragon relies on this CRD default"
    arg = kprobe["args"]["items"]["properties"]
    assert {"index", "type", "sizeArgIndex", "returnCopy", "maxData", "label", "resolve",
            "source", "btfType"} <= set(arg)  # fmt: skip
    sel = kprobe["selectors"]["items"]["properties"]
    assert set(sel) == {
        "matchPIDs", "matchArgs", "matchData", "matchReturnArgs", "matchBinaries",
        "matchParentBinaries", "matchNamespaces", "matchNamespaceChanges",
        "matchCapabilities", "matchCapabilityChanges", "matchActions", "matchReturnActions",
        "macros",
    }  # fmt: skip
    act = sel["matchActions"]["items"]["properties"]
    assert {"action", "argFd", "argName", "argUrl", "argFqdn", "argError", "argSig",
            "argSock", "kernelStackTrace", "userStackTrace", "rateLimit", "rateLimitScope",
            "imaHash"} <= set(act)  # fmt: skip
    assert {"Post", "Sigkill", "Override", "Signal", "NotifyEnforcer"} <= set(act["action"]["enum"])
    for hook in ("kprobes", "fentries", "tracepoints", "lsmhooks", "uprobes", "usdts"):
        assert spec[hook]["items"]["properties"]["selectors"]["items"]["properties"] == sel


# ------------------------------------------------------------------------------------
# Policies.
# ------------------------------------------------------------------------------------


def test_seed_policy_validates_unchanged() -> None:
    copy_in_repo = DATA / "valid" / "seed-policy.yaml"
    if SHARED_SEED.is_file():
        assert copy_in_repo.read_bytes() == SHARED_SEED.read_bytes(), (
            "tests/data/valid/seed-policy.yaml must stay a verbatim copy of "
            "shared/examples/seed-policy.yaml"
        )
    for doc in _documents(SHARED_SEED if SHARED_SEED.is_file() else copy_in_repo):
        assert validate(doc) == []


@pytest.mark.parametrize("path", VALID, ids=[p.name for p in VALID])
def test_valid_policy(path: Path) -> None:
    docs = _documents(path)
    assert docs, path
    for doc in docs:
        assert validate(doc) == []


@pytest.mark.parametrize("path", INVALID, ids=[p.name for p in INVALID])
def test_invalid_policy(path: Path) -> None:
    expectations = _expectations(path)
    assert expectations, f"{path}: needs a '# expect: <part of the error>' line"
    [doc] = _documents(path)
    errors = validate(doc)
    assert errors, f"{path}: accepted"
    for expected in expectations:
        assert any(expected in e for e in errors), f"{path}: {expected!r} not in {errors}"


def test_examples_cover_the_required_cases() -> None:
    valid = {p.name for p in VALID}
    assert {
        "seed-policy.yaml",
        "tracepoint-sched-process-exec.yaml",
        "kprobe-matchbinaries.yaml",
        "lsmhook-file-open.yaml",
        "namespaced-pod-container-selector.yaml",
        "options-and-lists.yaml",
    } <= valid
    invalid = {p.name for p in INVALID}
    assert {
        "selector-unknown-operator.yaml",
        "selector-exists-with-values.yaml",
        "selector-bad-label-value.yaml",
        "namespaced-host-selector.yaml",
    } <= invalid


# ------------------------------------------------------------------------------------
# The CEL twins and the label syntax.
# ------------------------------------------------------------------------------------

KEYS = [
    "app",
    "a",
    "app.kubernetes.io/name",
    "example.com/a_b-c.d",
    "A9",
    "a" * 63,
    "a" * 64,
    "-app",
    "app-",
    "Example.com/app",
    "/app",
    "example.com/",
    "a/b/c",
    "x" * 253 + "/app",
    "x" * 254 + "/app",
    "",
    "app name",
]
VALUES = ["", "a", "web-1", "v1.2_3", "a" * 63, "a" * 64, "-a", "a-", "a b", "x/y", "ü"]


@pytest.mark.parametrize("key", KEYS)
def test_label_key_rules_agree_with_the_operator(key: str) -> None:
    """The CRD accepts exactly the keys tpfilter's own model accepts."""
    expected = label_key_error(key) is None
    assert gen.RULE_LABEL_KEYS_QUALIFIED.twin({key: "v"}) is expected
    assert gen.RULE_KEY_QUALIFIED.twin({"key": key}) is expected


@pytest.mark.parametrize("value", VALUES)
def test_label_value_schema_agrees_with_the_operator(value: str) -> None:
    schema = gen.string("v", pattern=f"^{gen.LABEL_VALUE_BODY}$", max_length=gen.LABEL_VALUE_MAX)
    errors = list(LocalValidator.__new__(LocalValidator)._openapi(schema, value, "v"))
    assert (errors == []) is (label_value_error(value) is None)


def test_selector_requirement_twins() -> None:
    required, forbidden = gen.RULE_VALUES_REQUIRED.twin, gen.RULE_VALUES_FORBIDDEN.twin
    for op in ("In", "NotIn"):
        assert required({"key": "a", "operator": op, "values": ["x"]})
        assert not required({"key": "a", "operator": op})
        assert not required({"key": "a", "operator": op, "values": []})
        assert forbidden({"key": "a", "operator": op, "values": ["x"]})
    for op in ("Exists", "DoesNotExist"):
        assert forbidden({"key": "a", "operator": op})
        assert forbidden({"key": "a", "operator": op, "values": []})
        assert not forbidden({"key": "a", "operator": op, "values": ["x"]})
        assert required({"key": "a", "operator": op})


def test_namespaced_refusals_allow_absent_and_empty() -> None:
    crd = _crd("TracingPolicyNamespaced")
    base = {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": "TracingPolicyNamespaced",
        "metadata": {"name": "p", "namespace": "default"},
    }
    validator = LocalValidator(crd)
    assert validator.validate({**base, "spec": {}}) == []
    assert validator.validate({**base, "spec": {"uprobes": [], "usdts": []}}) == []
    assert validator.validate({**base, "spec": {"hostSelector": None}}) == []
    errors = validator.validate({**base, "spec": {"hostSelector": {}}})
    assert errors == [
        "spec.hostSelector: Forbidden: TracingPolicyNamespaced does not support spec.hostSelector"
    ]


def test_validator_refuses_keywords_it_does_not_implement() -> None:
    validator = LocalValidator.__new__(LocalValidator)
    with pytest.raises(NotImplementedError):
        list(validator._openapi({"type": "string", "oneOf": []}, "x", "f"))
    with pytest.raises(NotImplementedError):
        list(
            validator._cel(
                {"type": "string", "x-kubernetes-validations": [{"rule": "true", "message": "m"}]},
                "x",
                "f",
            )
        )


def test_blocking_errors_skip_cel_rules() -> None:
    """An unsupported operator blocks the rules, as in the API server."""
    doc = yaml.safe_load((DATA / "invalid" / "selector-unknown-operator.yaml").read_text())
    errors = validate(doc)
    assert errors[-1].startswith("some validation rules were not checked")


@pytest.mark.parametrize("text", ["app\n", "app\nx", "\napp"])
def test_newlines_are_rejected_like_go_regexp(text: str) -> None:
    """Go's ``$`` is the end of the text: a trailing newline fails keys and values alike."""
    assert not gen.RULE_KEY_QUALIFIED.twin({"key": text})
    assert not gen.RULE_LABEL_KEYS_QUALIFIED.twin({text: "v"})
    schema = gen.string("v", pattern=f"^{gen.LABEL_VALUE_BODY}$", max_length=gen.LABEL_VALUE_MAX)
    assert list(LocalValidator.__new__(LocalValidator)._openapi(schema, text, "v")) != []
