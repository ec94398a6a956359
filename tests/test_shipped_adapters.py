"""What ships in adapters/: each directory is a loadable, calibrated policy with its report, and
the ETHOS set file names only shipped policies, each attribute behind the hate policy's gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agile.adapters import load_adapter
from agile.policy import Policy
from agile.policy_set import read

ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
SHIPPED = sorted(p.name for p in ADAPTERS.iterdir() if p.is_dir())


def test_the_expected_policies_ship() -> None:
    expected = {"ethos-hate", "ethos-violence", "ethos-gender", "ethos-race", "ethos-religion", "ethos-directed",
                "ethos-sexual-orientation", "ethos-disability"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_adapter_is_a_calibrated_policy_with_its_report(name: str) -> None:
    policy = Policy.from_adapter(load_adapter(ADAPTERS / name))
    assert policy.name == name and policy.positive_label in policy.labels
    assert not policy.calibration.is_identity and 0 < policy.threshold < 1
    metrics = json.loads((ADAPTERS / name / "report" / "metrics.json").read_text())
    assert metrics["adapter"] == f"adapters/{name}" and metrics["positive_label"] == policy.positive_label
    for plot in ("roc.png", "reliability.png", "confusion_matrix.png"):
        assert (ADAPTERS / name / "report" / plot).stat().st_size > 1000


def test_the_ethos_set_gates_every_attribute_on_the_hate_policy() -> None:
    entries = read(ADAPTERS / "ethos-set.json")
    assert entries[0].name == "ethos-hate" and entries[0].gate is None
    assert {e.name for e in entries} <= set(SHIPPED)
    assert all(e.gate == "ethos-hate" for e in entries[1:]) and len(entries) >= 8
