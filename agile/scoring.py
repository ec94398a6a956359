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

from agile.prompt import DEFAULT_MAX_LENGTH, PromptTemplate  # noqa: E402
from agile.tokens import PromptTokenizer  # noqa: E402

# keras-hub's Gemma 3 diverges from the reference implementation inside the
# sliding window (512 tokens); refuse longer inputs until that is checked.
MAX_SUPPORTED_LENGTH = 512


@dataclass(frozen=True)
class ScoringSettings:
    max_length: int = DEFAULT_MAX_LENGTH  # tokens per prompt, BOS included
    batch_size: int = 16  # rows per forward pass
    # Run the prompt head shared by every row (instructions, labels, "Text:") once and
    # reuse its keys/values: a quarter to a third fewer positions per row.
    reuse_prefix: bool = True

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
    return _label_head(model.backbone, hidden, last, label_ids)


def _label_head(backbone, hidden, last, label_ids):
    """Logits of the label tokens from each row's final hidden state at position `last`."""
    rows = ops.take_along_axis(hidden, ops.reshape(last, (-1, 1, 1)), axis=1)[:, 0, :]
    weights = ops.take(backbone.token_embedding.embeddings, ops.convert_to_tensor(label_ids, "int32"), axis=0)
    logits = ops.matmul(ops.cast(rows, "float32"), ops.transpose(ops.cast(weights, "float32")))
    cap = getattr(backbone, "final_logit_soft_cap", None)
    return ops.tanh(logits / cap) * cap if cap else logits


def _embed(backbone, token_ids):
    x = backbone.token_embedding(ops.convert_to_tensor(token_ids, "int32"))
    return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)


def prefix_cache(backbone, prefix: Sequence[int]) -> list[tuple]:
    """Each layer's (keys, values) for the shared prefix alone, batch 1."""
    shape = (1, len(prefix), backbone.num_key_value_heads, backbone.head_dim)
    x = _embed(backbone, [list(prefix)])
    mask = ops.ones((1, len(prefix)), "bool")
    caches = []
    for layer in backbone.transformer_layers:
        empty = (ops.zeros(shape, x.dtype), ops.zeros(shape, x.dtype))
        x, cache = layer(x, padding_mask=mask, cache=empty, cache_update_index=0)
        caches.append(cache)
    return caches


def suffix_label_logits(model, caches, token_ids, padding_mask, label_ids):
    """`label_logits` for rows given as the tokens that follow a cached prefix."""
    backbone = model.backbone
    batch, width = token_ids.shape
    plen = int(caches[0][0].shape[1])
    mask = np.concatenate([np.ones((batch, plen), dtype=bool), padding_mask], axis=1)
    x = _embed(backbone, token_ids)
    for layer, (keys, values) in zip(backbone.transformer_layers, caches, strict=True):
        grow = (batch, width, *keys.shape[2:])
        cache = tuple(
            ops.concatenate([ops.broadcast_to(t, (batch, *t.shape[1:])), ops.zeros(grow, t.dtype)], axis=1)
            for t in (keys, values)
        )
        x, _ = layer(x, padding_mask=mask, cache=cache, cache_update_index=plen)
    hidden = backbone.layer_norm(x)
    last = ops.convert_to_tensor(padding_mask.sum(axis=1) - 1, "int32")
    return _label_head(backbone, hidden, last, label_ids)


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

    def shared_prefix(self) -> list[int]:
        """Tokens every prompt starts with: the head minus its last token, which may merge with the text."""
        head = self.tokenizer.bos + self.tokenizer.encode([self.template.head])[0]
        return head[:-1]

    def score(self, texts: Sequence[str]) -> Scores:
        rows, truncated = self.encode(texts)
        n = len(rows)
        probs = np.zeros((n, len(self.label_ids)), dtype=np.float32)
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        order = np.argsort(lengths, kind="stable")
        prefix = self.shared_prefix() if self.settings.reuse_prefix else []
        bs = self.settings.batch_size
        caches = None
        with torch.inference_mode():
            for start in range(0, n, bs):
                idx = order[start : start + bs]
                batch = [rows[i] for i in idx]
                if prefix and all(r[: len(prefix)] == prefix for r in batch):
                    ids, mask = pad_batch([r[len(prefix) :] for r in batch], self.tokenizer.pad_id)
                    # Built per call (one short forward pass), so it always matches the current weights.
                    caches = caches or prefix_cache(self.model.backbone, prefix)
                    logits = suffix_label_logits(self.model, caches, ids, mask, self.label_ids)
                else:
                    ids, mask = pad_batch(batch, self.tokenizer.pad_id)
                    logits = label_logits(self.model, ids, mask, self.label_ids)
                probs[idx] = ops.convert_to_numpy(ops.softmax(logits, axis=-1))
        return Scores(probs=probs, truncated=truncated, n_tokens=lengths)
