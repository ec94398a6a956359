"""`agile train`, `evaluate`, `calibrate` and `sweep`: their flags, parsed into calls of the trainer's modules.

Heavy imports (torch, keras) happen inside the commands, so `agile --help` stays fast.
Bad input ends in one `agile <command>: error: ...` line and exit code 2, and
nothing half-written is left behind (adapters and reports are written atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from agile.prompt import DEFAULT_EOS, DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, DEFAULT_SEPARATOR, PromptTemplate
from agile.trainer.settings import ALL_TARGETS, COMPUTE_DTYPES, OBJECTIVES, QUICK, TrainSettings

DEFAULT_MODEL = "gemma3_270m"


def _csv(kind):
    return lambda text: [kind(x) for x in text.split(",") if x.strip()]


def _add_data_args(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    p.add_argument("--data", default=default, help=f"{what}: 'ethos' (the codelab's split), "
                   "'ethos:ATTRIBUTE' (one attribute of the multi-label file, e.g. ethos:violence) or a "
                   "CSV / JSONL / Parquet file with a text and a label column" +
                   (f" (default: {default})" if default else ""))
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label",
                   help="label words, or integers 0..n-1 indexing --labels")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", type=_csv(str), default=None,
                   help="label words, each one token (default: Positive,Negative; for ETHOS the "
                   "second word means hateful)")
    p.add_argument("--positive-label", default=None,
                   help="the label whose probability is the flag score (default: the second label)")
    p.add_argument("--instructions", default=DEFAULT_INSTRUCTIONS)
    p.add_argument("--separator", default=DEFAULT_SEPARATOR)


def _add_calibration_args(p: argparse.ArgumentParser) -> None:
    from agile.calibration import AUTO, METHODS

    p.add_argument("--calibration", choices=(AUTO, *METHODS), default=AUTO,
                   help="how p(positive label) is calibrated on the validation rows (default: auto, the one "
                   "of identity/temperature/platt with the lowest held-out log loss on them; isotonic needs "
                   "1000+ validation rows; identity = none)")


def _add_settings_args(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    """The training settings' flags. Those a recipe sets default to None, so `_settings` knows what was given."""
    d = TrainSettings()
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: the embedded Gemma 3 270M)")
    p.add_argument("--objective", choices=OBJECTIVES, default=None, help=f"default: {d.objective}")
    p.add_argument("--rank", type=int, default=None, help=f"LoRA rank (default {d.rank})")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"Adam learning rate (default {d.learning_rate:g})")
    p.add_argument("--batch-size", type=int, default=None, help=f"rows a step (default {d.batch_size})")
    p.add_argument("--max-length", type=int, default=None, help=f"tokens per training row (default {d.max_length})")
    if sweep:
        p.add_argument("--epochs", type=_csv(int), default=[4, 6, 8, 10], help="epochs to score at")
    else:
        p.add_argument("--epochs", type=int, default=None, help=f"the most epochs (default {d.epochs}; early stopping)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lora-targets", default=None,
                   help=f"layer names, or 'all' = {','.join(ALL_TARGETS)} (default: {','.join(d.target_layers)})")
    p.add_argument("--lora-blocks", type=int, default=None, metavar="N",
                   help="LoRA on the last N decoder blocks only (default 0: every block); the blocks below "
                   "stay frozen, and their output for each row is computed once, not every step (faster rounds)")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=d.compute_dtype,
                   help="dtype of the forward pass (LoRA weights stay float32); auto = bfloat16 on a GPU "
                   "or a CPU with native bfloat16, float32 elsewhere")
    if not sweep:
        p.add_argument("--patience", type=int, default=None,
                       help=f"stop after N epochs without a better validation ROC-AUC (default {d.patience}: "
                       "run all)")
        p.add_argument("--quick", action="store_true",
                       help=f"the agile loop's one-minute round: LoRA on every projection of the last "
                       f"{QUICK.lora_blocks} blocks, batches of {QUICK.batch_size}, Adam {QUICK.learning_rate:g}, "
                       f"at most {QUICK.epochs} epochs, --patience {QUICK.patience} (flags given as well win; "
                       "with --init the parent's LoRA layout is kept)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps (timing runs)")
    p.add_argument("--random-batches", dest="sort_batches", action="store_false",
                   help="batches of rows in random order, as before 2026-12-07 (default: rows of like length "
                        "together, less padding); reproduces earlier runs of the same seed")


