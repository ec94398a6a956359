"""Does reusing the shared instruction prefix's key/value cache pay?

Every prompt starts with the same tokens (BOS, instructions, labels, separator,
"Text:"). `LabelScorer` (with `reuse_prefix`, the default) runs them once per
call, keeps each layer's keys and values, and runs only each comment's own
tokens. This compares it with the same scorer running whole prompts, same
comments, same batches, same process: time, positions computed (the prefix once
included), and max |Δp|.

    python bench/bench_prefix.py --n 256
"""

from __future__ import annotations

import argparse

import common
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser)
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.scoring import LabelScorer

    comments = common.ethos_comments(args.n)
    model = load_model(dtype=args.dtype)
    scorers = {
        reuse: LabelScorer(model, PromptTemplate(), common.scoring_settings(args, reuse_prefix=reuse))
        for reuse in (False, True)
    }
    rows, _ = scorers[True].encode(comments)
    lengths = np.array([len(r) for r in rows])
    plen = len(scorers[True].shared_prefix())
    full_pos = common.computed_positions(scorers[False], rows)["computed"]
    cached_pos = common.computed_positions(scorers[True], rows)["computed"]

    runs = {}
    for reuse, scorer in scorers.items():
        runs[reuse] = common.timed(lambda s=scorer: s.score(comments), args.repeats,
                                   warmup=lambda s=scorer: s.score(comments[: args.batch_size]))
    (t_full, full), (t_cached, cached) = runs[False], runs[True]

    full_flops, cached_flops = (common.scorer_flops(scorers[reuse], rows) for reuse in (False, True))
    table = [
        ["whole prompts", args.n / t_full, t_full, full_pos, full_flops / 1e9, 1.0],
        [f"shared prefix reused ({plen} tokens)", args.n / t_cached, t_cached, cached_pos,
         cached_flops / 1e9, t_full / t_cached],
    ]
    dp = float(np.abs(full.probs - cached.probs).max())
    print(f"\n{args.n} ETHOS comments, mean {lengths.mean():.1f} tokens, shared prefix {plen} tokens "
          f"({plen / lengths.mean():.0%} of a mean row), batch {args.batch_size}, {args.dtype}, {args.device}\n")
    common.print_table(["method", "comments/s", "seconds", "positions run", "linear GFLOP", "speed-up"], table)
    print(f"\nlinear FLOPs saved: {1 - cached_flops / full_flops:.0%}; max |p(whole) - p(reused)| = {dp:.2e}")

    name = args.name or f"prefix-{args.device}-{args.dtype}-n{args.n}-bs{args.batch_size}"
    common.write_result(name, {
        "n": args.n, "batch_size": args.batch_size, "dtype": args.dtype, "prefix_tokens": plen,
        "mean_tokens": float(lengths.mean()),
        "full": {"seconds": t_full, "comments_per_s": args.n / t_full, "positions": full_pos},
        "cached": {"seconds": t_cached, "comments_per_s": args.n / t_cached, "positions": cached_pos},
        "speedup": t_full / t_cached, "flops_saved": 1 - cached_flops / full_flops, "max_abs_dp": dp,
    }, args.device)


if __name__ == "__main__":
    main()
