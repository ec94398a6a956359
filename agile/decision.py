"""The decision rule: label probabilities become result rows (`p_<label>`, prediction, flagged).

`agile score`, the worker and policy sets all call this one function, so a comment gets
the same decision however it was scored. It works on a whole batch at once: the
per-comment Python around a GPU's ~100 µs a comment is what bounds a worker, so the
rule is numpy over the batch and only the final dicts are built per row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def score_fields(labels: Sequence[str], probs, truncated, positive_label: str | None,
                 threshold: float, observe: bool = False) -> list[dict]:
    """Each comment's result: p_<label> for every label, the prediction, and whether its text was cut.

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
    keys = [f"p_{label}" for label in labels]
    names = np.asarray(list(labels), dtype=object)
    cut = np.asarray(truncated, dtype=bool).reshape(len(probs)).tolist()
    rounded = np.round(probs, 6).tolist()
    if positive_label not in labels:
        predicted = names[probs.argmax(axis=1)].tolist()
        return [{**dict(zip(keys, p, strict=True)), "prediction": pred, "truncated": t}
                for p, pred, t in zip(rounded, predicted, cut, strict=True)]
    k = list(labels).index(positive_label)
    flagged = probs[:, k] >= threshold
    others = probs.copy()
    others[:, k] = -np.inf
    predicted = np.where(flagged, positive_label, names[others.argmax(axis=1)])
    if observe:
        predicted, flagged = np.full(len(probs), "", dtype=object), np.zeros(len(probs), dtype=bool)
    return [{**dict(zip(keys, p, strict=True)), "prediction": pred, "flagged": f, "truncated": t}
            for p, pred, f, t in zip(rounded, predicted.tolist(), flagged.tolist(), cut, strict=True)]
