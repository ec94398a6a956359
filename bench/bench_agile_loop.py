"""Does the agile loop pay? Rounds of labels chosen by `agile suggest` against labels chosen at random.

ETHOS's 800 training rows are the unlabelled pool, their labels the oracle; the codelab's 198 test
rows are scored once per round. Each seed draws one start of `--start` rows (shared by both
strategies, and its round-1 adapter trained once); then each round adds `--per-round` labels,
chosen by the strategy from the rows not yet labelled, and continues training from the last
round's adapter (`agile train --init`, the parent's rows included). Nothing is chosen on the test
rows: epochs, threshold and calibration come from validation rows carved from the labelled ones.

`--holdout N` is for choosing the loop's own settings (`--explore`): each seed carves N rows from the
pool (stratified by label), scores every round on them instead, and never reads the test split. Several
shares in one run (`--explore 0,0.25,0.5`) share the round-1 adapter.

    OMP_NUM_THREADS=2 python bench/bench_agile_loop.py --seeds 1234,1235,1236 --name agile-loop
    python bench/bench_agile_loop.py --holdout 200 --explore 0,0.25,0.5,0.75 --name agile-loop-choose
    python bench/bench_agile_loop.py --model PRESET_DIR --rounds 1 --per-round 8 --start 40 --name dry-run
    python bench/bench_agile_loop.py --merge bench/results/agile-loop-s*.json --name agile-loop-3-seeds
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import common
import numpy as np

STRATEGIES = ("suggest", "random")


def write_rows(path: Path, texts: list[str], labels: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(zip(texts, labels, strict=True))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1234", help="comma-separated seeds (the start rows and training)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--start", type=int, default=100, help="labels in round 1")
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=4, help="rounds after the first")
    parser.add_argument("--epochs", type=int, default=3, help="the most epochs per round (early stopping)")
    parser.add_argument("--batch-size", type=int, default=2, help="rows a training step (2: the codelab's)")
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--lora-blocks", type=int, default=0, help="LoRA on the last N blocks (0: every block)")
    parser.add_argument("--explore", default="0.5",
                        help="suggest's random share (agile suggest --explore; 0: uncertainty and diversity alone); "
                             "comma-separated shares are run side by side from the same start")
    parser.add_argument("--holdout", type=int, default=0,
                        help="score each round on N rows carved from the pool (stratified, per seed) instead of "
                             "the codelab's test split, which is then never read: for choosing --explore")
    parser.add_argument("--compute-dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                        help="agile train --compute-dtype (auto: bfloat16 autocast where the CPU has it)")
    parser.add_argument("--model", default="gemma3_270m")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--name", default="agile-loop", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--merge", nargs="+", metavar="RESULT", help="merge earlier runs' results into --name")
    args = parser.parse_args()
    if args.merge:
        return merge(args.name, args.merge)
    shares = strategy_shares(args.strategies, args.explore)
    if shares is None:
        parser.error(f"--explore takes shares from 0 to 1, comma-separated, got {args.explore!r}")
    common.setup("cpu", args.threads)

    from agile.adapters import load_adapter
    from agile.policy import Policy
    from agile.prompt import DEFAULT_LABELS, PromptTemplate
    from agile.settings import HomeSettings
    from agile.tables import Chunk
    from agile.trainer import suggest
    from agile.trainer.data import load_examples
    from agile.trainer.run import TrainRun, run_training
    from agile.trainer.settings import ALL_TARGETS, TrainSettings

    pool = load_examples("ethos", DEFAULT_LABELS, "train")
    words = [DEFAULT_LABELS[i] for i in pool.labels]
    settings = TrainSettings(learning_rate=args.learning_rate, target_layers=ALL_TARGETS, epochs=args.epochs,
                             patience=1, compute_dtype=args.compute_dtype, max_length=args.max_length,
                             batch_size=args.batch_size, lora_blocks=args.lora_blocks)
    template = PromptTemplate(DEFAULT_LABELS)
    work = Path(tempfile.mkdtemp(prefix="agile-loop-"))
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {s: {} for s in shares}
    seconds: dict[str, float] = dict.fromkeys(curves, 0.0)
    trainings: list[dict] = []  # each training run: its rows and seconds
    home = HomeSettings.from_env().home_dir  # where agile train and suggest keep the frozen blocks' output

    def rows_file(name: str, rows: np.ndarray) -> str:
        return str(write_rows(work / f"{name}.csv", [pool.texts[i] for i in rows], [words[i] for i in rows]))

    def train(seed: int, tag: str, rows: np.ndarray, parent: Path | None, scored_on: str) -> tuple[Path, float]:
        run = TrainRun(data=rows_file(tag, rows), template=template, positive_label=DEFAULT_LABELS[1],
                       settings=TrainSettings(**{**settings.__dict__, "seed": seed}), out=work / tag,
                       model=args.model, test=scored_on, init=str(parent) if parent else None)
        started = time.perf_counter()
        out = run_training(run)
        took = time.perf_counter() - started
        trainings.append({"tag": tag, "labels": len(rows), "seconds": round(took, 1)})
        return out, took

    for seed in (int(s) for s in args.seeds.split(",")):
        rng = np.random.default_rng(seed)
        usable, scored_on = np.arange(len(pool)), "ethos"
        if args.holdout:
            from sklearn.model_selection import train_test_split

            usable, held = train_test_split(usable, test_size=args.holdout, stratify=pool.labels, random_state=seed)
            usable.sort()
            scored_on = rows_file(f"s{seed}-holdout", held)
        start = usable[rng.choice(len(usable), size=args.start, replace=False)]
        first, first_s = train(seed, f"s{seed}-r1", start, None, scored_on)
        first_auc = load_adapter(first).meta.rounds[-1]["test_roc_auc"]
        for strategy in curves:
            curves[strategy][seed] = [(args.start, first_auc)]
            labelled, parent = set(start.tolist()), first
            seconds[strategy] += first_s
            for r in range(2, args.rounds + 2):
                left = np.array(sorted(set(usable.tolist()) - labelled))
                t0 = time.perf_counter()
                if strategy == "random":
                    chosen = rng.choice(left, size=args.per_round, replace=False)
                else:
                    policy = Policy.from_adapter(load_adapter(parent))
                    chunks = iter([Chunk(0, [str(i) for i in left], [pool.texts[i] for i in left])])
                    scored = suggest.scored_pool(policy, chunks, args.model, None, home)  # the pool's store, too
                    picked, _ = suggest.suggest(policy, scored, args.per_round, seed, explore=shares[strategy])
                    chosen = np.array([int(i) for i in picked.ids])
                labelled |= set(chosen.tolist())
                tag = strategy.replace(" --explore ", "-e")
                parent, train_s = train(seed, f"s{seed}-{tag}-r{r}", chosen, parent, scored_on)
                seconds[strategy] += time.perf_counter() - t0
                auc = load_adapter(parent).meta.rounds[-1]["test_roc_auc"]
                curves[strategy][seed].append((len(labelled), auc))
                print(f"seed {seed} {strategy} round {r}: {len(labelled)} labels, {metric(vars(args))} {auc:.4f} "
                      f"({train_s:.0f} s training)", flush=True)

    report(args.name, vars(args), {strategy: ([n for n, _ in next(iter(by_seed.values()))],
                                              np.array([[auc for _, auc in c] for c in by_seed.values()]),
                                              seconds[strategy]) for strategy, by_seed in curves.items()},
           trainings)


def strategy_shares(strategies: str, explore: str) -> dict[str, float | None] | None:
    """Each curve's name and its --explore share (random's: None); `suggest` keeps its plain name when one
    share is run, else one curve per share. None when a share is not a number from 0 to 1."""
    try:
        explores = [float(e) for e in explore.split(",")]
    except ValueError:
        return None
    if not all(0.0 <= e <= 1.0 for e in explores):
        return None
    named: dict[str, float | None] = {}
    for strategy in strategies.split(","):
        for e in explores if strategy == "suggest" else [None]:
            named[f"suggest --explore {e:g}" if e is not None and len(explores) > 1 else strategy] = e
    return named


def metric(settings: dict) -> str:
    """What a round is scored on: the codelab's test split, or the rows --holdout carved from the pool."""
    return f"holdout ({settings['holdout']} rows) ROC-AUC" if settings.get("holdout") else "test ROC-AUC"


