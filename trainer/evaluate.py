"""How good an adapter is: scores on labelled rows, metrics, plots, and a report directory.

The flag score of a row is p(positive_label) as the policy serves it (calibrated
when the adapter has a calibration); a row is flagged when that score reaches the
adapter's threshold (chosen on validation rows, never on the test split).
Metrics come from scikit-learn; plots use matplotlib's Agg backend.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn import metrics as skm
from tqdm import tqdm

from agile.adapters import META_FILE
from agile.files import atomic_directory
from agile.policy import Policy
from agile.tables import TableWriter
from agile.trainer.data import Examples

EVAL_CHUNK = 64  # rows per progress-bar tick


def score_examples(scorer, examples: Examples, desc: str = "scoring") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [n, n_labels], truncated [n]) from a `LabelScorer`, with a progress bar."""
    probs, truncated = [], []
    for start in tqdm(range(0, len(examples), EVAL_CHUNK), desc=desc, unit="chunk", leave=False):
        scores = scorer.score(examples.texts[start : start + EVAL_CHUNK])
        probs.append(scores.probs)
        truncated.append(scores.truncated)
    return np.concatenate(probs), np.concatenate(truncated)


def binary_truth(examples: Examples, positive_label: str) -> np.ndarray:
    return (examples.labels == examples.label_names.index(positive_label)).astype(np.int64)


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float) -> dict:
    """F1, ROC-AUC, precision, recall, accuracy and the confusion matrix at `threshold`."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = (np.asarray(y_score) >= threshold).astype(np.int64)
    both = len(np.unique(y_true)) == 2
    return {
        "n": len(y_true),
        "threshold": float(threshold),
        "f1": float(skm.f1_score(y_true, y_pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, y_score)) if both else None,
        "precision": float(skm.precision_score(y_true, y_pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, y_pred, zero_division=0)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).tolist(),
        "share_flagged": float(y_pred.mean()),
        "share_positive": float(y_true.mean()),
    }


def held_out_metrics(test: Examples, probs: np.ndarray, policy: Policy) -> dict:
    """Test metrics on the scores as `policy` serves them (scored once, everything already fixed)."""
    y_test = binary_truth(test, policy.positive_label)
    served = policy.calibrated(probs)[:, policy.labels.index(policy.positive_label)]
    found = {**binary_metrics(y_test, served, policy.threshold),
             "f1_at_0.5": binary_metrics(y_test, served, 0.5)["f1"], "data": test.source}
    print(f"test ({test.source}, {len(test)} rows): F1 {found['f1']:.4f} (at 0.5: {found['f1_at_0.5']:.4f}), "
          f"ROC-AUC {found['roc_auc']:.4f}")
    return found


def save_plots(out: Path, y_true: np.ndarray, y_score: np.ndarray, threshold: float,
               names: tuple[str, str]) -> None:
    """confusion_matrix.png and roc.png, as the codelab draws them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_pred = (y_score >= threshold).astype(int)
    cm = skm.confusion_matrix(y_true, y_pred, labels=[0, 1])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    skm.ConfusionMatrixDisplay(cm, display_labels=list(names)).plot(ax=ax, colorbar=False)
    ax.set_title(f"flag = p({names[1]}) >= {threshold:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion_matrix.png", dpi=100)
    plt.close(fig)

    fpr, tpr, _ = skm.roc_curve(y_true, y_score, pos_label=1)
    fig, ax = plt.subplots(figsize=(5, 4.5))
    skm.RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=skm.auc(fpr, tpr), name=f"p({names[1]})").plot(ax=ax)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)


