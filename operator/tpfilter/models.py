"""API models for ``cilium.io/v1alpha1`` TracingPolicy and TracingPolicyNamespaced.

Only what filtering needs is typed and validated here: the selectors. Everything else in
``spec`` (kprobes, tracepoints, lsmhooks, uprobes, usdts, lists, enforcers, options, ...)
is kept exactly as it came (``extra="allow"``), so any policy Tetragon accepts parses here
and nothing of it is lost on the way to the programs that act on it.

What the selectors mean (stated once, here, and in the README):

* A cluster-wide ``TracingPolicy`` with none of ``podSelector``, ``containerSelector`` and
  ``hostSelector`` is **unfiltered**: it applies to every process on the node, host
  processes included. It gets no filter map; programs treat its policy ID 0 as "always
  matches".
* An empty selector ``{}`` matches every pod (every container): it is a filter that lets
  all pod containers through, not the absence of a filter. Host processes are then *not*
  matched, because they are in no pod's container.
* A ``TracingPolicyNamespaced`` is always filtered: it only ever selects pods in its own
  namespace, and with no ``podSelector`` it selects all of them.
* ``containerSelector`` narrows the containers of the selected pods; its labels are
  ``name`` (the container's name) and ``repo`` (the image repository, without tag or
  digest).
* ``hostSelector`` is null (absent) or ``{}``; nothing else is accepted. ``{}`` makes the
  policy *also* match every process that is in no pod's container (a host process: in no
  cgroup of a running pod container on the node, nor below one), on top of the containers
  its ``podSelector``/``containerSelector`` select. With ``hostSelector: {}`` alone (no
  pod or container selector) a policy matches host processes only, no pod. The agent keeps
  the set of every pod container cgroup of the node under the reserved policy ID
  ``0xFFFFFFFF``, and a marker in the policy's own map; ``TracingPolicyNamespaced``
  refuses ``hostSelector``.
* ``nodeSelector`` is a label selector on the labels of the node the agent runs on. A
  policy whose ``nodeSelector`` does not match this node does not exist here: no filter
  map, no programs, and the agent reports it as *skipped on this node* with the reason.
  ``{}`` matches every node; an absent ``nodeSelector`` is no constraint. A node whose
  labels are not known (its Node object is missing) has no labels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from tpfilter.selectors import (
    Operator,
    container_value_error,
    label_key_error,
    label_value_error,
    requirement_error,
    requirement_matches,
)

GROUP = "cilium.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class PolicyKind(StrEnum):
    CLUSTER = "TracingPolicy"
    NAMESPACED = "TracingPolicyNamespaced"

    @property
    def plural(self) -> str:
        return "tracingpolicies" if self is PolicyKind.CLUSTER else "tracingpoliciesnamespaced"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, alias_generator=to_camel, populate_by_name=True)


class LabelSelectorRequirement(_Model):
    model_config = ConfigDict(extra="forbid")

    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    @field_validator("key")
    @classmethod
    def _valid_key(cls, key: str) -> str:
        if error := label_key_error(key):
            raise ValueError(error)
        return key

    @field_validator("values", mode="before")
    @classmethod
    def _null_values(cls, values: Any) -> Any:
        return () if values is None else values

    @field_validator("values")
    @classmethod
    def _valid_values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if error := label_value_error(value):
                raise ValueError(error)
        return values

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if error := requirement_error(self.operator, self.values):
            raise ValueError(error)
        return self


class LabelSelector(_Model):
    """A Kubernetes label selector; see ``tpfilter.selectors`` for the exact semantics."""

    model_config = ConfigDict(extra="forbid")

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: tuple[LabelSelectorRequirement, ...] = ()

    @field_validator("match_labels", mode="before")
    @classmethod
    def _null_labels(cls, labels: Any) -> Any:
        return {} if labels is None else labels

    @field_validator("match_expressions", mode="before")
    @classmethod
    def _null_expressions(cls, expressions: Any) -> Any:
        return () if expressions is None else expressions

    @field_validator("match_labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if error := label_key_error(key) or label_value_error(value):
                raise ValueError(error)
        return labels

    def matches(self, labels: Mapping[str, str]) -> bool:
        if any(labels.get(key) != value for key, value in self.match_labels.items()):
            return False
        return all(
            requirement_matches(labels, r.key, r.operator, frozenset(r.values))
            for r in self.match_expressions
        )


class ContainerSelectorRequirement(LabelSelectorRequirement):
    key: Literal["name", "repo"]

    @field_validator("values")
    @classmethod
    def _valid_values(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        for value in values:
            if error := container_value_error(value):
                raise ValueError(error)
        return values


class ContainerSelector(LabelSelector):
    """A label selector over the container's ``name`` and ``repo`` pseudo-labels.

    Its values are container names and image repositories, not label values: a repository
    such as ``registry.example:5000/team/app`` must be expressible.
    """

    match_labels: dict[Literal["name", "repo"], str] = Field(default_factory=dict)  # type: ignore[assignment]
    match_expressions: tuple[ContainerSelectorRequirement, ...] = ()

    @field_validator("match_labels")
    @classmethod
    def _valid_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for value in labels.values():
            if error := container_value_error(value):
                raise ValueError(error)
        return labels


class PolicySpec(_Model):
    """The spec; selectors typed, every other field kept verbatim."""

    model_config = ConfigDict(extra="allow")

    pod_selector: LabelSelector | None = None
    container_selector: ContainerSelector | None = None
    node_selector: LabelSelector | None = None
    host_selector: LabelSelector | None = None

    @field_validator("host_selector")
    @classmethod
    def _host_selector_all_or_none(cls, selector: LabelSelector | None) -> LabelSelector | None:
        if selector is not None and (selector.match_labels or selector.match_expressions):
            raise ValueError("only {} (all hosts) is supported; omit the field for none")
        return selector


class PolicyKey(_Model):
    """Which policy object, as a user names it."""

    kind: PolicyKind
    namespace: str | None
    name: str

    def __str__(self) -> str:
        return (
            f"{self.kind}/{self.namespace}/{self.name}"
            if self.namespace
            else (f"{self.kind}/{self.name}")
        )


class Policy(_Model):
    """A parsed TracingPolicy or TracingPolicyNamespaced."""

    key: PolicyKey
    uid: str
    resource_version: str = ""
    generation: int = 0  # metadata.generation: what a node report says it has applied
    spec: PolicySpec

    @property
    def filtered(self) -> bool:
        """Whether the policy acts only in selected containers (and so needs a filter map)."""
        return (
            self.key.kind is PolicyKind.NAMESPACED
            or self.spec.pod_selector is not None
            or self.spec.container_selector is not None
            or self.spec.host_selector is not None
        )

    @property
    def selects_pods(self) -> bool:
        """Whether a filtered policy selects any pods (not so with only a hostSelector)."""
        return (
            self.key.kind is PolicyKind.NAMESPACED
            or self.spec.pod_selector is not None
            or self.spec.container_selector is not None
        )

    @property
    def selects_host(self) -> bool:
        """hostSelector {}: also every process that is in no pod's container."""
        return self.spec.host_selector is not None

    def node_mismatch(self, node_labels: Mapping[str, str]) -> str | None:
        """Why the policy does not apply on a node with ``node_labels``, or None if it does."""
        selector = self.spec.node_selector
        if selector is None or selector.matches(node_labels):
            return None
        wanted = selector.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        return (
            f"nodeSelector {json.dumps(wanted, sort_keys=True)} does not match this node's labels"
        )


