"""The decision rule: label probabilities become result columns (`p_<label>`, prediction, flagged).

`agile score`, the worker and policy sets all call this one rule, so a comment gets the
same decision however it was scored. It works on a whole batch at once: the per-comment
Python around a GPU's ~100 µs a comment is what bounds a worker, so the rule is numpy
over the batch, its result is columns (what a worker writes back), and dicts per row are
built only where one comment's answer is wanted.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def score_columns(labels: Sequence[str], probs, truncated, positive_label: str | None,
                  threshold: float, observe: bool = False) -> dict[str, list]:
    """A batch's results as columns, one value per row: p_<label> for every label, the prediction,
    `flagged` (only with a positive label) and whether each text was cut.

    `probs` is [n, k] (rows in `labels`' order), `truncated` [n]. With a positive label
    (adapters have one) the prediction follows the threshold on its probability, else it is
    the most probable of the other labels; without one it is the most probable label (the
    first on a tie). `observe`: scores only, nothing flagged and no prediction.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(labels):
        raise ValueError(f"expected probabilities of shape [n, {len(labels)}], got {list(probs.shape)}")
    if np.isnan(probs).any():
        raise ValueError("the model returned NaN probabilities")
    names = np.asarray(list(labels), dtype=object)
    out: dict[str, list] = {f"p_{label}": column for label, column in
                            zip(labels, np.round(probs, 6).T.tolist(), strict=True)}
    cut = np.asarray(truncated, dtype=bool).reshape(len(probs)).tolist()
    if positive_label not in labels:
        out["prediction"] = names[probs.argmax(axis=1)].tolist()
        out["truncated"] = cut
        return out
    k = list(labels).index(positive_label)
    flagged = probs[:, k] >= threshold
    others = probs.copy()
    others[:, k] = -np.inf
    predicted = np.where(flagged, positive_label, names[others.argmax(axis=1)])
    if observe:
        predicted, flagged = np.full(len(probs), "", dtype=object), np.zeros(len(probs), dtype=bool)
    out["prediction"], out["flagged"], out["truncated"] = predicted.tolist(), flagged.tolist(), cut
    return out


def rows_of(columns: dict[str, list]) -> list[dict]:
    """Columns (one value per row) as one dict per row, keys in the columns' order."""
    keys = list(columns)
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns.values(), strict=True)]


def score_fields(labels: Sequence[str], probs, truncated, positive_label: str | None,
                 threshold: float, observe: bool = False) -> list[dict]:
    """`score_columns`, one dict per comment (what `agile score` and an HTTP answer give per comment)."""
    return rows_of(score_columns(labels, probs, truncated, positive_label, threshold, observe))
