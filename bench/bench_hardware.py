"""The hardware limit and the precision choice: dense matmul GFLOP/s, then scoring in each dtype.

Part 1 measures what the chip can do: dense matmuls in float32 and bfloat16, at a
square size (2048 on CPU, 8192 on GPU) and at the model's own shapes (a batch of 16 x 64 tokens through
Gemma 3 270M's 640 -> 2048 and 2048 -> 640 projections). Part 2 scores the same
comments with our LabelScorer in each dtype and reports speed, model FLOPs
utilisation against that dtype's measured peak, and how far the probabilities
move from float32.

    python bench/bench_hardware.py --n 256
    python bench/bench_hardware.py --device cuda --n 1024 --batch-size 128
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

# bfloat16 becomes the suggested default only if it is clearly faster and moves no score visibly.
MIN_SPEEDUP, MAX_DP = 1.2, 0.01
MODEL_SHAPES = {"model 1024x640 @ 640x2048": (1024, 640, 2048), "model 1024x2048 @ 2048x640": (1024, 2048, 640)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, dtype=False)
    parser.add_argument("--dtypes", default="float32,bfloat16", help="dtypes to score in; the first is the baseline")
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    import keras

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.scoring import LabelScorer

    size = common.peak_size(args.device)
    shapes = {f"square {size}": (size, size, size), **MODEL_SHAPES}
    matmul = {shape: {dt: common.matmul_gflops(dt, args.device, *dims) for dt in ("float32", "bfloat16")}
              for shape, dims in shapes.items()}
    print(f"dense matmul, {args.device}, {args.threads} threads (GFLOP/s, best of ~1 s)\n")
    common.print_table(["shape", "float32", "bfloat16", "bf16 / fp32"],
                       [[s, g["float32"], g["bfloat16"], g["bfloat16"] / g["float32"]] for s, g in matmul.items()])
    peak = {dt: max(g[dt] for g in matmul.values()) for dt in ("float32", "bfloat16")}

    comments = common.ethos_comments(args.n)
    dtypes = args.dtypes.split(",")
    runs: dict[str, dict] = {}
    probs: dict[str, np.ndarray] = {}
    for dtype in dtypes:
        start = time.perf_counter()
        model = load_model(dtype=dtype)
        load_s = time.perf_counter() - start
        scorer = LabelScorer(model, PromptTemplate(), common.scoring_settings(args))
        seconds, scores = common.timed(lambda scorer=scorer: scorer.score(comments), args.repeats,
                                       warmup=lambda scorer=scorer: scorer.score(comments[: args.batch_size]))
        tokens = int(scores.n_tokens.sum())
        # positions actually computed (padding in, the shared prefix once): MFU cannot pass 100%
        flops = common.scorer_flops(scorer, scorer.encode(comments)[0])
        # mixed_bfloat16 computes in bfloat16, so its ceiling is the bfloat16 one.
        ceiling = peak["float32" if dtype == "float32" else "bfloat16"]  # float16 runs at the bf16 rate
        probs[dtype] = scores.probs
        runs[dtype] = {"seconds": seconds, "comments_per_s": args.n / seconds, "real_tokens_per_s": tokens / seconds,
                       "achieved_gflops": flops / seconds / 1e9, "mfu": flops / seconds / (ceiling * 1e9),
                       "load_s": load_s}
        common.Peak.check(f"the {dtype} MFU", runs[dtype]["mfu"])
        del model, scorer
        keras.backend.clear_session()

    base = dtypes[0]
    for dtype in dtypes:
        diff = np.abs(probs[dtype] - probs[base])
        flips = (probs[dtype][:, 0] > 0.5) != (probs[base][:, 0] > 0.5)
        runs[dtype].update(max_abs_dp=float(diff.max()), mean_abs_dp=float(diff.mean()), flips_at_half=int(flips.sum()))

    print(f"\nscoring {args.n} ETHOS comments, batch {args.batch_size}, {args.device}: our LabelScorer per dtype\n")
    common.print_table(
        ["dtype", "comments/s", "real tokens/s", "GFLOP/s", "MFU (own dtype peak)", f"speed-up vs {base}",
         f"max abs Δp vs {base}", "label flips at 0.5"],
        [[dt, r["comments_per_s"], r["real_tokens_per_s"], r["achieved_gflops"], f"{r['mfu']:.1%}",
          runs[base]["seconds"] / r["seconds"], f"{r['max_abs_dp']:.2e}",
          r["flips_at_half"]] for dt, r in runs.items()])

    candidates = [dt for dt in dtypes if runs[base]["seconds"] / runs[dt]["seconds"] >= MIN_SPEEDUP
                  and runs[dt]["max_abs_dp"] <= MAX_DP]
    choice = max(candidates, key=lambda dt: runs[dt]["comments_per_s"]) if candidates else base
    print(f"\nsuggested default on this machine: {choice} (rule: >= {MIN_SPEEDUP}x faster than {base} "
          f"and max |Δp| <= {MAX_DP}, else {base})")

    name = args.name or f"hardware-{args.device}-n{args.n}-bs{args.batch_size}"
    common.write_result(name, {"n": args.n, "batch_size": args.batch_size, "matmul_gflops": matmul,
                               "peak_gflops": peak, "scoring": runs, "suggested_default": choice}, args.device)


if __name__ == "__main__":
    main()
