"""What the frozen-block store saves a round: the blocks below the LoRA'd ones run over a round's rows,
against the same rows read back from the file the last run left (trainer/frozen_store.py).

The embedded Gemma 3 270M, LoRA on every projection of the last --lora-blocks blocks, the first --rows
ETHOS training rows (the codelab's prompt): one pass that computes every row and writes the store, then
one that reads them all back, each timed from the store's opening to the last row in hand.

With `--pool-adapter DIR` (a policy with LoRA on its last blocks, e.g. `agile train --quick`'s), also
what `agile suggest` spends scoring those rows as a pool: the whole model (the product's scorer),
the frozen blocks computed into the pool's store, and read back from it, the model's load included
in each, and how far the store's probabilities are from the scorer's.

    python bench/bench_frozen_store.py --rows 300 --lora-blocks 6
    python bench/bench_frozen_store.py --rows 700 --pool-adapter my-hate --name frozen-store-pool
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import common


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=300, help="ETHOS training rows (the split's first N)")
    parser.add_argument("--lora-blocks", type=int, default=6, help="LoRA on the last N blocks")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--pool-adapter", default=None, help="also time suggest's pool scoring with this policy")
    parser.add_argument("--name", default="frozen-store", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    from agile.models import load_model
    from agile.prompt import PromptTemplate
    from agile.tokens import PromptTokenizer
    from agile.trainer.data import ethos_split
    from agile.trainer.settings import ALL_TARGETS, TrainSettings
    from agile.trainer.train import LeanLabelLoss, enable_lora, encode_rows, frozen_blocks, frozen_store

    model, template = load_model(), PromptTemplate()
    settings = TrainSettings(target_layers=ALL_TARGETS, lora_blocks=args.lora_blocks, compute_dtype="float32")
    enable_lora(model, settings.rank, settings.target_layers, settings.lora_blocks)
    tokenizer = PromptTokenizer.from_model(model)
    rows = encode_rows(model, template, ethos_split()[0].head(args.rows), settings)
    home = Path(tempfile.mkdtemp(prefix="agile-store-"))
    passes = []
    for what in ("computed and written", "read back"):
        started = time.perf_counter()
        store = frozen_store(model, template, settings, home)
        lean = LeanLabelLoss(model, tokenizer, template, tokenizer.label_ids(template.labels), rows,
                             frozen_blocks(model, settings), store=store)
        lean._hidden_below("cpu")
        store.save()
        passes.append({"pass": what, "seconds": round(time.perf_counter() - started, 3), "read": store.read,
                       "computed": store.computed, "file_mb": round(store.path.stat().st_size / 2**20, 1)})
    common.print_table(["pass", "seconds", "rows read", "rows computed", "file MB"],
                       [[p["pass"], p["seconds"], p["read"], p["computed"], p["file_mb"]] for p in passes])
    pool = pooled(args.pool_adapter, ethos_split()[0].head(args.rows).texts) if args.pool_adapter else None
    common.write_result(args.name, {"rows": args.rows, "tokens": sum(map(len, rows)),
                                    "lora_blocks": args.lora_blocks, "passes": passes, "pool": pool}, "cpu")


def pooled(adapter: str, texts: list[str]) -> list[dict]:
    """`agile suggest`'s scoring of `texts` as one pool: the whole model, then the store computed and read back."""
    import numpy as np

    from agile.adapters import find_adapter, load_adapter
    from agile.policy import Policy
    from agile.tables import Chunk
    from agile.trainer.suggest import scored_pool

    policy = Policy.from_adapter(load_adapter(find_adapter(adapter)))
    home, found, runs = Path(tempfile.mkdtemp(prefix="agile-pool-")), {}, []
    for what, where in (("whole model (scorer)", None), ("store: computed", home), ("store: read back", home)):
        started, notes = time.perf_counter(), []
        chunks = iter([Chunk(0, [str(i) for i in range(len(texts))], list(texts))])
        found[what] = np.concatenate([p for _, p in scored_pool(policy, chunks, None, None, where, notes=notes)])
        runs.append({"scoring": what, "seconds": round(time.perf_counter() - started, 2), "said": notes,
                     "max_abs_dp_vs_scorer": float(np.nanmax(np.abs(found[what] - found["whole model (scorer)"])))})
    common.print_table(["pool scoring", "seconds (model load included)", "max |Δp| vs scorer"],
                       [[r["scoring"], r["seconds"], r["max_abs_dp_vs_scorer"]] for r in runs])
    return runs


if __name__ == "__main__":
    main()
