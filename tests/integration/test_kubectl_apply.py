"""What users meet at `kubectl apply`: valid policies land, invalid ones are refused with a
message that names the field. Against the real API server with the real CRDs of crds/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import kubectl
from tpfilter_dev.controlplane import ControlPlane

pytestmark = pytest.mark.apiserver

DATA = Path(__file__).resolve().parents[1] / "data"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SEED = EXAMPLES / "seed-policy.yaml"


def _expectation(path: Path) -> str:
    match = re.search(r"^# expect: (.+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path.name} has no '# expect:' line"
    return match.group(1).strip()


@pytest.mark.parametrize("path", sorted((DATA / "invalid").glob("*.yaml")), ids=lambda p: p.stem)
def test_invalid_policy_is_refused_naming_the_field(
    control_plane: ControlPlane, path: Path
) -> None:
    result = kubectl(control_plane, "apply", "-f", str(path), check=False)
    assert result.returncode != 0, f"{path.name} was accepted:\n{result.stdout}"
    assert _expectation(path) in result.stderr, result.stderr


@pytest.mark.parametrize(
    "path",
    [*sorted((DATA / "valid").glob("*.yaml")), *sorted(EXAMPLES.glob("*.yaml"))],
    ids=lambda p: p.stem,
)
def test_valid_policy_is_accepted(control_plane: ControlPlane, path: Path) -> None:
    result = kubectl(control_plane, "apply", "--dry-run=server", "-f", str(path), check=False)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


def test_seed_policy_round_trips_unchanged(control_plane: ControlPlane) -> None:
    """The seed as the user wrote it is what the API server stores (plus defaults)."""
    kubectl(control_plane, "apply", "-f", str(SEED))
    try:
        got = kubectl(
            control_plane,
            "get",
            "tracingpolicy",
            "policy-1",
            "-o",
            "jsonpath={.spec.kprobes[0].call} {.spec.podSelector.matchLabels.app} "
            "{.spec.kprobes[0].selectors[0].matchActions[0].argError}",
        ).stdout
        assert got == "security_bprm_creds_for_exec ubuntu -1"
    finally:
        kubectl(control_plane, "delete", "-f", str(SEED))
