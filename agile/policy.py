"""A moderation policy: a prompt template plus the rule that turns probabilities into a decision.

One type for every place that scores: `agile score`, the classifier and the
worker. Zero-shot policies take the most likely label; an adapter's policy flags
its positive label at the threshold chosen on validation rows (the rule itself is
`agile.decision.score_fields`). An adapter's calibration is applied here, and only
here, so every path serves the same calibrated probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agile import output
from agile.adapters import Adapter, AdapterError
from agile.calibration import IDENTITY, Calibration, CalibrationError
from agile.decision import score_fields
from agile.prompt import DEFAULT_MAX_LENGTH, PromptTemplate

ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class Policy:
    template: PromptTemplate
    name: str = ZERO_SHOT  # the adapter's name, or "zero-shot"
    positive_label: str | None = None
    threshold: float = 0.5
    max_length: int = DEFAULT_MAX_LENGTH
    version: str = "none"  # the adapter's content hash (12 hex): which exact policy scored a comment
    calibration: Calibration = IDENTITY  # raw p(positive_label) -> calibrated; identity without one
    adapter: Adapter | None = field(default=None, compare=False, repr=False)  # its LoRA weights

    def __post_init__(self) -> None:
        if self.positive_label is not None and self.positive_label not in self.template.labels:
            raise ValueError(
                f"positive label {self.positive_label!r} is not one of {list(self.template.labels)}"
            )
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {self.threshold}")
        if self.positive_label is None and not self.calibration.is_identity:
            raise ValueError("a calibration needs a positive label: it calibrates p(positive label)")

    @classmethod
    def from_adapter(cls, adapter: Adapter) -> Policy:
        meta = adapter.meta
        try:
            calibration = Calibration.from_json(meta.calibration, str(adapter.path))
        except CalibrationError as exc:
            raise AdapterError(str(exc)) from exc
        return cls(meta.template, meta.name, meta.positive_label, meta.threshold, meta.max_length,
                   adapter.version, calibration, adapter)

    @property
    def labels(self) -> list[str]:
        return list(self.template.labels)

    def with_max_length(self, max_length: int | None) -> Policy:
        return replace(self, max_length=max_length) if max_length else self

    def calibrated(self, probs) -> np.ndarray:
        """The model's label probabilities (`[k]` or `[n, k]`) as this policy serves them."""
        if self.positive_label is None:
            return np.asarray(probs, dtype=np.float64)
        return self.calibration.apply(probs, self.labels.index(self.positive_label))

    def fields(self, probs, truncated: bool, threshold: float | None = None) -> dict:
        """One comment's result fields (`p_<label>` calibrated, prediction, flagged, truncated).

        `threshold` overrides the policy's own for one job or request.
        """
        return score_fields(self.labels, self.calibrated(probs), truncated, self.positive_label,
                            self.threshold if threshold is None else threshold)

    def rows(self, ids: Sequence[str], probs: np.ndarray, truncated: np.ndarray, model: str,
             threshold: float | None = None, observe: bool = False) -> list[dict]:
        """One output row per comment, in the schema `agile.output` defines for every output file."""
        from agile.policy_set import observed

        fields = (self.fields(probs[i], truncated[i], threshold) for i in range(len(ids)))
        return [output.row(self.labels, cid, observed(f) if observe else f, model, self.name)
                for cid, f in zip(ids, fields, strict=True)]
