"""Metrics against scikit-learn on known scores; threshold choice; the report directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from agile.calibration import Calibration
from agile.policy import Policy
from agile.prompt import PromptTemplate
from agile.trainer.calibrate import choose_threshold
from agile.trainer.data import Examples
from agile.trainer.evaluate import binary_metrics, write_report

Y_TRUE = np.array([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])
Y_SCORE = np.array([0.1, 0.45, 0.42, 0.8, 0.55, 0.7, 0.9, 0.2, 0.3, 0.65])
POLICY = Policy(PromptTemplate(("Positive", "Negative")), "known", "Negative", 0.5)


def test_metrics_equal_scikit_learn():
    found = binary_metrics(Y_TRUE, Y_SCORE, 0.5)
    y_pred = (Y_SCORE >= 0.5).astype(int)
    assert found["f1"] == pytest.approx(skm.f1_score(Y_TRUE, y_pred))
    assert found["roc_auc"] == pytest.approx(skm.roc_auc_score(Y_TRUE, Y_SCORE))
    assert found["precision"] == pytest.approx(skm.precision_score(Y_TRUE, y_pred))
    assert found["recall"] == pytest.approx(skm.recall_score(Y_TRUE, y_pred))
    assert found["accuracy"] == pytest.approx(skm.accuracy_score(Y_TRUE, y_pred))
    assert found["confusion_matrix"] == skm.confusion_matrix(Y_TRUE, y_pred).tolist()
    assert found["n"] == 10 and found["threshold"] == 0.5
    # By hand: flagged 0.8 0.55 0.7 0.9 0.65 -> TP 4, FP 1, FN 2: F1 = 8 / 11.
    assert found["f1"] == pytest.approx(8 / 11)


def test_threshold_maximizes_f1_on_the_rows_given():
    cut = choose_threshold(Y_TRUE, Y_SCORE)
    best = binary_metrics(Y_TRUE, Y_SCORE, cut)["f1"]
    for other in np.linspace(0, 1, 101):
        assert binary_metrics(Y_TRUE, Y_SCORE, other)["f1"] <= best + 1e-12
    assert best > binary_metrics(Y_TRUE, Y_SCORE, 0.5)["f1"]


def test_report_has_metrics_plots_and_per_row_scores(tmp_path):
    examples = Examples([f"text {i}" for i in range(10)], Y_TRUE.copy(), ("Positive", "Negative"), "known")
    probs = np.stack([1 - Y_SCORE, Y_SCORE], axis=1)
    report = tmp_path / "report"
    found = write_report(report, examples, probs, np.zeros(10, bool), POLICY, {"adapter": "x"})
    assert sorted(p.name for p in report.iterdir()) == ["confusion_matrix.png", "metrics.json", "reliability.png",
                                                        "roc.png", "scores.csv"]
    assert json.loads((report / "metrics.json").read_text())["roc_auc"] == pytest.approx(found["roc_auc"])
    assert (report / "roc.png").read_bytes()[:4] == b"\x89PNG"
    lines = (report / "scores.csv").read_text().splitlines()
    assert lines[0] == "row,label,p_Negative,raw_p_Negative,flagged,truncated,text" and len(lines) == 11
    assert lines[4].startswith("3,Negative,0.8,0.8,1,0,")
    assert found["calibration"]["test"]["ece_before"] == found["calibration"]["test"]["ece_after"]


def test_report_serves_the_policys_calibrated_scores(tmp_path):
    """The report shows what the policy serves: calibrated p, flagged at its threshold, ECE before and after."""
    examples = Examples([f"text {i}" for i in range(10)], Y_TRUE.copy(), ("Positive", "Negative"), "known")
    probs = np.stack([1 - Y_SCORE, Y_SCORE], axis=1)
    policy = Policy(POLICY.template, "known", "Negative", 0.6, calibration=Calibration("platt", a=2.0, b=-0.5))
    found = write_report(tmp_path / "r", examples, probs, np.zeros(10, bool), policy, {},
                         validation=(Y_TRUE, probs))
    served = policy.calibrated(probs)[:, 1]
    assert found["threshold"] == 0.6 and found["share_flagged"] == pytest.approx((served >= 0.6).mean())
    assert found["roc_auc"] == pytest.approx(skm.roc_auc_score(Y_TRUE, Y_SCORE))  # monotone: same ranking
    assert set(found["calibration"]) == {"method", "test", "validation"}
    row = (tmp_path / "r" / "scores.csv").read_text().splitlines()[4].split(",")
    assert float(row[2]) == pytest.approx(served[3], abs=1e-6) and float(row[3]) == 0.8


def test_report_refuses_an_unwritable_place(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    examples = Examples(["a", "b"], np.array([0, 1]), ("Positive", "Negative"), "two")
    with pytest.raises(OSError, match="cannot write there"):
        write_report(blocker / "report", examples, np.array([[0.6, 0.4], [0.3, 0.7]]),
                     np.zeros(2, bool), POLICY, {})
    assert blocker.read_text() == ""
