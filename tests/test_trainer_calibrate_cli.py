"""`agile train` stores a calibration; `agile calibrate` fits one for an existing adapter; both on a tiny Gemma 3."""

from __future__ import annotations

import csv
import json

import pytest

from agile.adapters import load_adapter
from agile.calibration import IDENTITY
from agile.cli.main import main
from agile.policy import Policy
from agile.testing import make_tiny_preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(make_tiny_preset(tmp_path_factory.mktemp("tiny") / "preset"))


def write_table(path, words: tuple[str, ...]):
    rows = [(f"you are all {w} people", "Toxic") for w in words]
    rows += [(f"what a {w} day", "Safe") for w in ("nice", "sunny", "calm", "good", "fine", "warm")]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("comment", "verdict"), *rows])
    return path


COLUMNS = ["--text-column", "comment", "--label-column", "verdict"]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A tiny adapter trained with validation rows and a test file: calibrated at training time."""
    root = tmp_path_factory.mktemp("calibrate")
    table = write_table(root / "train.csv", ("awful", "stupid", "vile", "dumb", "bad", "rude"))
    test = write_table(root / "test.csv", ("mean", "cruel", "nasty", "foul", "evil", "sick"))
    code = main(["train", "--data", str(table), "--test", str(test), *COLUMNS, "--labels", "Safe,Toxic",
                 "--model", tiny, "--epochs", "1", "--validation-fraction", "0.34", "--learning-rate", "0.01",
                 "--out", str(root / "policy"), "--report", str(root / "report")])
    assert code == 0
    return root


def test_training_stores_a_calibration_fitted_on_validation(trained):
    meta = json.loads((trained / "policy" / "adapter.json").read_text())
    cal = meta["calibration"]
    summary = meta["metrics"]["calibration"]
    losses = summary["chosen_by"]["log_loss"]  # the default, auto: the lowest held-out loss on validation
    assert cal["method"] == summary["method"] == min(losses, key=losses.get)
    assert cal["rows"] == 4 and "validation" in cal["fitted_on"]
    assert set(summary["validation"]) >= {"ece_before", "ece_after", "brier_before", "brier_after"}
    assert meta["threshold"] == meta["metrics"]["validation"]["threshold"]
    assert meta["settings"]["data_spec"].endswith("train.csv") and meta["settings"]["test_spec"].endswith("test.csv")
    report = json.loads((trained / "report" / "metrics.json").read_text())
    assert set(report["calibration"]) == {"method", "test", "validation"}
    assert (trained / "report" / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert report["f1"] == meta["metrics"]["test"]["f1"]  # the report and the adapter agree


def make_old(trained, name: str) -> tuple:
    """A copy of the adapter as written before calibration existed: no calibration, no recorded data spec."""
    import shutil

    old = trained / name
    shutil.copytree(trained / "policy", old)
    meta = json.loads((old / "adapter.json").read_text())
    meta.pop("calibration")
    for key in ("data_spec", "text_column", "label_column", "test_spec"):
        meta["settings"].pop(key)
    (old / "adapter.json").write_text(json.dumps(meta))
    return old, meta


def test_an_old_adapter_serves_raw_scores_and_can_be_calibrated_without_retraining(trained, tiny, capsys):
    old, _ = make_old(trained, "old")
    adapter = load_adapter(old)
    assert Policy.from_adapter(adapter).calibration is IDENTITY

    assert main(["calibrate", "--adapter", str(old)]) == 2
    assert "does not record its training data; name it with --data" in capsys.readouterr().err

    table = str(trained / "train.csv")
    assert main(["calibrate", "--adapter", str(old), "--data", table, *COLUMNS, "--test",
                 str(trained / "test.csv"), "--report", str(trained / "old-report")]) == 0
    assert "calibration auto: held-out validation log loss identity " in capsys.readouterr().out
    again = load_adapter(old)
    policy = Policy.from_adapter(again)
    fresh = json.loads((trained / "policy" / "adapter.json").read_text())
    assert policy.calibration.method == fresh["calibration"]["method"] and policy.calibration.rows == 4
    assert again.version != adapter.version  # what it serves changed, so its version does
    assert again.weights.keys() == adapter.weights.keys()
    # the same rows, the same rule: what training fitted, calibrate fits again
    assert again.meta.calibration["a"] == pytest.approx(fresh["calibration"]["a"], rel=1e-4)
    assert again.meta.threshold == pytest.approx(fresh["threshold"], rel=1e-4)
    assert (trained / "old-report" / "reliability.png").is_file()
    assert oct((old / "adapter.json").stat().st_mode)[-3:] == oct((old / "lora.safetensors").stat().st_mode)[-3:]


def test_calibrate_refuses_other_rows_and_adapters_without_validation(trained, tiny, tmp_path, capsys):
    old, before = make_old(trained, "old2")
    other = write_table(tmp_path / "other.csv", ("awful", "stupid", "vile", "dumb", "bad", "grim"))
    assert main(["calibrate", "--adapter", str(old), "--data", str(other), *COLUMNS]) == 2
    assert "not the rows" in capsys.readouterr().err
    assert json.loads((old / "adapter.json").read_text()) == before  # untouched

    code = main(["train", "--data", str(trained / "train.csv"), *COLUMNS, "--labels", "Safe,Toxic", "--model",
                 tiny, "--epochs", "1", "--validation-fraction", "0", "--out", str(tmp_path / "noval")])
    assert code == 0
    assert json.loads((tmp_path / "noval" / "adapter.json").read_text())["calibration"] == {}
    assert main(["calibrate", "--adapter", str(tmp_path / "noval")]) == 2
    assert "trained without a validation split" in capsys.readouterr().err
    assert main(["calibrate", "--adapter", str(trained / "policy"), "--calibration", "isotonic"]) == 2
    assert "isotonic calibration needs at least 1000 validation rows" in capsys.readouterr().err
