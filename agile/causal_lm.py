"""A Gemma 3 causal LM with the `score()` method the codelab calls.

keras-hub's `Gemma3CausalLM` lacks `score()` (its Gemma 1/2 sibling has it),
and its own preprocessor insists on TensorFlow even for text-only models, so
we pair the backbone with the generic `CausalLMPreprocessor` instead.
"""

from __future__ import annotations

from agile.backend import use_torch

use_torch()

import keras  # noqa: E402
import keras_hub  # noqa: E402
from keras import ops  # noqa: E402


class AgileGemma3CausalLM(keras_hub.models.Gemma3CausalLM):
    """`Gemma3CausalLM` plus `score(token_ids=, padding_mask=)` -> logits [batch, seq, vocab]."""

    def score(self, token_ids, padding_mask=None, scoring_mode: str = "logits", target_ids=None):
        if scoring_mode not in ("logits", "loss"):
            raise ValueError(f"scoring_mode must be 'logits' or 'loss', not {scoring_mode!r}")
        if padding_mask is None:
            padding_mask = ops.ones_like(token_ids, dtype="bool")
        hidden = self.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
        logits = self.backbone.token_embedding(hidden, reverse=True)
        if scoring_mode == "logits":
            return logits
        if target_ids is None:
            raise ValueError("scoring_mode='loss' needs target_ids")
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
        return loss(target_ids, logits)


def build_causal_lm(backbone, tokenizer, sequence_length: int = 128):
    """Wrap a Gemma 3 backbone and tokenizer into a scoring-capable causal LM."""
    preprocessor = keras_hub.models.CausalLMPreprocessor(
        tokenizer=tokenizer, sequence_length=sequence_length
    )
    return AgileGemma3CausalLM(preprocessor=preprocessor, backbone=backbone)
