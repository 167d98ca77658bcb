"""Every policy under examples/ is one a user can take as it is: it parses into the
filter's model and the controller accepts it (tpfilter.accept: the program compiler against
a node offering every kernel feature). That each one also loads on a real kernel with
kprobes and BPF LSM is tests/vm/test_examples_load.py; that the API server takes it is
tests/integration/test_kubectl_apply.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tpfilter.accept import accept
from tpfilter.models import parse_policy

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_the_examples_are_found() -> None:
    # an empty glob would make the sweep below pass on nothing
    assert {p.name for p in EXAMPLES} >= {"seed-policy.yaml", "seed-policy-tracepoint.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_is_accepted(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    parse_policy(doc)  # the selectors are the filter's: a bad one raises here
    verdict = accept(doc["spec"])
    assert verdict.accepted, f"{path.name}: {verdict.message}"
