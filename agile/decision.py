"""The decision rule: label probabilities become one result row (`p_<label>`, prediction, flagged).

`agile score` and the worker both call this one function, so a comment gets the
same decision however it was scored.
"""

from __future__ import annotations

import math


def score_fields(labels: list[str], probs, truncated: bool, positive_label: str | None,
                 threshold: float) -> dict:
    """One item's result: p_<label> for every label, the prediction, and whether the text was cut.

    With a positive label (adapters have one) the prediction follows the adapter's
    threshold on its probability; otherwise it is the most probable label.
    """
    if any(math.isnan(float(p)) for p in probs):
        raise ValueError("the model returned NaN probabilities")
    out = {f"p_{label}": round(float(p), 6) for label, p in zip(labels, probs, strict=True)}
    if positive_label in labels:
        k = labels.index(positive_label)
        flagged = float(probs[k]) >= threshold
        others = [(float(p), label) for i, (label, p) in enumerate(zip(labels, probs, strict=True)) if i != k]
        out["prediction"] = positive_label if flagged else max(others)[1]
        out["flagged"] = flagged
    else:
        out["prediction"] = labels[max(range(len(labels)), key=lambda i: probs[i])]
    out["truncated"] = bool(truncated)
    return out