RECIPE = ("objective", "rank", "learning_rate", "batch_size", "max_length", "epochs", "patience", "target_layers",
          "lora_blocks")
LAYOUT = ("rank", "target_layers", "lora_blocks", "max_length", "objective")  # what --init takes from the parent


def _flag(field: str) -> str:
    """A TrainSettings field's attribute on the parsed arguments."""
    return "lora_targets" if field == "target_layers" else field


def _given(args) -> dict:
    """The TrainSettings fields a recipe (--quick) sets that a flag on the command line gave."""
    given = {field: getattr(args, _flag(field), None) for field in RECIPE}  # a sweep has no --patience
    given = {field: value for field, value in given.items() if value is not None}
    if isinstance(given.get("epochs"), list):  # a sweep's epochs to score at: it trains to the most
        given["epochs"] = max(given["epochs"])
    if "target_layers" in given:
        targets = given["target_layers"]
        given["target_layers"] = ALL_TARGETS if targets == "all" else tuple(_csv(str)(targets))
    return given


def _settings(args) -> TrainSettings:
    """The run's settings: the flags given, then the recipe's (--quick) or the codelab's defaults."""
    base = QUICK if getattr(args, "quick", False) else TrainSettings()
    return replace(base, **_given(args), seed=args.seed, compute_dtype=args.compute_dtype,
                   max_steps=args.max_steps, sort_batches=args.sort_batches)


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a threshold lies strictly between 0 and 1, got {text}")
    return value


def _template(args) -> tuple[PromptTemplate, str]:
    template = PromptTemplate(tuple(args.labels or DEFAULT_LABELS), args.instructions, args.separator, DEFAULT_EOS)
    positive = args.positive_label or template.labels[1]
    if positive not in template.labels:
        raise ValueError(f"--positive-label {positive!r} is not one of the labels {list(template.labels)}")
    return template, positive


def _examples(spec: str, args, labels, part: str, aliases: tuple[str, ...] = ()):
    from agile.trainer.data import load_examples

    return load_examples(spec, labels, part=part, text_column=args.text_column,
                         label_column=args.label_column, aliases=aliases)


def cmd_train(args) -> int:
    from agile.trainer.run import TrainRun, run_training

    if args.init and (args.labels or args.positive_label or args.instructions != DEFAULT_INSTRUCTIONS
                      or args.separator != DEFAULT_SEPARATOR):
        raise ValueError("--init continues the parent's prompt: drop --labels/--positive-label/--instructions/"
                         "--separator")
    if not args.init and not args.parent_rows:
        raise ValueError("--no-parent-rows goes with --init")
    settings = _settings(args)
    changed = [name for name in LAYOUT if name in _given(args)]
    if args.init and changed:
        raise ValueError("--init continues the parent's LoRA layout and prompt length: drop "
                         + ", ".join("--" + _flag(n).replace("_", "-") for n in changed))
    template, positive_label = _template(args)
    run_training(TrainRun(
        data=args.data, template=template, positive_label=positive_label, settings=settings,
        out=Path(args.out), model=args.model, test=args.test, name=args.name,
        report=Path(args.report) if args.report else None, validation_fraction=args.validation_fraction,
        threshold=args.threshold, calibration=args.calibration, text_column=args.text_column,
        label_column=args.label_column, init=args.init, parent_rows=args.parent_rows,
        outputs=tuple(args.outputs) if args.outputs else None,
    ))
    return 0


