"""A moderation policy: a prompt template plus the rule that turns probabilities into a decision.

`agile score` writes the same fields the worker returns (the rule itself lives in
the wire contract, `agile.wire.score_fields`): zero-shot policies take the most
likely label; an adapter's policy flags its positive label at the threshold chosen
on validation rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agile.prompt import PromptTemplate
from agile.wire import score_fields


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

    def rows(self, ids: Sequence[str], probs: np.ndarray, truncated: np.ndarray, model: str) -> list[dict]:
        """One output row per comment: the queue's result fields (`agile.wire.score_fields`) plus id, model, policy."""
        labels = list(self.template.labels)
        return [
            {"id": cid, **score_fields(labels, probs[i], truncated[i], self.positive_label, self.threshold),
             "model": model, "policy": self.name}
            for i, cid in enumerate(ids)
        ]
