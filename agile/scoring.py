"""Label probabilities for a batch of texts: the one computation the scorer, trainer and worker share.

For each row the label is the next token after `Prediction:`, at position
`sum(padding_mask[row]) - 1` of that row. We run the transformer, take the final
hidden state only at that position, and multiply it only by the label tokens'
embedding rows: two dot products per row instead of 262,144-word logits at every
position. Rows are sorted by length and padded per micro-batch, not to a fixed 128.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from agile.backend import use_torch

use_torch()

import torch  # noqa: E402
from keras import ops  # noqa: E402

from agile.prompt import PromptTemplate  # noqa: E402
from agile.tokens import PromptTokenizer  # noqa: E402

# keras-hub's Gemma 3 diverges from the reference implementation inside the
# sliding window (512 tokens); refuse longer inputs until that is checked.
MAX_SUPPORTED_LENGTH = 512


@dataclass(frozen=True)
class ScoringSettings:
    max_length: int = 128  # tokens per prompt, BOS included (the codelab's sequence length)
    batch_size: int = 16  # rows per forward pass

    def __post_init__(self) -> None:
        if not 16 <= self.max_length <= MAX_SUPPORTED_LENGTH:
            raise ValueError(
                f"max_length must be between 16 and {MAX_SUPPORTED_LENGTH} tokens, "
                f"got {self.max_length}"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class Scores:
    probs: np.ndarray  # float32 [n, n_labels], rows sum to 1
    truncated: np.ndarray  # bool [n]: the comment text was cut to fit max_length
    n_tokens: np.ndarray  # int [n]: prompt tokens actually scored

    def __len__(self) -> int:
        return len(self.probs)


def label_logits(model, token_ids, padding_mask, label_ids):
    """[batch, n_labels] logits of the label tokens at each row's next-token position.

    Differentiable: the trainer's label objective calls this under autograd.
    """
    hidden = model.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    last = ops.sum(ops.cast(padding_mask, "int32"), axis=1) - 1
    rows = ops.take_along_axis(hidden, ops.reshape(last, (-1, 1, 1)), axis=1)[:, 0, :]
    table = model.backbone.token_embedding.embeddings
    weights = ops.take(table, ops.convert_to_tensor(label_ids, "int32"), axis=0)
    logits = ops.matmul(ops.cast(rows, "float32"), ops.transpose(ops.cast(weights, "float32")))
    cap = getattr(model.backbone, "final_logit_soft_cap", None)
    if cap:
        logits = ops.tanh(logits / cap) * cap
    return logits


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token rows to the longest one: (token_ids int32, padding_mask bool)."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = True
    return ids, mask


class LabelScorer:
    """Scores texts against a prompt template with a loaded model; build once, call often."""

    def __init__(self, model, template: PromptTemplate, settings: ScoringSettings | None = None):
        self.model = model
        self.template = template
        self.settings = settings or ScoringSettings()
        self.tokenizer = PromptTokenizer.from_model(model)
        self.label_ids = self.tokenizer.label_ids(template.labels)

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        return self.tokenizer.encode_prompts(self.template, texts, self.settings.max_length)

    def score(self, texts: Sequence[str]) -> Scores:
        rows, truncated = self.encode(texts)
        n = len(rows)
        probs = np.zeros((n, len(self.label_ids)), dtype=np.float32)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        bs = self.settings.batch_size
        with torch.inference_mode():
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                ids, mask = pad_batch([rows[i] for i in idx], self.tokenizer.pad_id)
                logits = label_logits(self.model, ids, mask, self.label_ids)
                probs[idx] = ops.convert_to_numpy(ops.softmax(logits, axis=-1))
        return Scores(probs=probs, truncated=truncated, n_tokens=lengths)