def cmd_evaluate(args) -> int:
    from agile.trainer.evaluate import evaluate_adapter

    found = evaluate_adapter(args.adapter, lambda labels, names: _examples(args.data, args, labels, "test", names),
                             args.model, args.batch_size, Path(args.report))
    print(json.dumps({k: found[k] for k in ("n", "threshold", "f1", "f1_at_0.5", "roc_auc", "precision",
                                             "recall", "accuracy", "confusion_matrix")}))
    print(json.dumps({"calibration": found["calibration"]}))
    print(f"report written to {args.report}")
    return 0


def cmd_calibrate(args) -> int:
    from agile.trainer.calibrate import recalibrate

    written = recalibrate(args.adapter, args.data, args.test, args.text_column, args.label_column, args.calibration,
                          args.threshold, args.model, Path(args.report) if args.report else None)
    print(f"calibration written to {written}")
    return 0


def cmd_suggest(args) -> int:
    from tqdm import tqdm

    from agile.adapters import find_adapter, load_adapter
    from agile.files import check_output
    from agile.policy import Policy
    from agile.settings import HomeSettings
    from agile.tables import TableWriter, read_chunks
    from agile.trainer import suggest

    policy = None
    if args.adapter is None:  # the first round: no policy yet, so a random draw
        given = [flag for flag, value in (("--scores", args.scores), ("--explore", args.explore),
                                          ("--sample", args.sample)) if value is not None]
        if given:
            raise ValueError(f"{given[0]} needs --adapter (without one, the n comments are drawn at random)")
    else:
        policy = Policy.from_adapter(load_adapter(find_adapter(args.adapter)))
        if policy.positive_label is None:  # adapters written before positive labels were recorded
            policy = replace(policy, positive_label=policy.labels[1])
    if args.sample is not None and (args.scores or args.sample < 1):
        raise ValueError("--sample chooses what to score; --scores has every row's scores already: give one"
                         if args.scores else f"--sample must be at least 1, got {args.sample}")
    names = policy.names if policy else []
    notes: list[str] = []  # said once the progress bars are done
    out = check_output(args.output, [args.input, args.scores, *args.exclude])  # never over a file it reads
    excluded = suggest.read_texts(args.exclude, args.text_column, args.delimiter)
    writer = TableWriter(out)  # refuses a missing directory or an unknown format before any scoring
    try:
        chunks = read_chunks(args.input, args.text_column, args.id_column, args.chunk_rows, delimiter=args.delimiter)
        with tqdm(unit="comment", file=sys.stderr, desc="pool") as bar, \
                tqdm(unit="comment", file=sys.stderr, desc="sample scored", total=args.sample,
                     disable=args.sample is None) as scored:
            chunks = suggest.counted(chunks, bar)
            if policy is None:
                pairs = suggest.unscored(chunks)
            elif args.scores:
                pairs = suggest.scored_chunks(Path(args.scores), chunks, names)
            else:
                if args.sample is not None:
                    chunks = suggest.counted(suggest.sampled(chunks, args.sample, args.seed, excluded,
                                                             args.chunk_rows), scored)
                pairs = suggest.scored_pool(policy, chunks, args.model, args.batch_size,
                                            HomeSettings.from_env().home_dir, excluded, notes)  # frozen/: pool rows
            chosen, seen = suggest.suggest(policy, pairs, args.n, args.seed, excluded, args.candidates,
                                           suggest.DEFAULT_EXPLORE if args.explore is None else args.explore)
        writer.write(suggest.output_rows(chosen, names, args.id_column or "id", args.text_column))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    how = (f"most uncertain first; fill its '{suggest.LABEL_COLUMN}' column with {' or '.join(names)} "
           f"(agile label {out})" if policy else
           f"drawn at random, in pool order; fill its '{suggest.LABEL_COLUMN}' column (agile label {out} "
           "--labels WORD,WORD) and train the first policy on it")
    of = f"{seen} sampled from {bar.n}" if args.sample is not None else str(seen)
    for note in notes:
        print(note, file=sys.stderr)
    print(f"agile suggest: {len(chosen.ids)} of {of} comments to label ({len(excluded)} labelled texts "
          f"excluded) in {out}, {how}", file=sys.stderr)
    return 0


