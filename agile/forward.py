"""The model-side computation of a label score, for every Gemma family keras-hub defines.

keras-hub's decoder blocks stay the single definition of the transformer; this
module only feeds them. What differs between families is handled here, once:

- the key/value cache: Gemma 1 and 2 blocks take one stacked tensor
  `[batch, 2, length, kv_heads, head_dim]`, Gemma 3 blocks a `(keys, values)` pair;
- the final-logit soft cap (Gemma 2), read from the backbone;
- the embedding scale (`sqrt(hidden_dim)`, all three) and the tied output head.

A model outside that (not a Gemma backbone, an untied head, a vision tower) is
refused by `check_scorable` with one line.
"""

from __future__ import annotations

from collections.abc import Sequence

from agile.backend import use_torch

use_torch()

import keras_hub  # noqa: E402
from keras import ops  # noqa: E402

# keras-hub's Gemma 2 is a `GemmaBackbone` with soft caps, post-norms and sliding windows.
STACKED_CACHE = (keras_hub.models.GemmaBackbone,)
PAIR_CACHE = (keras_hub.models.Gemma3Backbone,)


class UnsupportedModelError(TypeError):
    """The scorer cannot compute this model's label scores; the message says why."""


def check_scorable(backbone) -> None:
    """Refuse, with one line, a backbone whose label scores this module would get wrong."""
    kind = type(backbone).__name__
    if not isinstance(backbone, STACKED_CACHE + PAIR_CACHE):
        raise UnsupportedModelError(
            f"{kind} is not a Gemma backbone: agile scores Gemma, Gemma 2 and Gemma 3 models (keras-hub)"
        )
    if not getattr(backbone.token_embedding, "tie_weights", False):
        raise UnsupportedModelError(
            f"{kind} has an untied output head: agile reads label logits from the tied embedding"
        )
    if getattr(backbone, "vision_encoder", None) is not None:
        raise UnsupportedModelError(f"{kind} has a vision encoder: agile scores text-only Gemma presets")


def label_logits(model, token_ids, padding_mask, label_ids):
    """[batch, n_labels] logits of the label tokens at each row's next-token position.

    Differentiable: the trainer's label objective calls this under autograd.
    """
    hidden = model.backbone({"token_ids": token_ids, "padding_mask": padding_mask})
    last = ops.sum(ops.cast(padding_mask, "int32"), axis=1) - 1
    return label_head(model.backbone, hidden, last, label_ids)


def label_head(backbone, hidden, last, label_ids):
    """Logits of the label tokens from each row's final hidden state at position `last`."""
    rows = ops.take_along_axis(hidden, ops.reshape(last, (-1, 1, 1)), axis=1)[:, 0, :]
    weights = ops.take(backbone.token_embedding.embeddings, ops.convert_to_tensor(label_ids, "int32"), axis=0)
    logits = ops.matmul(ops.cast(rows, "float32"), ops.transpose(ops.cast(weights, "float32")))
    cap = backbone.final_logit_soft_cap
    return ops.tanh(logits / cap) * cap if cap else logits


def _embed(backbone, token_ids):
    x = backbone.token_embedding(ops.convert_to_tensor(token_ids, "int32"))
    return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)


def _to_block(backbone, keys, values):
    """One layer's cache in the layout its decoder block takes."""
    return ops.stack((keys, values), axis=1) if isinstance(backbone, STACKED_CACHE) else (keys, values)


def _from_block(backbone, cache):
    return (cache[:, 0, ...], cache[:, 1, ...]) if isinstance(backbone, STACKED_CACHE) else cache


def prefix_cache(backbone, prefix: Sequence[int]) -> list[tuple]:
    """Each layer's (keys, values) for the shared prefix alone, batch 1."""
    shape = (1, len(prefix), backbone.num_key_value_heads, backbone.head_dim)
    x = _embed(backbone, [list(prefix)])
    mask = ops.ones((1, len(prefix)), "bool")
    caches = []
    for layer in backbone.transformer_layers:
        empty = _to_block(backbone, ops.zeros(shape, x.dtype), ops.zeros(shape, x.dtype))
        x, cache = layer(x, padding_mask=mask, cache=empty, cache_update_index=0)
        caches.append(_from_block(backbone, cache))
    return caches


def suffix_label_logits(model, caches, token_ids, padding_mask, label_ids):
    """`label_logits` for rows given as the tokens that follow a cached prefix."""
    backbone = model.backbone
    batch, width = tuple(token_ids.shape)
    plen = int(caches[0][0].shape[1])
    padding_mask = ops.cast(padding_mask, "bool")
    mask = ops.concatenate([ops.ones((batch, plen), "bool"), padding_mask], axis=1)
    x = _embed(backbone, token_ids)
    for layer, (keys, values) in zip(backbone.transformer_layers, caches, strict=True):
        grow = (batch, width, *keys.shape[2:])
        keys, values = (
            ops.concatenate([ops.broadcast_to(t, (batch, *t.shape[1:])), ops.zeros(grow, t.dtype)], axis=1)
            for t in (keys, values)
        )
        x, _ = layer(x, padding_mask=mask, cache=_to_block(backbone, keys, values), cache_update_index=plen)
    hidden = backbone.layer_norm(x)
    last = ops.sum(ops.cast(padding_mask, "int32"), axis=1) - 1
    return label_head(backbone, hidden, last, label_ids)