def report(name: str, settings: dict, found: dict[str, tuple[list[int], np.ndarray, float]],
           trainings: list[dict] | None = None) -> None:
    """The table, the learning-curve plot and the results file: per strategy, (labels, AUCs [seeds, rounds], s).
    `after_start` is each strategy's mean over the rounds after the shared start (and seeds): the area under
    its learning curve, the one number to choose a setting by."""
    rows, summary = [], {}
    for strategy, (labels, aucs, seconds) in found.items():
        std = aucs.std(axis=0, ddof=1) if len(aucs) > 1 else np.zeros(aucs.shape[1])
        summary[strategy] = {"labels": labels, "mean": aucs.mean(axis=0).round(4).tolist(),
                             "std": std.round(4).tolist(), "per_seed": aucs.round(4).tolist(),
                             "after_start": round(float(aucs[:, 1:].mean()), 4), "seconds": round(seconds, 1)}
        rows += [[strategy, n, f"{m:.3f} ± {s:.3f}"] for n, m, s in zip(labels, summary[strategy]["mean"],
                                                                         summary[strategy]["std"], strict=True)]
        rows.append([strategy, "rounds after the start", f"{summary[strategy]['after_start']:.4f}"])
    common.print_table(["strategy", "labels", f"{metric(settings)} (mean ± sample sd over seeds)"], rows)
    plot = common.RESULTS / f"{name}.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for strategy, curve in summary.items():
        ax.errorbar(curve["labels"], curve["mean"], yerr=curve["std"], marker="o", capsize=3, label=strategy)
    ax.set_xlabel("labels")
    ax.set_ylabel(metric(settings))
    ax.set_title(f"ETHOS, {len(next(iter(found.values()))[1])} seed(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    common.write_result(name, {"settings": settings, "curves": summary, "trainings": trainings or [],
                                "plot": str(plot.relative_to(common.ROOT))}, "cpu")


