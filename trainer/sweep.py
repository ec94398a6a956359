"""Training-set size x epochs, as in the codelab's appendix: one run per size, scored at each listed epoch.

This is a descriptive curve read on the test split (the codelab's protocol: all
N rows train, flag = argmax, i.e. threshold 0.5); it is not used to pick the
settings of a shipped adapter, which `agile train` does on validation rows.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agile.prompt import PromptTemplate
from agile.trainer.data import Examples
from agile.trainer.evaluate import binary_metrics, binary_truth, check_writable
from agile.trainer.settings import TrainSettings

if TYPE_CHECKING:
    from agile.trainer.train import EpochRecord  # torch-heavy: imported when the sweep runs

# The codelab's appendix (gemma_instruct_2b_en): (size, epoch) -> (F1, ROC-AUC).
CODELAB_SWEEP = {
    (800, 4): (0.84, 0.88), (800, 6): (0.83, 0.86), (800, 8): (0.83, 0.84), (800, 10): (0.84, 0.87),
    (400, 4): (0.77, 0.83), (400, 6): (0.80, 0.82), (400, 8): (0.80, 0.82), (400, 10): (0.81, 0.85),
    (200, 4): (0.78, 0.79), (200, 6): (0.80, 0.78), (200, 8): (0.78, 0.80), (200, 10): (0.79, 0.81),
}
COLUMNS = ("size", "epoch", "f1", "roc_auc", "train_loss", "epoch_seconds")


def run_sweep(
    load_model: Callable[[], object],
    template: PromptTemplate,
    train_examples: Examples,
    test_examples: Examples,
    positive_label: str,
    sizes: list[int],
    epochs: list[int],
    settings: TrainSettings,
    out: Path,
) -> list[dict]:
    """Train once per size for max(epochs) epochs; score the test rows after each listed epoch.

    sweep.csv and sweep.png in `out` are rewritten after every point, so an
    interrupted sweep keeps what it measured.
    """
    from agile.models import clear
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.trainer.evaluate import score_examples
    from agile.trainer.train import train

    check_writable(out / "sweep.csv")
    y_true = binary_truth(test_examples, positive_label)
    positive = template.labels.index(positive_label)
    points: list[dict] = []
    for size in sizes:
        subset = train_examples.head(size)
        model = load_model()
        scorer = LabelScorer(model, template, ScoringSettings(max_length=settings.max_length))

        def record(epoch: EpochRecord, model, size=size, scorer=scorer) -> None:
            if epoch.epoch not in epochs:
                return
            probs, _ = score_examples(scorer, test_examples, desc=f"size {size} epoch {epoch.epoch}: test")
            found = binary_metrics(y_true, probs[:, positive], 0.5)
            points.append({
                "size": size, "epoch": epoch.epoch, "f1": round(found["f1"], 4),
                "roc_auc": round(found["roc_auc"], 4), "train_loss": round(epoch.loss, 4),
                "epoch_seconds": round(epoch.seconds, 1),
            })
            print(f"size {size}, epoch {epoch.epoch}: test F1 {found['f1']:.4f}, ROC-AUC {found['roc_auc']:.4f}")
            write_csv(out / "sweep.csv", points)
            plot_sweep(out / "sweep.png", points)

        train(model, template, subset, replace(settings, epochs=max(epochs)), on_epoch=record)
        del model, scorer
        clear()
    return points


def merge_sweeps(paths: list[Path], out: Path) -> list[dict]:
    """Join sweep.csv files run separately (one size per process, say) into one table and plot."""
    points: dict[tuple[int, int], dict] = {}
    for path in paths:
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError as exc:
            raise ValueError(f"cannot read sweep table {path}: {exc.strerror}") from exc
        if not rows or set(rows[0]) != set(COLUMNS):
            raise ValueError(f"{path} is not a sweep table (columns {', '.join(COLUMNS)})")
        for row in rows:
            key = (int(row["size"]), int(row["epoch"]))
            if key in points:
                raise ValueError(f"size {key[0]}, epoch {key[1]} appears twice (again in {path})")
            points[key] = {"size": key[0], "epoch": key[1],
                           **{c: float(row[c]) if row[c] else None for c in COLUMNS[2:]}}
    merged = [points[k] for k in sorted(points)]
    check_writable(out / "sweep.csv")
    write_csv(out / "sweep.csv", merged)
    plot_sweep(out / "sweep.png", merged)
    return merged


def write_csv(path: Path, points: list[dict]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(fd, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(points)
    os.replace(tmp, path)


def plot_sweep(path: Path, points: list[dict]) -> None:
    """Two panels (F1, ROC-AUC vs epoch), one line per size; the codelab's figures dashed beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({p["size"] for p in points})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (metric, title, index) in zip(axes, [("f1", "F1", 0), ("roc_auc", "ROC-AUC", 1)], strict=True):
        for n, size in enumerate(sizes):
            color = f"C{n}"
            ours = sorted((p["epoch"], p[metric]) for p in points if p["size"] == size)
            ax.plot(*zip(*ours, strict=True), ".-", color=color, label=f"{size} (Gemma 3 270M, ours)")
            theirs = sorted((e, v[index]) for (s, e), v in CODELAB_SWEEP.items() if s == size)
            if theirs:
                ax.plot(*zip(*theirs, strict=True), "x--", color=color, alpha=0.6,
                        label=f"{size} (codelab, 2B)")
        ax.set_title(f"{title} on the test split vs epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
