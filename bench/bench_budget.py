"""Token-budget batching: the same comments scored at several budgets (positions per forward pass), interleaved.

Rows are sorted by length; a pass takes rows until rows x padded width would pass the
budget (or `--batch-size` rows). Budget 0 is the old rule, `--batch-size` rows a pass.
Each budget is warmed up on the full set, then the budgets run `--repeats` rounds
interleaved; the median comments/s is reported with the passes and positions computed.

    python bench/bench_budget.py --n 256 --threads 1 --budgets 0,256,512,1024,2048 --batch-size 256
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_common_args(parser, batch_size=256)
    parser.set_defaults(repeats=3)
    parser.add_argument("--budgets", default="0,256,512,1024,2048", help="token budgets; 0: 16 rows a pass")
    args = parser.parse_args()
    common.setup(args.device, args.threads)

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.scoring import LabelScorer

    comments = common.ethos_comments(args.n)
    model = load_model(dtype=args.dtype)
    budgets = [int(b) for b in args.budgets.split(",")]
    scorers = {b: LabelScorer(model, PromptTemplate(), common.scoring_settings(
        args, token_budget=b, batch_size=args.batch_size if b else 16)) for b in budgets}
    rows, _ = scorers[budgets[0]].encode(comments)
    times: dict[int, list[float]] = {}
    probs = {b: s.score(comments).probs for b, s in scorers.items()}  # warm-up
    for _ in range(args.repeats):
        for b, scorer in scorers.items():
            common.sync()
            start = time.perf_counter()
            scorer.score(comments)
            common.sync()
            times.setdefault(b, []).append(time.perf_counter() - start)
    results = {}
    for b, ts in times.items():
        pos = common.computed_positions(scorers[b], rows)
        results[b] = {"seconds": float(np.median(ts)), "all_seconds": ts, "comments_per_s": args.n / np.median(ts),
                      "passes": pos["passes"], "positions_computed": pos["computed"],
                      "max_abs_dp_vs_first": float(np.abs(probs[b] - probs[budgets[0]]).max())}
    print(f"\n{args.n} ETHOS comments, {args.engine} forward, {args.dtype}, {args.device}, {args.threads} threads, "
          f"median of {args.repeats} interleaved\n")
    common.print_table(["token budget", "comments/s", "seconds", "passes", "positions computed", "max |Δp|"],
                       [[b if b else "off (16 rows)", r["comments_per_s"], r["seconds"], r["passes"],
                         r["positions_computed"], f"{r['max_abs_dp_vs_first']:.1e}"] for b, r in results.items()])
    common.write_result(args.name or f"budget-{args.device}-{args.dtype}-n{args.n}-t{args.threads}",
                        {"n": args.n, "results": {str(b): r for b, r in results.items()}}, args.device)


if __name__ == "__main__":
    main()
