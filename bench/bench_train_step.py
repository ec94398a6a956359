"""Training cost per row: keras-hub's layers against the lean forward, random against length-sorted batches.

The embedded Gemma 3 270M, LoRA on --targets, the label objective, the first --rows ETHOS training
rows; each setting trains one whole epoch over them from the same start (after a few warm-up steps of
each engine on other rows, in the same process) and reports the epoch's seconds per row: what a round
of training costs, padding and all.

    python bench/bench_train_step.py --engines keras,lean --batch-sizes 2,8,16 --sorted 0,1
"""

from __future__ import annotations

import argparse
import itertools
import os

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="keras,lean")
    parser.add_argument("--batch-sizes", default="2,8,16")
    parser.add_argument("--sorted", default="0,1", help="1: rows of like length batched together; 0: at random")
    parser.add_argument("--rows", type=int, default=128, help="ETHOS training rows (the split's first N)")
    parser.add_argument("--targets", default="query,value", help="LoRA target layers")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--name", default="train-step", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    import numpy as np

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.trainer.data import ethos_split
    from agile.trainer.settings import TrainSettings
    from agile.trainer.train import train

    split = ethos_split()[0]
    examples, warm = split.head(args.rows), split.take(np.arange(len(split) - 16, len(split)), "warm-up")
    engines = args.engines.split(",")
    for engine in engines:
        train(load_model(), PromptTemplate(), warm, TrainSettings(engine=engine, batch_size=4, max_steps=3,
                                                                  compute_dtype="float32"))
    runs = []
    for engine, size, by_length in itertools.product(engines, map(int, args.batch_sizes.split(",")),
                                                      (s == "1" for s in args.sorted.split(","))):
        settings = TrainSettings(engine=engine, batch_size=size, sort_batches=by_length, epochs=1,
                                 compute_dtype="float32", target_layers=tuple(args.targets.split(",")))
        epoch = train(load_model(), PromptTemplate(), examples, settings).history[0]
        runs.append({"engine": engine, "batch": size, "sorted": by_length, "steps": epoch.steps,
                     "epoch_s": epoch.seconds, "ms_per_row": epoch.seconds / args.rows * 1000})
        print(f"{engine} batch {size} {'sorted' if by_length else 'random'}: {runs[-1]['ms_per_row']:.0f} ms a row",
              flush=True)
    common.print_table(["engine", "batch", "batches", "epoch s", "ms a row"],
                       [[r["engine"], r["batch"], "by length" if r["sorted"] else "random", r["epoch_s"],
                         r["ms_per_row"]] for r in runs])
    common.write_result(args.name, {"rows": args.rows, "targets": args.targets, "runs": runs}, "cpu")


if __name__ == "__main__":
    main()
