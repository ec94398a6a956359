"""Does reusing the shared instruction prefix's key/value cache pay?

Every prompt starts with the same tokens (BOS, instructions, labels, separator,
"Text:"). We run them once, keep each layer's keys and values, and then run only
each comment's own tokens, attending to the cached prefix through keras-hub's
Gemma 3 cache path (the one `generate()` uses). Compared with our plain
LabelScorer on the same comments, same batches, same process: time, the FLOPs
the prefix would have cost, and max |Δp| (the two must agree).

    python bench/bench_prefix.py --n 256
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix every row shares (SentencePiece may merge across the seam)."""
    first = rows[0]
    n = min(len(r) for r in rows) - 1  # leave at least one token per row to run
    for i in range(n):
        if any(r[i] != first[i] for r in rows):
            return i
    return n


def embed(backbone, token_ids):
    from keras import ops

    x = backbone.token_embedding(token_ids)
    return x * ops.cast(ops.sqrt(backbone.hidden_dim), x.dtype)


def prefix_cache(backbone, prefix: list[int]) -> list[tuple]:
    """Each layer's (key, value) for the prefix alone, batch 1: computed once per template."""
    from keras import ops

    shape = (1, len(prefix), backbone.num_key_value_heads, backbone.head_dim)
    x = embed(backbone, ops.convert_to_tensor([prefix], "int32"))
    mask = ops.ones((1, len(prefix)), "bool")
    caches = []
    for layer in backbone.transformer_layers:
        empty = (ops.zeros(shape, x.dtype), ops.zeros(shape, x.dtype))
        x, cache = layer(x, padding_mask=mask, cache=empty, cache_update_index=0)
        caches.append(cache)
    return caches


def suffix_label_logits(model, caches, rows: list[list[int]], label_ids, pad_id: int):
    """Label logits for rows given as their suffixes after the cached prefix."""
    from keras import ops

    from agile.scoring import pad_batch

    backbone = model.backbone
    ids, suffix_mask = pad_batch(rows, pad_id)
    batch, width = ids.shape
    plen = int(caches[0][0].shape[1])
    mask = np.concatenate([np.ones((batch, plen), dtype=bool), suffix_mask], axis=1)
    x = embed(backbone, ops.convert_to_tensor(ids))
    for layer, (key, value) in zip(backbone.transformer_layers, caches, strict=True):
        grow = (batch, width, *key.shape[2:])
        cache = tuple(ops.concatenate([ops.broadcast_to(t, (batch, *t.shape[1:])), ops.zeros(grow, t.dtype)], axis=1)
                      for t in (key, value))
        x, _ = layer(x, padding_mask=mask, cache=cache, cache_update_index=plen)
    hidden = backbone.layer_norm(x)
    last = ops.convert_to_tensor(suffix_mask.sum(axis=1) - 1, "int32")
    picked = ops.take_along_axis(hidden, ops.reshape(last, (-1, 1, 1)), axis=1)[:, 0, :]
    weights = ops.take(backbone.token_embedding.embeddings, ops.convert_to_tensor(label_ids, "int32"), axis=0)
    logits = ops.matmul(ops.cast(picked, "float32"), ops.transpose(ops.cast(weights, "float32")))
    cap = getattr(backbone, "final_logit_soft_cap", None)
    return ops.tanh(logits / cap) * cap if cap else logits


def score_with_prefix(model, caches, rows, plen: int, label_ids, pad_id: int, batch_size: int) -> np.ndarray:
    """LabelScorer.score's loop (sorted by length, dynamic padding), minus the shared prefix."""
    import torch
    from keras import ops

    order = np.argsort([len(r) for r in rows], kind="stable")
    probs = np.zeros((len(rows), len(label_ids)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            idx = order[start : start + batch_size]
            logits = suffix_label_logits(model, caches, [rows[i][plen:] for i in idx], label_ids, pad_id)
            probs[idx] = ops.convert_to_numpy(ops.softmax(logits, axis=-1))
    return probs


def padded_positions(lengths: np.ndarray, batch_size: int, skip: int = 0) -> int:
    order = np.argsort(lengths, kind="stable")
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return sum(len(b) * (int(lengths[b].max()) - skip) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    import torch

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.scoring import LabelScorer, ScoringSettings

    comments = common.ethos_comments(args.n)
    model = load_model(dtype=args.dtype)
    scorer = LabelScorer(model, PromptTemplate(), ScoringSettings(max_length=128, batch_size=args.batch_size))
    rows, _ = scorer.encode(comments)
    lengths = np.array([len(r) for r in rows])
    plen = common_prefix(rows)

    start = time.perf_counter()
    with torch.inference_mode():
        caches = prefix_cache(model.backbone, rows[0][:plen])
    cache_s = time.perf_counter() - start

    def cached():
        return score_with_prefix(model, caches, rows, plen, scorer.label_ids, scorer.tokenizer.pad_id,
                                 args.batch_size)

    t_full, full = common.timed(lambda: scorer.score(comments), args.repeats,
                                warmup=lambda: scorer.score(comments[: args.batch_size]))
    t_cached, probs = common.timed(cached, args.repeats)

    flop_per_token = 2 * common.non_embedding_params(model)
    full_pos = padded_positions(lengths, args.batch_size)
    cached_pos = padded_positions(lengths, args.batch_size, skip=plen)
    table = [
        ["full prompt (LabelScorer)", args.n / t_full, t_full, full_pos, flop_per_token * full_pos / 1e9, 1.0],
        [f"cached prefix ({plen} tokens)", args.n / t_cached, t_cached, cached_pos,
         flop_per_token * cached_pos / 1e9, t_full / t_cached],
    ]
    dp = float(np.abs(full.probs - probs).max())
    print(f"\n{args.n} ETHOS comments, mean {lengths.mean():.1f} tokens, shared prefix {plen} tokens "
          f"({plen / lengths.mean():.0%} of a mean row), batch {args.batch_size}, {args.dtype}, {args.device}\n")
    common.print_table(["method", "comments/s", "seconds", "positions run", "linear GFLOP", "speed-up"], table)
    print(f"\nprefix cache built once in {cache_s * 1000:.0f} ms; linear FLOPs saved: "
          f"{1 - cached_pos / full_pos:.0%}; max |p(full) - p(cached)| = {dp:.2e}")

    name = args.name or f"prefix-{args.device}-{args.dtype}-n{args.n}-bs{args.batch_size}"
    common.write_result(name, {
        "n": args.n, "batch_size": args.batch_size, "dtype": args.dtype, "prefix_tokens": plen,
        "mean_tokens": float(lengths.mean()), "cache_build_s": cache_s,
        "full": {"seconds": t_full, "comments_per_s": args.n / t_full, "positions": full_pos},
        "cached": {"seconds": t_cached, "comments_per_s": args.n / t_cached, "positions": cached_pos},
        "speedup": t_full / t_cached, "flops_saved": 1 - cached_pos / full_pos, "max_abs_dp": dp,
    }, args.device)


if __name__ == "__main__":
    main()
