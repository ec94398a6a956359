"""Calibration: fit on validation rows, apply in the policy, and what an adapter without one does."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from agile.calibration import IDENTITY, Calibration, CalibrationError, expected_calibration_error
from agile.decision import rows_of
from agile.policy import Policy
from agile.prompt import PromptTemplate
from agile.trainer.calibrate import (
    ISOTONIC_MIN_ROWS,
    calibrate_on_validation,
    choose_threshold,
    fit_calibration,
    held_out_log_loss,
)

TEMPLATE = PromptTemplate(("none", "hate"))


def overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose true p(positive) is q, scored as sigmoid(4 * logit(q)): far too sure, as a tuned LoRA is."""
    rng = np.random.default_rng(seed)
    q = rng.uniform(0.05, 0.95, n)
    y = (rng.uniform(size=n) < q).astype(int)
    return y, 1 / (1 + np.exp(-4 * np.log(q / (1 - q))))


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_fitting_on_validation_cuts_the_error_on_fresh_rows(method):
    y_val, p_val = overconfident(400, seed=0)
    y_test, p_test = overconfident(2000, seed=1)
    fit = fit_calibration(y_val, p_val, method, fitted_on="synthetic")
    before, after = expected_calibration_error(y_test, p_test), expected_calibration_error(y_test, fit.positive(p_test))
    assert before > 0.1 and after < before / 2, (before, after)
    assert fit.a == pytest.approx(0.25, rel=0.35)  # the inverse of the overconfidence put in
    assert fit.rows == 400 and fit.fitted_on == "synthetic"
    assert skm.roc_auc_score(y_test, fit.positive(p_test)) == pytest.approx(skm.roc_auc_score(y_test, p_test))


def test_isotonic_only_with_enough_rows():
    y, p = overconfident(ISOTONIC_MIN_ROWS - 1, seed=2)
    with pytest.raises(ValueError, match=f"at least {ISOTONIC_MIN_ROWS} validation rows"):
        fit_calibration(y, p, "isotonic")
    y, p = overconfident(ISOTONIC_MIN_ROWS * 2, seed=3)
    fit = fit_calibration(y, p, "isotonic")
    y_test, p_test = overconfident(2000, seed=4)
    assert expected_calibration_error(y_test, fit.positive(p_test)) < expected_calibration_error(y_test, p_test) / 2
    assert np.all(np.diff(fit.positive(np.linspace(0, 1, 101))) >= 0)
    assert Calibration.from_json(fit.to_json(), "x") == fit


def test_calibrations_are_monotone_and_keep_probabilities_summing_to_one():
    grid = np.linspace(0, 1, 201)
    for cal in (Calibration("platt", a=0.3, b=-1.2), Calibration("temperature", a=0.4)):
        assert np.all(np.diff(cal.positive(grid)) > 0)
        assert 0 < cal.positive(0.0) < cal.positive(1.0) < 1  # a raw 0 or 1 becomes a doubt
    three = np.array([[0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    out = Calibration("platt", a=0.5, b=0.0).apply(three, positive=1)
    np.testing.assert_allclose(out.sum(axis=1), 1)
    assert out[0, 0] / out[0, 2] == pytest.approx(0.2 / 0.3)  # the other labels keep their proportions
    assert out[1, 0] == out[1, 2] > 0  # all mass on the positive label: the rest is shared equally


def test_identity_when_an_adapter_has_none():
    probs = np.array([[0.1, 0.9], [0.7, 0.3]])
    assert Calibration.from_json({}, "old adapter") is IDENTITY
    assert Calibration.from_json(None, "old adapter") is IDENTITY
    policy = Policy(TEMPLATE, "old", "hate", 0.5)
    np.testing.assert_array_equal(policy.calibrated(probs), probs)
    assert rows_of(policy.columns(probs[:1], [False]))[0] == {"p_none": 0.1, "p_hate": 0.9, "prediction": "hate",
                                              "flagged": True, "truncated": False}
    assert IDENTITY.to_json() == {}


def test_the_policy_serves_and_flags_the_calibrated_probability():
    cal = Calibration("platt", a=0.5, b=-1.0)
    policy = Policy(TEMPLATE, "p", "hate", 0.3, calibration=cal)
    got = rows_of(policy.columns(np.array([[0.2, 0.8]]), [False]))[0]
    served = float(cal.positive(0.8))
    assert got["p_hate"] == round(served, 6) and got["p_none"] == round(1 - served, 6)
    assert served < 0.8 and got["flagged"] == (served >= 0.3)
    with pytest.raises(ValueError, match="needs a positive label"):
        Policy(TEMPLATE, calibration=cal)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"method": "magic"}, "method must be one of"),
        ({"method": "platt", "a": -1.0}, "slope a > 0"),
        ({"method": "platt", "a": float("nan")}, "finite"),
        ({"method": "temperature", "a": 2.0, "b": 1.0}, "no intercept"),
        ({"method": "isotonic", "knots_x": [0.0, 0.5], "knots_y": [0.6, 0.2]}, "not fall in y"),
        ({"method": "platt", "slope": 2}, "unknown calibration keys"),
    ],
)
def test_a_malformed_calibration_is_refused_naming_the_adapter(data, message):
    with pytest.raises(CalibrationError, match=message) as info:
        Calibration.from_json(data, "adapters/x")
    assert "adapters/x" in str(info.value)


def test_ece_by_hand():
    # bins [0.1, 0.2): p 0.15 twice, one positive -> |0.5 - 0.15| = 0.35; bin [0.9, 1]: p 0.95, positive -> 0.05
    assert expected_calibration_error([0, 1, 1], [0.15, 0.15, 0.95]) == pytest.approx((2 * 0.35 + 0.05) / 3)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0