def cmd_sweep(args) -> int:
    if args.merge:
        from agile.trainer.sweep import merge_sweeps

        out = Path(args.out)
        points = merge_sweeps([Path(p) for p in args.merge], out)
        print(f"{len(points)} points from {len(args.merge)} sweeps written to {out / 'sweep.csv'} "
              f"and {out / 'sweep.png'}")
        return 0

    from agile.models import load_model
    from agile.trainer.data import is_builtin
    from agile.trainer.sweep import run_sweep

    settings = _settings(args)
    template, positive_label = _template(args)
    train_examples = _examples(args.data, args, template.labels, "train")
    if not args.test and not is_builtin(args.data):
        raise ValueError("--test is required with --data FILE: the sweep scores a held-out test file")
    test_examples = _examples(args.test or args.data, args, template.labels, "test")
    for size in args.sizes:
        train_examples.head(size).check_trainable(settings.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_sweep(lambda: load_model(args.model, sequence_length=settings.max_length), template,
              train_examples, test_examples, positive_label, args.sizes, args.epochs, settings, out)
    print(f"sweep written to {out / 'sweep.csv'} and {out / 'sweep.png'}")
    return 0


def _run(func):
    """Turn the errors bad input causes into one line and exit code 2."""

    def run(args) -> int:
        from agile.adapters import AdapterError
        from agile.models import ModelLoadError
        from agile.tables import TableError
        from agile.tokens import LabelError
        from agile.trainer.data import DataError

        try:
            return func(args)
        except (DataError, AdapterError, ModelLoadError, TableError, LabelError, OSError, ValueError) as exc:
            print(f"agile {args.command}: error: {exc}", file=sys.stderr)
            return 2

    return run


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a LoRA adapter (a policy) from labelled examples")
    _add_data_args(p, "ethos", "training rows")
    p.add_argument("--test", default=None, help="rows to score once at the end (default for ethos and "
                   "ethos:ATTRIBUTE: its test split)")
    p.add_argument("--validation-fraction", type=float, default=0.2,
                   help="share of the training rows held out to pick the epoch and threshold (0 = none)")
    p.add_argument("--threshold", type=_probability, default=None,
                   help="flag when calibrated p(positive label) >= this (default: the best F1 on the "
                   "validation rows; 0.5 without them, the codelab's argmax)")
    _add_calibration_args(p)
    _add_prompt_args(p)
    _add_settings_args(p)
    p.add_argument("-o", "--out", required=True, help="adapter directory to write")
    p.add_argument("--name", default=None, help="adapter name (default: the --out directory's name)")
    p.add_argument("--init", default=None, metavar="ADAPTER",
                   help="continue from this adapter (directory or name): its prompt, LoRA layout and weights; "
                   "its training rows are read again and added to --data's (the next round of the agile loop)")
    p.add_argument("--no-parent-rows", dest="parent_rows", action="store_false",
                   help="with --init: train on --data's rows only")
    p.add_argument("--outputs", type=_csv(str), default=None, metavar="NAME,NAME",
                   help="what each label is called in outputs, in the labels' order (p_<name>, prediction): "
                   "prompt with Positive,Negative and name them none,hate (default: the label words; "
                   "with --init: the parent's)")
    p.add_argument("--report", default=None, help="also write the test report (metrics, plots) here")
    p.set_defaults(func=_run(cmd_train), command="train")

    p = subparsers.add_parser("evaluate", help="score labelled rows with an adapter: metrics and plots")
    p.add_argument("--adapter", required=True, help="adapter directory")
    _add_data_args(p, "ethos", "rows to score")
    p.add_argument("--model", default=None, help="model spec (default: the adapter's base model)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--report", required=True, help="directory for metrics.json, plots and scores.csv")
    p.set_defaults(func=_run(cmd_evaluate), command="evaluate")

    p = subparsers.add_parser("calibrate", help="fit an adapter's calibration and threshold on its own "
                              "validation rows (no retraining)")
    p.add_argument("--adapter", required=True, help="adapter directory (its adapter.json is rewritten)")
    p.add_argument("--data", default=None, help="its training data (default: the one adapter.json records; "
                   "'ethos' for adapters from before that was recorded)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--test", default=None, help="test rows to score once (default: the recorded test split)")
    p.add_argument("--threshold", type=_probability, default=None,
                   help="fix the threshold on calibrated p(positive label) (default: best F1 on validation)")
    _add_calibration_args(p)
    p.add_argument("--model", default=None, help="model spec (default: the adapter's base model)")
    p.add_argument("--report", default=None, help="write the test report (metrics, plots, reliability) here")
    p.set_defaults(func=_run(cmd_calibrate), command="calibrate")

    p = subparsers.add_parser("suggest", help="the comments whose labels would teach a policy most",
                              description="Choose the next comments to label: half drawn at random from the pool, "
                              "half near the policy's threshold and spread out over what they say; without "
                              "--adapter, all at random (docs/TRAINING.md, 'The agile loop'). A policy with LoRA "
                              "on its last blocks (--quick) keeps the pool's frozen-block output in "
                              "$AGILE_HOME/frozen/ for the next round's suggest.")
    p.add_argument("--adapter", help="adapter directory, or a name in adapters/ or AGILE_ADAPTER_PATH; without "
                   "one (the first round, no policy yet) the n comments are drawn at random")
    p.add_argument("--input", "-i", type=Path, required=True, help="the pool: .csv, .jsonl or .parquet")
    p.add_argument("-n", type=int, default=50, help="how many to suggest (default 50)")
    p.add_argument("--output", "-o", required=True, help="where the suggestions go (.csv/.jsonl/.parquet)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--id-column", default="id", help="id column; rows without one get their row number")
    p.add_argument("--delimiter", help="CSV delimiter (detected when omitted)")
    p.add_argument("--scores", help="an output of agile score / moderate / results for this pool and policy: "
                   "choose from it instead of scoring the pool again")
    p.add_argument("--exclude", type=Path, action="append", default=[],
                   help="a file of rows already labelled (its text column): never scored nor suggested; repeatable")
    p.add_argument("--seed", type=int, default=0, help="the clustering's seed: same pool, scores and seed, "
                   "same suggestions")
    p.add_argument("--candidates", type=int, default=5, metavar="FACTOR",
                   help="cluster the FACTOR x n most uncertain comments (default 5; 1 = uncertainty alone)")
    p.add_argument("--explore", type=float, default=None, metavar="SHARE",
                   help="draw this share of the n at random from the pool instead (0 to 1; default 0.5; "
                   "0 = uncertainty and diversity alone)")
    p.add_argument("--sample", type=int, default=None, metavar="N",
                   help="score a seeded random N of the pool, not all of it (a big dump on a CPU: ~14 a second "
                   "on 2 cores)")
    p.add_argument("--model", default=None, help="model spec (default: the adapter's base model)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--chunk-rows", type=int, default=2048, help="rows read and scored per step")
    p.set_defaults(func=_run(cmd_suggest), command="suggest")

    p = subparsers.add_parser("sweep", help="training size x epoch sweep, scored on the test rows")
    _add_data_args(p, "ethos", "training rows")
    p.add_argument("--test", default=None, help="test rows (default for ethos: its test split)")
    p.add_argument("--sizes", type=_csv(int), default=[200, 400, 800])
    _add_prompt_args(p)
    _add_settings_args(p, sweep=True)
    p.add_argument("-o", "--out", required=True, help="directory for sweep.csv and sweep.png")
    p.add_argument("--merge", type=_csv(str), default=None, metavar="CSV,CSV",
                   help="train nothing: join sweep.csv files (e.g. one size per GPU process) into one "
                   "table and plot")
    p.set_defaults(func=_run(cmd_sweep), command="sweep")
