"""Fitting an adapter's calibration on its validation rows, choosing its threshold, and the reliability diagram.

Methods (`--calibration`):
- `platt`: p' = sigmoid(a * logit(p) + b), a > 0. Fitted by log loss against
  Platt's smoothed targets ((N+ + 1) / (N+ + 2) for positives, 1 / (N- + 2) for negatives),
  so a few dozen rows whose raw scores are all 0 or 1 cannot drive it back to 0 and 1.
- `temperature`: the same with b = 0 (one parameter: p' = sigmoid(logit(p) / T)).
- `isotonic` (scikit-learn): a monotone step fit, only with at least ISOTONIC_MIN_ROWS
  validation rows; with fewer it overfits, so it is refused.
- `identity`: none (the adapter serves its raw probabilities).
- `auto` (default): whichever of identity, temperature and platt has the lowest log loss on
  held-out folds of the validation rows (each fitted on the other folds), then fitted on them
  all. A fit on 70 rows can make an already calibrated adapter worse; this asks the rows first.

The threshold rule (docs/TRAINING.md): flag when the calibrated p(positive) reaches the
cut-off with the best F1 on the validation rows (midway between adjacent scores; the
lowest such cut-off on a tie), unless `--threshold` fixes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn import metrics as skm

from agile.calibration import AUTO, EPS, IDENTITY, METHODS, Calibration, expected_calibration_error, logit, sigmoid
from agile.policy import Policy
from agile.prompt import PromptTemplate
from agile.trainer.data import Examples
from agile.trainer.evaluate import binary_metrics, binary_truth

ISOTONIC_MIN_ROWS = 1000
AUTO_CANDIDATES = ("identity", "temperature", "platt")  # simplest first: a tie keeps the simpler
AUTO_FOLDS = 5
BINS = 10  # equal-width bins for the ECE and the reliability diagram


def choose_threshold(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """The cut-off that maximizes F1 on these (validation) rows: midway between adjacent scores."""
    scores = np.unique(np.asarray(y_score, dtype=np.float64))
    cuts = np.concatenate([[scores[0]], (scores[:-1] + scores[1:]) / 2])
    f1s = [skm.f1_score(y_true, (y_score >= c).astype(int), zero_division=0) for c in cuts]
    return float(cuts[int(np.argmax(f1s))])


def _log_loss(params: np.ndarray, z: np.ndarray, t: np.ndarray, with_b: bool) -> tuple[float, np.ndarray]:
    """Log loss of sigmoid(exp(u) * z + b) against targets t, and its gradient in (u[, b])."""
    a, b = np.exp(params[0]), (params[1] if with_b else 0.0)
    s = a * z + b
    loss = float(np.sum(t * np.logaddexp(0, -s) + (1 - t) * np.logaddexp(0, s)))
    d = sigmoid(s) - t  # d loss / d s
    grad = [float(np.sum(d * z) * a)] + ([float(np.sum(d))] if with_b else [])
    return loss, np.array(grad)


def fit_calibration(y_true, p, method: str = "platt", fitted_on: str = "") -> Calibration:
    """A calibration of raw p(positive) `p` against 0/1 truth `y_true` (validation rows)."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {METHODS}, got {method!r}")
    if method == "identity":
        return IDENTITY
    if len(y) != len(p) or len(np.unique(y)) != 2:
        raise ValueError(f"a calibration needs rows of both classes; got {len(y)} rows, classes {np.unique(y)}")
    if method == "isotonic":
        if len(y) < ISOTONIC_MIN_ROWS:
            raise ValueError(f"isotonic calibration needs at least {ISOTONIC_MIN_ROWS} validation rows, "
                             f"got {len(y)}; use platt or temperature")
        from sklearn.isotonic import IsotonicRegression

        fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return Calibration("isotonic", knots_x=fit.X_thresholds_, knots_y=fit.y_thresholds_,
                           fitted_on=fitted_on, rows=len(y))
    n_pos = y.sum()
    n_neg = len(y) - n_pos
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    with_b = method == "platt"
    found = minimize(_log_loss, np.zeros(2 if with_b else 1), args=(logit(p), t, with_b), jac=True,
                     method="L-BFGS-B", bounds=[(-12, 12)] + ([(-50, 50)] if with_b else []))
    a, b = float(np.exp(found.x[0])), (float(found.x[1]) if with_b else 0.0)
    return Calibration(method, a=a, b=b, fitted_on=fitted_on, rows=len(y))


