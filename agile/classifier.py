"""`AgileClassifier`: the codelab's interface (`predict_score`, `predict`) over the batched scorer.

Single texts give the codelab's shapes (a list of probabilities, an int); lists
give arrays. `predict_proba(model, texts)` is the scikit-learn style batch entry
point. A classifier built with `from_adapter` carries its model, so `model` may
be None in every call, and its adapter's calibration: it answers the calibrated
probabilities the workers serve (`calibrated=False` gives the model's own).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agile.policy import Policy
from agile.prompt import DEFAULT_EOS, DEFAULT_INSTRUCTIONS, DEFAULT_SEPARATOR, PromptTemplate
from agile.scoring import LabelScorer, ScoringSettings


@dataclass
class AgileClassifier:
    labels: tuple[str, ...]
    instructions: str = DEFAULT_INSTRUCTIONS
    separator_token: str = DEFAULT_SEPARATOR
    end_of_text_token: str = DEFAULT_EOS
    settings: ScoringSettings = field(default_factory=ScoringSettings)
    model: object = field(default=None, repr=False)
    policy: Policy | None = field(default=None, repr=False)  # its calibration is applied when set
    _scorers: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def template(self) -> PromptTemplate:
        return PromptTemplate(
            tuple(self.labels), self.instructions, self.separator_token, self.end_of_text_token
        )

    @classmethod
    def from_adapter(cls, path: str | Path, model=None) -> AgileClassifier:
        """A classifier bound to `model` (loaded from the adapter's base when None) with the adapter merged in."""
        from agile.adapters import load_adapter, merge_adapter
        from agile.models import load_model

        adapter = load_adapter(path)
        policy = Policy.from_adapter(adapter)
        if model is None:
            model = load_model(adapter.meta.base_model, sequence_length=policy.max_length)
        merge_adapter(model, adapter)
        return cls.from_policy(policy, model)

    @classmethod
    def from_policy(cls, policy: Policy, model=None) -> AgileClassifier:
        """The codelab's interface over a policy's prompt and length (its adapter already applied)."""
        t = policy.template
        return cls(labels=t.labels, instructions=t.instructions, separator_token=t.separator,
                   end_of_text_token=t.eos, settings=ScoringSettings(max_length=policy.max_length),
                   model=model, policy=policy)

    def encode_for_prediction(self, x_text: str) -> str:
        return self.template.prompt(x_text)

    def encode_for_training(self, x_text: str, y: int) -> str:
        return self.template.training_text(x_text, y)

    def _scorer(self, model) -> LabelScorer:
        model = model if model is not None else self.model
        if model is None:
            raise ValueError("no model: pass one, or build the classifier with from_adapter()")
        key = (id(model), self.template, self.settings)
        if key not in self._scorers:
            self._scorers.clear()
            self._scorers[key] = LabelScorer(model, self.template, self.settings)
        return self._scorers[key]

    def predict_proba(self, model, texts: Sequence[str], calibrated: bool = True) -> np.ndarray:
        """[n_texts, n_labels] label probabilities, rows summing to 1 (calibrated when the policy is)."""
        if isinstance(texts, str):
            raise TypeError("predict_proba takes a list of texts; use predict_score for one text")
        probs = self._scorer(model).score(list(texts)).probs
        return self.policy.calibrated(probs) if calibrated and self.policy is not None else probs

    def predict_score(self, model, x_text: str | Sequence[str]):
        """Label probabilities: a list for one text, an [n, n_labels] array for a list."""
        if isinstance(x_text, str):
            return self.predict_proba(model, [x_text])[0].tolist()
        return self.predict_proba(model, x_text)

    def predict(self, model, x_eval: str | Sequence[str]):
        """Index of the most likely label: an int for one text, an array for a list."""
        if isinstance(x_eval, str):
            return int(np.argmax(self.predict_proba(model, [x_eval])[0]))
        return np.argmax(self.predict_proba(model, x_eval), axis=1)