def test_threshold_rule_is_best_f1_on_calibrated_validation_scores():
    y_val, p_val = overconfident(300, seed=5)
    cal, threshold, summary = calibrate_on_validation(y_val, p_val, "platt", "synthetic")
    served = cal.positive(p_val)
    assert threshold == choose_threshold(y_val, served)
    f1 = skm.f1_score(y_val, served >= threshold)
    assert all(skm.f1_score(y_val, served >= c) <= f1 + 1e-12 for c in np.linspace(0, 1, 201))
    assert summary["validation"]["ece_after"] < summary["validation"]["ece_before"]
    assert summary["method"] == "platt" and summary["threshold_rule"].startswith("best F1")
    _, fixed, summary = calibrate_on_validation(y_val, p_val, "platt", "synthetic", threshold=0.8)
    assert fixed == 0.8 and summary["threshold_rule"] == "fixed by --threshold"


def test_one_class_validation_stays_uncalibrated_and_says_why():
    cal, _, summary = calibrate_on_validation(np.ones(5, int), np.full(5, 0.9), "platt", "tiny")
    assert cal is IDENTITY and "one class" in summary["note"]
    with pytest.raises(ValueError, match="both classes"):
        fit_calibration(np.ones(5, int), np.full(5, 0.9))


def test_an_adapter_with_a_malformed_calibration_is_refused_when_loaded_as_a_policy(tmp_path):
    import json
    from dataclasses import asdict

    from safetensors.numpy import save_file

    from agile.adapters import AdapterError, AdapterMeta, load_adapter

    meta = AdapterMeta(name="bad", base_model="tiny", base_checksum="0" * 64, labels=["none", "hate"],
                       instructions="Classify", separator="<separator>", eos="<eos>", rank=1,
                       target_layers=["query"], objective="label", max_length=64, positive_label="hate",
                       calibration={"method": "platt", "a": 0.0})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter.json").write_text(json.dumps(asdict(meta)))
    save_file({"w": np.zeros(1, np.float32)}, str(tmp_path / "bad" / "lora.safetensors"))
    with pytest.raises(AdapterError, match="slope a > 0") as info:
        Policy.from_adapter(load_adapter(tmp_path / "bad"))
    assert str(tmp_path / "bad") in str(info.value)


def test_auto_takes_the_lowest_held_out_loss_and_leaves_calibrated_scores_about_as_they_are():
    rng = np.random.default_rng(6)
    p = rng.uniform(0.02, 0.98, 400)
    y = (rng.uniform(size=400) < p).astype(int)  # p already means what it says
    cal, _, summary = calibrate_on_validation(y, p, "auto", "synthetic")
    losses = summary["chosen_by"]["log_loss"]
    assert set(losses) == {"identity", "temperature", "platt"}
    assert cal.method == min(losses, key=losses.get) and summary["method"] == cal.method
    assert max(losses.values()) - min(losses.values()) < 0.01  # nothing to fix, so nothing gains much
    grid = np.linspace(0.05, 0.95, 19)
    assert np.abs(cal.positive(grid) - grid).max() < 0.06


def test_auto_fits_an_overconfident_adapter_and_the_fit_holds_on_fresh_rows():
    y_val, p_val = overconfident(300, seed=7)
    cal, _, summary = calibrate_on_validation(y_val, p_val, "auto", "synthetic")
    losses = summary["chosen_by"]["log_loss"]
    assert cal.method != "identity" and losses[cal.method] < 0.7 * losses["identity"], losses
    assert cal.rows == 300  # refitted on all the validation rows, not on one fold
    y_test, p_test = overconfident(2000, seed=8)
    assert expected_calibration_error(y_test, cal.positive(p_test)) < expected_calibration_error(y_test, p_test) / 2


def test_auto_takes_platt_when_the_scores_are_also_shifted():
    rng = np.random.default_rng(10)
    q = rng.uniform(0.05, 0.95, 300)
    y = (rng.uniform(size=300) < q).astype(int)
    shifted = 1 / (1 + np.exp(-(np.log(q / (1 - q)) + 2.5)))  # says "positive" far too often: a slope cannot fix it
    cal, _, summary = calibrate_on_validation(y, shifted, "auto", "synthetic")
    assert cal.method == "platt" and cal.b < -1, (cal, summary["chosen_by"])


def test_held_out_log_loss_is_out_of_fold():
    # Scores that are pure noise: a fit on the same rows would look better than chance, held out it cannot.
    rng = np.random.default_rng(9)
    y, p = rng.integers(0, 2, 200), rng.uniform(0.3, 0.7, 200)
    losses = held_out_log_loss(y, p)
    assert all(loss.shape == (200,) and loss.mean() > np.log(2) - 0.02 for loss in losses.values()), losses
    again = held_out_log_loss(y, p)  # seeded folds: the same choice on a rerun
    assert all(np.array_equal(losses[m], again[m]) for m in losses)


def test_auto_with_too_few_rows_of_a_class_stays_uncalibrated_and_says_why():
    y, p = np.array([1, 0, 0, 0, 0, 0]), np.array([0.9, 0.2, 0.1, 0.3, 0.4, 0.6])
    cal, _, summary = calibrate_on_validation(y, p, "auto", "tiny")
    assert cal is IDENTITY and "too few" in summary["note"]
    with pytest.raises(ValueError, match="at least 2 validation rows of each class"):
        held_out_log_loss(y, p)
