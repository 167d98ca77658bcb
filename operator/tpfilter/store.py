"""The agent's view of the cluster: the latest policies, this node's pods and its labels.

Fed from two sides: kopf's watch events (fast, one object at a time) and full lists
(the initial sync, and a periodic resync that catches what a watch can miss, such as a
deletion that happened while the watch was down and kopf relisted). A list must never undo
a newer event, so every object carries its resourceVersion, and deletions leave a
tombstone until the next list: a list older than what an event already told us loses.

Resource versions are compared as integers. Kubernetes calls them opaque, but every
etcd-backed API server issues them from etcd's global revision; when one does not parse,
the newer arrival wins, which is what an opaque comparison could do at best.

Invalid policies (the API server's schema normally stops them first, but a CRD installed
by someone else may be laxer) are kept aside with their error, so they are reported, not
crashed on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from tpfilter.models import Policy, PolicyError, PolicyKind, parse_policy
from tpfilter.pods import Pod, parse_pod

T = TypeVar("T")


def _rv(body: Mapping[str, Any]) -> int | None:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion", ""))
    except ValueError:
        return None


def _older(candidate: int | None, than: int | None) -> bool:
    return candidate is not None and than is not None and candidate < than


@dataclass(slots=True)
class _Table(Generic[T]):
    """Objects of one resource, by UID, each with the resourceVersion it was seen at."""

    objects: dict[str, tuple[int | None, T]] = field(default_factory=dict)
    tombstones: dict[str, int | None] = field(default_factory=dict)

    def upsert(self, uid: str, rv: int | None, value: T) -> bool:
        current = self.objects.get(uid)
        if current and rv is not None and rv == current[0]:
            return False  # seen already (kopf replays every object when it relists)
        if (current and _older(rv, current[0])) or _older(rv, self.tombstones.get(uid)):
            return False
        self.tombstones.pop(uid, None)
        self.objects[uid] = (rv, value)
        return True

    def delete(self, uid: str, rv: int | None) -> bool:
        self.tombstones[uid] = rv
        return self.objects.pop(uid, None) is not None

    def replace(self, listed: Mapping[str, tuple[int | None, T]], list_rv: int | None) -> None:
        """Take a full list as the truth, except where an event already told us newer news."""
        merged: dict[str, tuple[int | None, T]] = {}
        for uid, (rv, value) in listed.items():
            current = self.objects.get(uid)
            if current and _older(rv, current[0]):
                merged[uid] = current
            elif not _older(rv, self.tombstones.get(uid)):
                merged[uid] = (rv, value)
        for uid, current in self.objects.items():
            if uid not in listed and _older(list_rv, current[0]):
                merged[uid] = current  # created after the list was taken
        self.objects = merged
        self.tombstones.clear()

    def values(self) -> list[T]:
        return [value for _, value in self.objects.values()]


@dataclass(frozen=True, slots=True)
class InvalidPolicy:
    kind: str
    namespace: str | None
    name: str
    error: str
    uid: str = ""
    generation: int = 0


class Store:
    def __init__(self, *, node_name: str, on_change: Callable[[], None] = lambda: None) -> None:
        self._node = node_name
        self._on_change = on_change
        self._policies = {kind: _Table[Policy]() for kind in PolicyKind}
        self._pods = _Table[Pod]()
        self._nodes = _Table[dict[str, str]]()  # only this node's Node object, by UID
        self._invalid: dict[str, InvalidPolicy] = {}

    # --- events -----------------------------------------------------------------------

    def policy_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        kind = PolicyKind(str(body.get("kind")))
        uid = body["metadata"]["uid"]
        if event_type == "DELETED":
            self._invalid.pop(uid, None)
            changed = self._policies[kind].delete(uid, _rv(body))
        else:
            policy = self._parse_policy(body)
            if policy is None:  # an invalid spec unloads the policy; it is reported instead
                self._policies[kind].delete(uid, _rv(body))
                changed = True
            else:
                changed = self._policies[kind].upsert(uid, _rv(body), policy)
        if changed:
            self._on_change()

    def pod_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        if event_type == "DELETED" or not self._on_this_node(body):
            changed = self._pods.delete(uid, _rv(body))
        else:
            changed = self._pods.upsert(uid, _rv(body), parse_pod(body))
        if changed:
            self._on_change()

    def node_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """This node's Node object changed (its labels are what nodeSelector matches)."""
        metadata = body.get("metadata") or {}
        if metadata.get("name") != self._node:
            return
        uid = metadata["uid"]
        if event_type == "DELETED":
            changed = self._nodes.delete(uid, _rv(body))
        else:
            labels = dict(metadata.get("labels") or {})
            current = self._nodes.objects.get(uid)
            changed = self._nodes.upsert(uid, _rv(body), labels)
            # A node's status changes every few seconds; only its labels matter here.
            changed = changed and (current is None or current[1] != labels)
        if changed:
            self._on_change()

    # --- full lists ---------------------------------------------------------------------

    def replace_policies(
        self, kind: PolicyKind, bodies: Iterable[Mapping[str, Any]], list_rv: str
    ) -> None:
        listed: dict[str, tuple[int | None, Policy]] = {}
        for body in bodies:
            policy = self._parse_policy(body)
            if policy is not None:
                listed[policy.uid] = (_rv(body), policy)
        self._policies[kind].replace(listed, _int_or_none(list_rv))
        self._on_change()

    def replace_pods(self, bodies: Iterable[Mapping[str, Any]], list_rv: str) -> None:
        listed = {
            body["metadata"]["uid"]: (_rv(body), parse_pod(body))
            for body in bodies
            if self._on_this_node(body)
        }
        self._pods.replace(listed, _int_or_none(list_rv))
        self._on_change()

    def replace_node(self, body: Mapping[str, Any] | None, list_rv: str) -> None:
        """The Node object as read in a full list (None: there is no such Node)."""
        listed: dict[str, tuple[int | None, dict[str, str]]] = {}
        if body is not None and (body.get("metadata") or {}).get("name") == self._node:
            metadata = body["metadata"]
            listed[metadata["uid"]] = (_rv(body), dict(metadata.get("labels") or {}))
        self._nodes.replace(listed, _int_or_none(list_rv))
        self._on_change()

    # --- reading ------------------------------------------------------------------------

    def policies(self) -> list[Policy]:
        return [p for table in self._policies.values() for p in table.values()]

    def pods(self) -> list[Pod]:
        return self._pods.values()

    def node_labels(self) -> dict[str, str]:
        """This node's labels ({} while its Node object is unknown or gone)."""
        nodes = self._nodes.values()
        return dict(nodes[-1]) if nodes else {}

    def invalid_policies(self) -> list[InvalidPolicy]:
        return list(self._invalid.values())

    def _parse_policy(self, body: Mapping[str, Any]) -> Policy | None:
        metadata = body.get("metadata") or {}
        try:
            policy = parse_policy(body)
        except PolicyError as exc:
            self._invalid[metadata.get("uid", "")] = InvalidPolicy(
                str(body.get("kind")),
                metadata.get("namespace"),
                metadata.get("name", ""),
                str(exc),
                uid=str(metadata.get("uid", "")),
                generation=int(metadata.get("generation") or 0),
            )
            return None
        self._invalid.pop(policy.uid, None)
        return policy

    def _on_this_node(self, body: Mapping[str, Any]) -> bool:
        return bool((body.get("spec") or {}).get("nodeName") == self._node)


def _int_or_none(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
