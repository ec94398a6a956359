"""A moderation policy: a prompt template plus the rule that turns probabilities into a decision.

Shared by `agile score` and the worker so a comment gets the same output row
however it was scored. Zero-shot policies take the most likely label; an
adapter's policy flags its positive label at the threshold chosen on validation rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agile.prompt import PromptTemplate


@dataclass(frozen=True)
class Policy:
    template: PromptTemplate
    name: str = "zero-shot"
    positive_label: str | None = None
    threshold: float = 0.5
    max_length: int = 128

    def __post_init__(self) -> None:
        if self.positive_label is not None and self.positive_label not in self.template.labels:
            raise ValueError(
                f"positive label {self.positive_label!r} is not one of {list(self.template.labels)}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")

    @classmethod
    def from_adapter_meta(cls, meta) -> Policy:
        return cls(meta.template, meta.name, meta.positive_label, meta.threshold, meta.max_length)

    def predictions(self, probs: np.ndarray) -> list[str]:
        labels = self.template.labels
        if self.positive_label is None or len(labels) != 2:
            return [labels[i] for i in np.argmax(probs, axis=1)]
        pos = labels.index(self.positive_label)
        neg = labels[1 - pos]
        return [self.positive_label if p >= self.threshold else neg for p in probs[:, pos]]

    def rows(self, ids: Sequence[str], probs: np.ndarray, truncated: np.ndarray, model: str) -> list[dict]:
        """One output row per comment: id, p_<label>..., prediction, truncated, model, policy."""
        preds = self.predictions(probs)
        labels = self.template.labels
        out = []
        for i, cid in enumerate(ids):
            row: dict = {"id": cid}
            row.update({f"p_{lab}": round(float(probs[i, j]), 6) for j, lab in enumerate(labels)})
            row.update(prediction=preds[i], truncated=bool(truncated[i]), model=model, policy=self.name)
            out.append(row)
        return out
