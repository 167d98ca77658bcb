"""Kubernetes label selectors: validation and matching, with the API server's semantics.

Pure functions over plain data. The semantics are those of
``metav1.LabelSelectorAsSelector`` + ``labels.Selector.Matches``:

* every term is ANDed: each ``matchLabels`` pair is an ``In`` with one value, and several
  requirements on the same key must all hold (so ``matchLabels: {a: x}`` with
  ``a In [y]`` matches nothing);
* ``In``: the key is present and its value is one of ``values``;
* ``NotIn``: the key is absent, or its value is none of ``values``;
* ``Exists`` / ``DoesNotExist``: presence of the key, whatever its value (even ``""``);
* an empty selector ``{}`` matches everything; the *absence* of a selector is not a
  selector at all, and what it means is decided by the caller (see ``tpfilter.models``).

Invalid selectors (``In``/``NotIn`` with no values, ``Exists`` with values, a malformed key
or value) are rejected when parsed, as the API server does, so matching never has to guess.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum

_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
# fullmatch, never "^...$": "$" also matches before a trailing newline, which the API
# server's (Go) regexps do not accept.
_NAME_RE = re.compile(_NAME)
_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_LABEL_VALUE_RE = re.compile(rf"({_NAME})?")
_CONTAINER_VALUE_RE = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.:/]*")


class Operator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


def label_key_error(key: str) -> str | None:
    """Why ``key`` is not a valid label key (a qualified name), or None if it is."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return f"label key {key!r}: prefix must be non-empty"
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix)):
        return f"label key {key!r}: prefix must be a DNS subdomain of at most 253 characters"
    if not name or len(name) > 63 or not _NAME_RE.fullmatch(name):
        return (
            f"label key {key!r}: name must be 1-63 characters, alphanumeric, '-', '_' or '.',"
            " starting and ending with an alphanumeric character"
        )
    return None


def label_value_error(value: str) -> str | None:
    """Why ``value`` is not a valid label value, or None if it is (``""`` is valid)."""
    if len(value) > 63 or not _LABEL_VALUE_RE.fullmatch(value):
        return (
            f"label value {value!r}: must be at most 63 characters, alphanumeric, '-', '_'"
            " or '.', starting and ending with an alphanumeric character"
        )
    return None


def container_value_error(value: str) -> str | None:
    """Why ``value`` is not a container name or image repository, or None if it is.

    containerSelector matches the pseudo-labels ``name`` and ``repo``; a repository such as
    ``registry.example:5000/team/app`` is no valid label value, so these get their own rule.
    """
    if len(value) > 255 or not _CONTAINER_VALUE_RE.fullmatch(value):
        return (
            f"container value {value!r}: must be a container name or image repository of at"
            " most 255 characters: alphanumerics, '-', '_', '.', ':' or '/'"
        )
    return None


def requirement_error(operator: str, values: tuple[str, ...]) -> str | None:
    """Why an operator/values pair is not a valid requirement, or None if it is."""
    if operator in (Operator.IN, Operator.NOT_IN):
        if not values:
            return f"values must be non-empty when operator is {operator}"
    elif operator in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
        if values:
            return f"values must be empty when operator is {operator}"
    else:
        return f"unknown operator {operator!r}: must be In, NotIn, Exists or DoesNotExist"
    return None


def requirement_matches(
    labels: Mapping[str, str], key: str, operator: Operator, values: frozenset[str]
) -> bool:
    """Whether one (already validated) requirement holds for ``labels``."""
    match operator:
        case Operator.IN:
            return key in labels and labels[key] in values
        case Operator.NOT_IN:
            return key not in labels or labels[key] not in values
        case Operator.EXISTS:
            return key in labels
        case Operator.DOES_NOT_EXIST:
            return key not in labels