class PolicyError(ValueError):
    """A policy object that cannot be used; the message names the offending field."""


def parse_policy(body: Mapping[str, Any]) -> Policy:
    """Parse an API object (a dict as the API server sends it) into a :class:`Policy`.

    Raises :class:`PolicyError` whose message names each bad field as a dotted path,
    e.g. ``spec.podSelector.matchExpressions.0.values: ...``.
    """
    metadata = body.get("metadata") or {}
    try:
        kind = PolicyKind(str(body.get("kind")))
    except ValueError:
        raise PolicyError(f"kind: {body.get('kind')!r} is not a TracingPolicy kind") from None
    namespace = metadata.get("namespace") if kind is PolicyKind.NAMESPACED else None
    if kind is PolicyKind.NAMESPACED and not namespace:
        raise PolicyError("metadata.namespace: required for TracingPolicyNamespaced")
    try:
        key = PolicyKey(kind=kind, namespace=namespace, name=metadata.get("name"))
    except ValidationError as exc:
        raise PolicyError(_describe(exc, "metadata")) from None
    try:
        spec = PolicySpec.model_validate(body.get("spec") or {})
    except ValidationError as exc:
        raise PolicyError(_describe(exc, "spec")) from None
    if kind is PolicyKind.NAMESPACED and spec.host_selector is not None:
        raise PolicyError(
            "spec.hostSelector: TracingPolicyNamespaced does not support spec.hostSelector"
        )
    return Policy(
        key=key,
        uid=str(metadata.get("uid") or ""),
        resource_version=str(metadata.get("resourceVersion") or ""),
        generation=int(metadata.get("generation") or 0),
        spec=spec,
    )


def _describe(exc: ValidationError, prefix: str) -> str:
    parts = []
    for error in exc.errors():
        path = ".".join([prefix, *(str(p) for p in error["loc"])])
        parts.append(f"{path}: {str(error['msg']).removeprefix('Value error, ')}")
    return "; ".join(parts)
