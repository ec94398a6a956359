"""A moderation policy: a prompt template plus the rule that turns probabilities into a decision.

One type for every place that scores: `agile score`, the classifier and the
worker. Zero-shot policies take the most likely label; an adapter's policy flags
its positive label at the threshold chosen on validation rows (the rule itself is
`agile.decision.score_columns`). An adapter's calibration is applied here, and only
here, so every path serves the same calibrated probability. Its outputs are named
here too: an adapter may prompt with one set of words (the codelab's `Positive`,
`Negative`) and name its columns and predictions with another (`hate`, `none`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from agile.adapters import Adapter, AdapterError
from agile.calibration import IDENTITY, Calibration, CalibrationError
from agile.decision import score_columns
from agile.prompt import DEFAULT_MAX_LENGTH, PromptTemplate

ZERO_SHOT = "zero-shot"
OUTPUT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # a column name `p_<name>` in every output format


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
    outputs: tuple[str, ...] | None = None  # what each label is called in outputs; None: the label words

    def __post_init__(self) -> None:
        if self.outputs is not None:
            check_outputs(self.labels, self.outputs)
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
            return cls(meta.template, meta.name, meta.positive_label, meta.threshold, meta.max_length,
                       adapter.version, calibration, adapter, tuple(meta.outputs) if meta.outputs else None)
        except CalibrationError as exc:
            raise AdapterError(str(exc)) from exc
        except ValueError as exc:  # its outputs or positive label do not fit its labels
            raise AdapterError(f"{adapter.path}: {exc}") from exc

    @property
    def labels(self) -> list[str]:
        """The prompt's label words (what the model is asked to choose between)."""
        return list(self.template.labels)

    @property
    def names(self) -> list[str]:
        """What each label is called in every output (`p_<name>`, `prediction`), in the labels' order."""
        return list(self.outputs) if self.outputs else self.labels

    @property
    def positive_name(self) -> str | None:
        """The positive label as outputs name it."""
        return None if self.positive_label is None else self.names[self.labels.index(self.positive_label)]

    def label_index(self, value: str) -> int | None:
        """The label a word names: a prompt label word or its output name (labelled files hold either)."""
        for words in (self.labels, self.names):
            if value in words:
                return words.index(value)
        return None

    def with_max_length(self, max_length: int | None) -> Policy:
        return replace(self, max_length=max_length) if max_length else self

    def calibrated(self, probs) -> np.ndarray:
        """The model's label probabilities (`[k]` or `[n, k]`) as this policy serves them."""
        if self.positive_label is None:
            return np.asarray(probs, dtype=np.float64)
        return self.calibration.apply(probs, self.labels.index(self.positive_label))

    def columns(self, probs: np.ndarray, truncated: np.ndarray, threshold: float | None = None,
                observe: bool = False) -> dict[str, list]:
        """A batch's result columns (`p_<label>` calibrated, prediction, flagged, truncated), one value
        per row of `probs` [n, k], calibrated and decided over the whole batch at once.

        `threshold` overrides the policy's own for one job or request; `observe` flags nothing.
        """
        return score_columns(self.names, self.calibrated(probs), truncated, self.positive_name,
                             self.threshold if threshold is None else threshold, observe)


def check_outputs(labels: Sequence[str], outputs: Sequence[str]) -> None:
    """Output names: one per label, distinct, and usable as a column name (`p_<name>`)."""
    if len(outputs) != len(labels):
        raise ValueError(f"outputs {list(outputs)} must name each of the labels {list(labels)}, in order")
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"outputs {list(outputs)} must be distinct")
    bad = [o for o in outputs if not isinstance(o, str) or not OUTPUT_NAME.match(o)]
    if bad:
        raise ValueError(f"output names {bad} must be 1-64 characters of A-Z a-z 0-9 _ . -")
    crossed = [o for i, o in enumerate(outputs) if o in labels and labels.index(o) != i]
    if crossed:
        raise ValueError(f"output names {crossed} are other labels' words: a labelled row would be ambiguous")