def row_log_loss(y_true, p) -> np.ndarray:
    """Each row's log loss of p(positive) against 0/1 truth, p clipped as `logit` clips it."""
    y, p = np.asarray(y_true, dtype=np.float64), np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


def held_out_log_loss(y_true, p, folds: int = AUTO_FOLDS, seed: int = 0) -> dict[str, np.ndarray]:
    """Per candidate method: each row's log loss when the method is fitted on the other folds.

    Folds are stratified, at most one per row of the rarer class, so every fit sees both classes.
    """
    from sklearn.model_selection import StratifiedKFold

    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(p, dtype=np.float64)
    counts = np.bincount(y, minlength=2)
    if counts.min() < 2:
        raise ValueError(f"choosing a calibration needs at least 2 validation rows of each class, got "
                         f"{counts.tolist()}")
    served = {m: np.empty(len(y)) for m in AUTO_CANDIDATES}
    for fit_rows, held in StratifiedKFold(min(folds, int(counts.min())), shuffle=True,
                                          random_state=seed).split(p, y):
        for m in AUTO_CANDIDATES:
            served[m][held] = fit_calibration(y[fit_rows], p[fit_rows], m).positive(p[held])
    return {m: row_log_loss(y, served[m]) for m in AUTO_CANDIDATES}


def choose_calibration(y_true, p, fitted_on: str = "") -> tuple[Calibration, dict]:
    """(the calibration `auto` picks, why): the lowest mean held-out log loss, refitted on all the rows.

    On a tie the simpler method is kept.
    """
    losses = {m: round(float(loss.mean()), 6) for m, loss in held_out_log_loss(y_true, p).items()}
    chosen = min(AUTO_CANDIDATES, key=lambda m: (losses[m], AUTO_CANDIDATES.index(m)))
    why = {"rule": f"lowest log loss on {AUTO_FOLDS}-fold held-out validation rows", "log_loss": losses}
    return fit_calibration(y_true, p, chosen, fitted_on), why


def calibration_errors(y_true, raw, calibrated) -> dict:
    """ECE and Brier score of p(positive) before and after calibration, on one set of rows."""
    y = np.asarray(y_true, dtype=np.float64)
    return {
        "n": len(y),
        "ece_before": round(expected_calibration_error(y, raw, BINS), 4),
        "ece_after": round(expected_calibration_error(y, calibrated, BINS), 4),
        "brier_before": round(float(np.mean((np.asarray(raw) - y) ** 2)), 4),
        "brier_after": round(float(np.mean((np.asarray(calibrated) - y) ** 2)), 4),
    }


def calibrate_on_validation(y_val, raw_val, method: str, fitted_on: str,
                            threshold: float | None = None) -> tuple[Calibration, float, dict]:
    """(calibration, threshold, summary): fit on the validation rows, then the threshold rule on them.

    A validation set with one class cannot fit anything: the adapter stays uncalibrated
    and the summary says why.
    """
    chosen_by = None
    if len(np.unique(y_val)) < 2 and method != "identity":
        calibration, why = IDENTITY, "validation rows hold one class only: nothing to fit"
    elif method == AUTO and np.bincount(np.asarray(y_val, dtype=np.int64), minlength=2).min() < 2:
        calibration, why = IDENTITY, "one validation row of a class: too few to choose a calibration by"
    elif method == AUTO:
        (calibration, chosen_by), why = choose_calibration(y_val, raw_val, fitted_on), None
    else:
        calibration, why = fit_calibration(y_val, raw_val, method, fitted_on), None
    served = calibration.positive(raw_val)
    how = "fixed by --threshold" if threshold is not None else "best F1 on validation (calibrated)"
    if threshold is None:
        threshold = choose_threshold(y_val, served)
    summary = {"method": calibration.method, "threshold_rule": how, "bins": BINS,
               "validation": calibration_errors(y_val, raw_val, served)}
    if chosen_by:
        summary["chosen_by"] = chosen_by
    if why:
        summary["note"] = why
    return calibration, threshold, summary


