"""The paired bootstrap the baseline bench uses to say whether an AUC gap is more than luck."""

import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import common


def test_the_difference_is_the_auc_difference_and_its_interval_covers_it():
    rng = np.random.default_rng(3)
    truth = rng.random(90) < 0.2
    good = truth + rng.normal(0, 0.6, 90)
    weak = truth + rng.normal(0, 1.5, 90)
    out = common.paired_auc_bootstrap(truth, good, weak, resamples=4000)
    assert out["delta"] == pytest.approx(roc_auc_score(truth, good) - roc_auc_score(truth, weak))
    assert out["low"] < out["delta"] < out["high"]
    swapped = common.paired_auc_bootstrap(truth, weak, good, resamples=4000)
    assert swapped["delta"] == pytest.approx(-out["delta"])
    assert swapped["share_ahead"] == pytest.approx(1 - out["share_ahead"], abs=0.01)


def test_a_perfect_scorer_is_surely_ahead_of_a_random_one_and_a_scorer_not_ahead_of_itself():
    rng = np.random.default_rng(0)
    truth = np.r_[np.ones(15, bool), np.zeros(70, bool)]
    perfect, noise = truth.astype(float), rng.random(85)
    out = common.paired_auc_bootstrap(truth, perfect, noise, resamples=2000)
    assert out["low"] > 0.2 and out["share_ahead"] == 1.0
    same = common.paired_auc_bootstrap(truth, noise, noise, resamples=2000)
    assert same["delta"] == 0 and same["low"] == same["high"] == 0 and same["share_ahead"] == 0


def test_runs_pool_as_the_mean_difference_and_ties_count_half():
    truth = np.array([1, 1, 0, 0, 0], bool)
    first = np.array([[0.9, 0.5, 0.5, 0.1, 0.2], [0.9, 0.8, 0.7, 0.1, 0.2]])  # a tie in run 0
    second = np.array([[0.2, 0.3, 0.9, 0.1, 0.5], [0.6, 0.6, 0.6, 0.6, 0.6]])  # all ties in run 1
    expected = np.mean([roc_auc_score(truth, a) - roc_auc_score(truth, b) for a, b in zip(first, second, strict=True)])
    assert common.paired_auc_bootstrap(truth, first, second, resamples=100)["delta"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="both classes"):
        common.paired_auc_bootstrap(np.ones(5, bool), first, second)
    with pytest.raises(ValueError, match="every test row"):
        common.paired_auc_bootstrap(truth, first, second[:, :4])
