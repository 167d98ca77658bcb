"""Selection (the engine's memoised desired state) always equals desired_containers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tpfilter.desired import Selection, desired_containers
from tpfilter.models import Policy, parse_policy
from tpfilter.pods import Pod, parse_pod

LABELS = st.dictionaries(st.sampled_from(["app", "tier"]), st.sampled_from(["a", "b"]), max_size=2)


def make_pod(i: int, labels: dict[str, str], version: int) -> Pod:
    return parse_pod(
        {
            "metadata": {
                "name": f"p{i}",
                "namespace": "ns",
                "uid": f"pod-{i}",
                "labels": labels,
                "resourceVersion": str(version),
            },
            "status": {
                "containerStatuses": [
                    {
                        "name": "c",
                        "image": "img",
                        "containerID": f"containerd://{i:064x}",
                        "state": {"running": {}},
                    }
                ]
            },
        }
    )


def make_policy(j: int, labels: dict[str, str]) -> Policy:
    return parse_policy(
        {
            "kind": "TracingPolicy",
            "metadata": {"name": f"t{j}", "uid": f"pol-{j}"},
            "spec": {"podSelector": {"matchLabels": labels}},
        }
    )


@settings(max_examples=200, deadline=None)
@given(
    policy_labels=st.lists(LABELS, min_size=0, max_size=4),
    steps=st.lists(st.tuples(st.integers(0, 5), LABELS, st.booleans()), max_size=20),
)
def test_selection_equals_full_recomputation(
    policy_labels: list[dict[str, str]], steps: list[tuple[int, dict[str, str], bool]]
) -> None:
    policies = [make_policy(j, labels) for j, labels in enumerate(policy_labels)]
    pods: dict[int, Pod] = {}
    selection = Selection()
    for version, (i, labels, delete_it) in enumerate(steps):
        if delete_it:
            pods.pop(i, None)
        else:
            pods[i] = make_pod(i, labels, version)  # a new object, as the store hands out
        if version % 5 == 4 and policies:  # now and then a policy changes too
            policies[0] = make_policy(0, labels)
        assert selection.desired(policies, pods.values()) == desired_containers(
            policies, pods.values()
        )