def check_writable(path: Path) -> None:
    """Fail before hours of work when `path`'s parent cannot take a new directory."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=f".{path.name}-probe-", dir=parent))
        probe.rmdir()
    except OSError as exc:
        raise OSError(f"{path}: cannot write there ({exc.strerror})") from exc


def write_report(
    report: Path, examples: Examples, probs: np.ndarray, truncated: np.ndarray, policy: Policy,
    extra: dict, validation: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """metrics.json, confusion_matrix.png, roc.png, reliability.png and scores.csv in `report`, atomically.

    `probs` are the model's raw label probabilities; the report shows them as `policy`
    serves them (calibrated) and measures the calibration error before and after, on
    these rows and, given `validation` = (0/1 truth, raw probabilities), on the validation rows.
    """
    from agile.trainer.calibrate import calibration_errors, save_reliability

    report = Path(report)
    if (report / META_FILE).exists():
        raise OSError(f"{report}: is an adapter directory; write the report to a directory of its own")
    check_writable(report)
    positive_label = policy.positive_label
    positive = examples.label_names.index(positive_label)
    y_true = binary_truth(examples, positive_label)
    raw = probs[:, positive]
    y_score = policy.calibrated(probs)[:, positive]
    result = binary_metrics(y_true, y_score, policy.threshold)
    result["f1_at_0.5"] = binary_metrics(y_true, y_score, 0.5)["f1"]
    result.update(data=examples.source, positive_label=positive_label, **extra)
    panels = {"test": (y_true, raw, y_score)}
    result["calibration"] = {"method": policy.calibration.method, "test": calibration_errors(y_true, raw, y_score)}
    if validation is not None:
        y_val, probs_val = validation
        raw_val, served = probs_val[:, positive], policy.calibrated(probs_val)[:, positive]
        panels = {"validation": (y_val, raw_val, served), **panels}
        result["calibration"]["validation"] = calibration_errors(y_val, raw_val, served)
    names = policy.names if len(policy.names) == len(examples.label_names) else list(examples.label_names)
    shown = names[positive]  # the positive label as the policy's outputs name it
    other = " / ".join(n for i, n in enumerate(names) if i != positive)

    with atomic_directory(report) as work:
        (work / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        save_plots(work, y_true, y_score, policy.threshold, (other, shown))
        save_reliability(work / "reliability.png", panels)
        with TableWriter(work / "scores.csv") as writer:
            writer.write([
                {
                    "row": i,
                    "label": names[examples.labels[i]],
                    f"p_{shown}": round(float(y_score[i]), 6),
                    f"raw_p_{shown}": round(float(raw[i]), 6),
                    "flagged": int(y_score[i] >= policy.threshold),
                    "truncated": int(truncated[i]),
                    "text": examples.texts[i],
                }
                for i in range(len(examples))
            ])
    return result


def adapted_scorer(adapter, model_spec: str | None, batch_size: int | None = None):
    """(model, scorer): the adapter's base model (or `model_spec`) with its LoRA in, scoring its prompt."""
    from agile.adapters import apply_adapter
    from agile.models import load_model
    from agile.scoring import LabelScorer, ScoringSettings

    meta = adapter.meta
    model = load_model(model_spec or meta.base_model, sequence_length=meta.max_length)
    apply_adapter(model, adapter)
    return model, LabelScorer(model, meta.template, ScoringSettings(meta.max_length, batch_size))


def evaluate_adapter(adapter_dir: str | Path, examples_of, model_spec: str | None, batch_size: int,
                     report: Path) -> dict:
    """Score labelled rows with an adapter as it is served; metrics.json, plots and scores in `report`.

    `examples_of(labels, names)` loads the rows once the adapter's labels and output names are known.
    """
    from dataclasses import replace

    from agile.adapters import load_adapter

    adapter = load_adapter(adapter_dir)
    policy = Policy.from_adapter(adapter)
    if policy.positive_label is None:  # adapters written before positive labels were recorded
        policy = replace(policy, positive_label=adapter.meta.labels[1])
    check_writable(report)
    examples = examples_of(tuple(adapter.meta.labels), tuple(adapter.meta.outputs or ()))
    model, scorer = adapted_scorer(adapter, model_spec, batch_size)
    probs, truncated = score_examples(scorer, examples, desc="evaluate")
    return write_report(report, examples, probs, truncated, policy,
                        {"adapter": str(adapter.path), "model": model.agile_info.spec})
