"""Node-local policy IDs: the u32 keys of the outer map.

Pure. An ID belongs to one policy object (by its UID: a policy deleted and re-created
under the same name is a new policy with a new ID). ID 0 is reserved for "unfiltered"
(programs treat it as matching every process), so filtered policies get 1 and up.

The top two IDs are reserved too, for node-wide sets the engine keeps (see
``bpf/policy_filter.h``), and never handed to a policy:

- :data:`ALL_PODS_ID` (``0xFFFFFFFF``): every pod container cgroup on the node, which
  hostSelector policies need;
- :data:`HOST_PID_PODS_ID` (``0xFFFFFFFE``): the containers of pods with ``hostPID: true``,
  whose own processes live in the node's PID namespace, like the runtime's.

IDs are handed out in increasing order and reused only after the counter wraps around
:data:`MAX_ID` (2**32 - 3), and then only IDs no policy holds. A freed ID is therefore not
handed to another policy while a BPF program that looked up the old entry might still be
running: that program finished billions of allocations ago.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from tpfilter.models import Policy, PolicyKey, PolicyKind

ALL_PODS_ID = 2**32 - 1  # reserved: "every pod container on this node" (hostSelector)
HOST_PID_PODS_ID = 2**32 - 2  # reserved: "the containers of hostPID pods on this node"
RESERVED_IDS = frozenset({ALL_PODS_ID, HOST_PID_PODS_ID})
MAX_ID = HOST_PID_PODS_ID - 1  # the highest ID a policy can get


@dataclass(frozen=True, slots=True)
class PolicyRecord:
    """Who owns a policy ID. Kept on the node so a restarted agent adopts its maps."""

    policy_id: int
    uid: str
    kind: str
    namespace: str | None
    name: str

    @property
    def key(self) -> PolicyKey:
        return PolicyKey(kind=PolicyKind(self.kind), namespace=self.namespace, name=self.name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class PolicyIds:
    def __init__(self, records: Iterable[PolicyRecord] = (), *, next_id: int | None = None) -> None:
        """``next_id`` is the saved counter; without one, counting resumes above every held ID.

        A saved counter is taken as it is even when it is below a held ID: after a wrap-around
        that is where allocation was, and jumping above the held IDs would wrap again at once
        and hand out the lowest, most recently freed IDs.
        """
        self._by_uid = {r.uid: r for r in records}
        self._taken = {r.policy_id for r in self._by_uid.values()}
        self._next = next_id if next_id is not None else max([1, *(i + 1 for i in self._taken)])

    def __iter__(self) -> Iterator[PolicyRecord]:
        return iter(sorted(self._by_uid.values(), key=lambda r: r.policy_id))

    def __len__(self) -> int:
        return len(self._by_uid)

    @property
    def next_id(self) -> int:
        return self._next

    def get(self, uid: str) -> PolicyRecord | None:
        return self._by_uid.get(uid)

    def ensure(self, policy: Policy) -> PolicyRecord:
        """The policy's record, allocating an ID if it has none; names follow renames."""
        key = policy.key
        old = self._by_uid.get(policy.uid)
        policy_id = old.policy_id if old else self._allocate()
        record = PolicyRecord(policy_id, policy.uid, key.kind.value, key.namespace, key.name)
        self._by_uid[policy.uid] = record
        self._taken.add(policy_id)
        return record

    def release(self, uid: str) -> None:
        record = self._by_uid.pop(uid, None)
        if record:
            self._taken.discard(record.policy_id)

    def _allocate(self) -> int:
        if len(self._taken) >= MAX_ID:
            raise RuntimeError("no free policy ID")
        while self._next > MAX_ID or self._next in self._taken:
            self._next = 1 if self._next > MAX_ID else self._next + 1
        policy_id = self._next
        self._next += 1
        return policy_id
