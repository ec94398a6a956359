"""Training cost per row: keras-hub's layers against the lean forward, random against length-sorted batches,
LoRA on every block against the last few only (the blocks below run once a training, not every step).

The embedded Gemma 3 270M, LoRA on --targets, the label objective, the first --rows ETHOS training
rows; each setting trains --epochs whole epochs over them from the same start (after a few warm-up steps
of each engine on other rows, in the same process) and reports each epoch's seconds per row: what a round
of training costs, padding and all (with --lora-blocks, the first epoch also runs the frozen blocks once).

    python bench/bench_train_step.py --engines keras,lean --batch-sizes 2,8,16 --sorted 0,1
    python bench/bench_train_step.py --engines lean --batch-sizes 2,16 --lora-blocks 0,6,3 --targets all --epochs 2
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
    parser.add_argument("--targets", default="query,value", help="LoRA target layers, or 'all'")
    parser.add_argument("--lora-blocks", default="0", help="LoRA on the last N blocks (0: every block), a list")
    parser.add_argument("--epochs", type=int, default=1, help="epochs a setting (each timed)")
    parser.add_argument("--compute-dtypes", default="float32",
                        help="forward dtypes, a list: float32, bfloat16 (autocast; fast only with native bfloat16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--name", default="train-step", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    import numpy as np

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.trainer.data import ethos_split
    from agile.trainer.settings import ALL_TARGETS, TrainSettings
    from agile.trainer.train import train

    split = ethos_split()[0]
    examples, warm = split.head(args.rows), split.take(np.arange(len(split) - 16, len(split)), "warm-up")
    engines = args.engines.split(",")
    for engine in engines:
        for dtype in args.compute_dtypes.split(","):
            train(load_model(), PromptTemplate(), warm, TrainSettings(engine=engine, batch_size=4, max_steps=3,
                                                                      compute_dtype=dtype))
    targets = ALL_TARGETS if args.targets == "all" else tuple(args.targets.split(","))
    runs = []
    for engine, size, by_length, blocks, dtype in itertools.product(
            engines, map(int, args.batch_sizes.split(",")), (s == "1" for s in args.sorted.split(",")),
            map(int, args.lora_blocks.split(",")), args.compute_dtypes.split(",")):
        settings = TrainSettings(engine=engine, batch_size=size, sort_batches=by_length, epochs=args.epochs,
                                 compute_dtype=dtype, target_layers=targets, lora_blocks=blocks)
        history = train(load_model(), PromptTemplate(), examples, settings).history
        runs.append({"engine": engine, "batch": size, "sorted": by_length, "lora_blocks": blocks, "dtype": dtype,
                     "steps": history[0].steps, "epoch_s": [e.seconds for e in history],
                     "ms_per_row": [e.seconds / args.rows * 1000 for e in history]})
        print(f"{engine} {dtype} batch {size} {'sorted' if by_length else 'random'} LoRA blocks {blocks or 'all'}: "
              + " / ".join(f"{ms:.0f}" for ms in runs[-1]["ms_per_row"]) + " ms a row an epoch", flush=True)
    common.print_table(["engine", "dtype", "batch", "batches", "LoRA blocks", "ms a row, epoch by epoch"],
                       [[r["engine"], r["dtype"], r["batch"], "by length" if r["sorted"] else "random",
                         r["lora_blocks"] or "all",
                         " / ".join(f"{ms:.0f}" for ms in r["ms_per_row"])] for r in runs])
    common.write_result(args.name, {"rows": args.rows, "targets": list(targets), "epochs": args.epochs,
                                    "runs": runs}, "cpu")


if __name__ == "__main__":
    main()