def served_policy(template: PromptTemplate, name: str, positive_label: str, max_length: int,
                  validation: Examples, probs: np.ndarray, method: str, threshold: float | None,
                  metrics: dict) -> Policy:
    """The policy as it will be served: calibration and threshold fitted on the validation rows.

    Records the calibration's summary and the validation metrics (on calibrated scores) in `metrics`.
    """
    positive = template.labels.index(positive_label)
    y_val = binary_truth(validation, positive_label)
    calibration, threshold, metrics["calibration"] = calibrate_on_validation(
        y_val, probs[:, positive], method, validation.source, threshold)
    policy = Policy(template, name, positive_label, threshold, max_length, calibration=calibration)
    metrics["validation"] = binary_metrics(y_val, policy.calibrated(probs)[:, positive], threshold)
    errors = metrics["calibration"]["validation"]
    if "chosen_by" in metrics["calibration"]:
        losses = ", ".join(f"{m} {v:.4f}" for m, v in metrics["calibration"]["chosen_by"]["log_loss"].items())
        print(f"calibration auto: held-out validation log loss {losses}")
    print(f"calibration {calibration.method} (a={calibration.a:.4g}, b={calibration.b:.4g}): validation ECE "
          f"{errors['ece_before']:.4f} -> {errors['ece_after']:.4f}; threshold {threshold:.4f} "
          f"({metrics['calibration']['threshold_rule']}); validation F1 {metrics['validation']['f1']:.4f}, "
          f"ROC-AUC {metrics['validation']['roc_auc']:.4f}")
    return policy


def reliability_points(y_true, p, bins: int = BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean p, share positive, rows) of each non-empty equal-width bin."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(p, dtype=np.float64)
    which = np.minimum((p * bins).astype(int), bins - 1)
    used = [b for b in range(bins) if (which == b).any()]
    return (np.array([p[which == b].mean() for b in used]), np.array([y[which == b].mean() for b in used]),
            np.array([(which == b).sum() for b in used]))


def save_reliability(path: Path, panels: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """reliability.png: per set of rows (validation, test), share positive vs mean p per bin,
    before and after calibration, with each curve's ECE; marker area follows the bin's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    for ax, (title, (y, raw, served)) in zip(axes[0], panels.items(), strict=True):
        for p, name, style in ((raw, "raw", "o--"), (served, "calibrated", "s-")):
            x, share, rows = reliability_points(y, p)
            ece = expected_calibration_error(y, p, BINS)
            line, = ax.plot(x, share, style, label=f"{name} (ECE {ece:.3f})")
            ax.scatter(x, share, s=12 + 200 * rows / rows.sum(), color=line.get_color(), alpha=0.4)
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted p(positive) in bin",
               ylabel="share positive in bin", title=f"{title} ({len(y)} rows, {BINS} bins)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def recalibrate(adapter_dir: str | Path, data: str | None, test: str | None, text_column: str | None,
                label_column: str | None, method: str, threshold: float | None, model_spec: str | None,
                report: Path | None) -> Path:
    """Fit an adapter's calibration and threshold on its own validation rows (rebuilt from adapter.json),
    score its test rows once, and rewrite its adapter.json; no retraining."""
    from dataclasses import replace

    from agile.adapters import META_FILE, load_adapter, write_meta
    from agile.trainer.data import recorded_splits
    from agile.trainer.evaluate import adapted_scorer, check_writable, held_out_metrics, score_examples, write_report

    adapter = load_adapter(adapter_dir)
    meta = adapter.meta
    if report:
        check_writable(report)
    validation, test_rows = recorded_splits(adapter, data, test, text_column, label_column)
    if report and test_rows is None:
        raise ValueError("--report scores a test split: name it with --test")

    model, scorer = adapted_scorer(adapter, model_spec)
    val_scores = score_examples(scorer, validation, desc="validation")[0]
    metrics = dict(meta.metrics)
    positive_label = meta.positive_label or meta.labels[1]
    policy = served_policy(meta.template, meta.name, positive_label, meta.max_length, validation, val_scores,
                           method, threshold, metrics)
    if test_rows is not None:
        test_scores = score_examples(scorer, test_rows, desc="test")
        metrics["test"] = held_out_metrics(test_rows, test_scores[0], policy)
        if report:
            write_report(report, test_rows, *test_scores, policy,
                         {"adapter": str(adapter.path), "model": model.agile_info.spec},
                         validation=(binary_truth(validation, positive_label), val_scores))
            print(f"report written to {report}")
    write_meta(adapter.path, replace(meta, positive_label=positive_label, threshold=policy.threshold,
                                     calibration=policy.calibration.to_json(), metrics=metrics))
    return adapter.path / META_FILE