def merge(name: str, paths: list[str]) -> None:
    """One table and plot over earlier runs (a long loop is best run seed by seed): each strategy's seeds
    joined; `suggest` run with --explore is its own curve, so runs of either rule can be set side by side."""
    import json

    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({r["settings"].get("holdout") or 0 for r in runs}) > 1:
        raise SystemExit("--merge: some runs were scored on --holdout rows and some on the test split")
    joined: dict[str, tuple[list[int], list, float]] = {}
    for run in runs:
        for strategy, curve in run["curves"].items():
            key = strategy  # a run of several shares names each curve by its share already
            if strategy == "suggest" and float(run["settings"].get("explore") or 0):
                key = f"suggest --explore {float(run['settings']['explore']):g}"
            labels, rows, seconds = joined.get(key, (curve["labels"], [], 0.0))
            if curve["labels"] != labels:
                raise SystemExit(f"--merge: the runs' {key} rounds differ; merge runs of the same settings")
            joined[key] = (labels, rows + curve["per_seed"], seconds + curve["seconds"])
    found = {key: (labels, np.array(rows), seconds) for key, (labels, rows, seconds) in joined.items()}
    seeds = ",".join(dict.fromkeys(r["settings"]["seeds"] for r in runs))  # a seed split over runs, once
    report(name, {**runs[0]["settings"], "seeds": seeds, "name": name, "merged": list(paths)}, found,
           [t for r in runs for t in r.get("trainings", [])])

if __name__ == "__main__":
    main()
