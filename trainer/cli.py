"""`agile train`, `agile evaluate` and `agile sweep`: argument parsing and the steps of each command.

Heavy imports (torch, keras) happen inside the commands, so `agile --help` stays fast.
Bad input ends in one `agile <command>: error: ...` line and exit code 2, and
nothing half-written is left behind (adapters and reports are written atomically).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from agile.prompt import DEFAULT_EOS, DEFAULT_INSTRUCTIONS, DEFAULT_LABELS, DEFAULT_SEPARATOR, PromptTemplate
from agile.trainer.settings import ALL_TARGETS, COMPUTE_DTYPES, OBJECTIVES, TrainSettings

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
    p.add_argument("--labels", type=_csv(str), default=list(DEFAULT_LABELS),
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

    d = TrainSettings()
    p.add_argument("--model", default=DEFAULT_MODEL, help="model spec (default: the embedded Gemma 3 270M)")
    p.add_argument("--objective", choices=OBJECTIVES, default=d.objective)
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per training row")
    if sweep:
        p.add_argument("--epochs", type=_csv(int), default=[4, 6, 8, 10], help="epochs to score at")
    else:
        p.add_argument("--epochs", type=int, default=d.epochs, help="the most epochs (early stopping)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--lora-targets", default=",".join(d.target_layers),
                   help=f"layer names, or 'all' = {','.join(ALL_TARGETS)}")
    p.add_argument("--compute-dtype", choices=COMPUTE_DTYPES, default=d.compute_dtype,
                   help="dtype of the forward pass (LoRA weights stay float32); auto = bfloat16 on a GPU "
                   "or a CPU with native bfloat16, float32 elsewhere")
    if not sweep:
        p.add_argument("--patience", type=int, default=d.patience,
                       help="stop after N epochs without a better validation ROC-AUC (0 = run all)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after N steps (timing runs)")


def _settings(args):
    targets = ALL_TARGETS if args.lora_targets == "all" else tuple(_csv(str)(args.lora_targets))
    return TrainSettings(
        objective=args.objective, rank=args.rank, learning_rate=args.learning_rate,
        batch_size=args.batch_size, max_length=args.max_length, seed=args.seed,
        epochs=max(args.epochs) if isinstance(args.epochs, list) else args.epochs,
        target_layers=targets, compute_dtype=args.compute_dtype, max_steps=args.max_steps,
        patience=getattr(args, "patience", 0),
    )


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"a threshold lies strictly between 0 and 1, got {text}")
    return value


def _template(args) -> tuple[PromptTemplate, str]:
    template = PromptTemplate(tuple(args.labels), args.instructions, args.separator, DEFAULT_EOS)
    positive = args.positive_label or template.labels[1]
    if positive not in template.labels:
        raise ValueError(f"--positive-label {positive!r} is not one of the labels {list(template.labels)}")
    return template, positive


def _examples(spec: str, args, labels, part: str):
    from agile.trainer.data import load_examples

    return load_examples(spec, labels, part=part, text_column=args.text_column,
                         label_column=args.label_column)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _peak_memory() -> dict:
    """Peak host RSS, and peak GPU memory where training ran on a GPU."""
    import torch

    found = {"peak_rss_mb": round(_peak_rss_mb())}
    if torch.cuda.is_available():
        found["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def _check_splittable(examples, fraction: float) -> None:
    """Refuse, before the model loads, data whose validation split would miss a label.

    ROC-AUC (which picks the epoch), the threshold and the calibration all need every label
    on both sides of the split; on main a 5-row file trained for half a minute, then failed.
    """
    import numpy as np

    from agile.trainer.data import DataError

    def splits(n: int) -> bool:  # validation_split holds out round(n * fraction) of a label's n rows
        return 1 <= round(n * fraction) < n

    if not 0 < fraction < 1:
        return  # validation_split says why
    needed = next((n for n in range(2, 100_000) if splits(n)), "more")
    counts = np.bincount(examples.labels, minlength=len(examples.label_names))
    short = [f"{name!r} has {int(c)}" for name, c in zip(examples.label_names, counts, strict=True)
             if not splits(int(c))]
    if short:
        raise DataError(f"{examples.source}: too few rows to hold out a validation split of {fraction:g}: "
                        f"{', '.join(short)}; each label needs at least {needed} (label more rows, or pass "
                        "--validation-fraction 0 to train without choosing the epoch, threshold and calibration)")


def cmd_train(args) -> int:
    from agile.adapters import AdapterMeta, save_adapter
    from agile.models import load_model
    from agile.policy import Policy
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.trainer.calibrate import served_policy
    from agile.trainer.data import is_builtin, validation_split
    from agile.trainer.evaluate import (
        binary_metrics,
        binary_truth,
        check_writable,
        held_out_metrics,
        score_examples,
        write_report,
    )
    from agile.trainer.train import train

    settings = _settings(args)
    template, positive_label = _template(args)
    check_writable(Path(args.out))
    if args.report:
        check_writable(Path(args.report))
    examples = _examples(args.data, args, template.labels, "train")
    test_spec = args.test or (args.data if is_builtin(args.data) else None)
    test = _examples(test_spec, args, template.labels, "test") if test_spec else None
    if args.validation_fraction:
        _check_splittable(examples, args.validation_fraction)
        fit, validation = validation_split(examples, args.validation_fraction, args.seed)
    else:
        fit, validation = examples, None
    fit.check_trainable(settings.batch_size)
    print(f"training on {len(fit)} rows of {examples.source}"
          + (f", validating on {len(validation)}" if validation else "")
          + f"; {settings}")

    model = load_model(args.model, sequence_length=settings.max_length)
    scorer = LabelScorer(model, template, ScoringSettings(max_length=settings.max_length))
    positive = template.labels.index(positive_label)

    def validation_auc(model) -> float:
        probs, _ = score_examples(scorer, validation, desc="validation")
        return binary_metrics(binary_truth(validation, positive_label), probs[:, positive], 0.5)["roc_auc"]

    started = time.perf_counter()
    result = train(model, template, fit, settings, validate=validation_auc if validation else None)
    train_seconds = time.perf_counter() - started

    metrics: dict = {"history": [asdict(r) for r in result.history], "best_epoch": result.best_epoch,
                     "seconds_per_step": round(result.seconds_per_step, 4),
                     "train_seconds": round(train_seconds, 1), "compute_dtype": result.compute_dtype}
    out = Path(args.out)
    name = args.name or out.name
    val_scores = None
    if validation is not None:
        val_scores = score_examples(scorer, validation, desc="validation")[0]
        policy = served_policy(template, name, positive_label, settings.max_length, validation, val_scores,
                                args.calibration, args.threshold, metrics)
    else:  # nothing to fit on: raw scores, the given threshold or the codelab's argmax
        policy = Policy(template, name, positive_label, 0.5 if args.threshold is None else args.threshold,
                        settings.max_length)
    test_scores = None
    if test is not None:  # scored once, with the epoch, calibration and threshold already fixed
        test_scores = score_examples(scorer, test, desc="test")
        metrics["test"] = held_out_metrics(test, test_scores[0], policy)
    metrics.update(_peak_memory())

    meta = AdapterMeta(
        name=name, base_model=model.agile_info.spec, base_checksum=model.agile_info.checksum,
        labels=list(template.labels), instructions=template.instructions, separator=template.separator,
        eos=template.eos, rank=settings.rank, target_layers=list(settings.target_layers),
        objective=settings.objective, max_length=settings.max_length, positive_label=positive_label,
        threshold=policy.threshold, calibration=policy.calibration.to_json(), data_checksum=examples.checksum(),
        settings={**asdict(settings), "data": examples.source, "rows": len(examples), "data_spec": args.data,
                  "text_column": args.text_column, "label_column": args.label_column, "test_spec": test_spec,
                  "validation_fraction": args.validation_fraction, "validation_seed": args.seed},
        metrics=metrics,
    )
    save_adapter(model, meta, out)
    print(f"adapter written to {out}")
    if args.report and test_scores is not None:
        val = None if validation is None else (binary_truth(validation, positive_label), val_scores)
        write_report(Path(args.report), test, *test_scores, policy,
                     {"adapter": str(out), "model": model.agile_info.spec}, validation=val)
        print(f"report written to {args.report}")
    print(f"peak RSS {metrics['peak_rss_mb']} MB; {train_seconds:.0f} s training")
    return 0


def cmd_evaluate(args) -> int:
    from agile.adapters import apply_adapter, load_adapter
    from agile.models import load_model
    from agile.policy import Policy
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.trainer.evaluate import check_writable, score_examples, write_report

    adapter = load_adapter(args.adapter)
    meta = adapter.meta
    policy = Policy.from_adapter(adapter)
    if policy.positive_label is None:  # adapters written before positive labels were recorded
        policy = replace(policy, positive_label=meta.labels[1])
    check_writable(Path(args.report))
    examples = _examples(args.data, args, tuple(meta.labels), "test")
    model = load_model(args.model or meta.base_model, sequence_length=meta.max_length)
    apply_adapter(model, adapter)
    scorer = LabelScorer(model, meta.template, ScoringSettings(meta.max_length, args.batch_size))
    probs, truncated = score_examples(scorer, examples, desc="evaluate")
    found = write_report(Path(args.report), examples, probs, truncated, policy,
                         {"adapter": str(adapter.path), "model": model.agile_info.spec})
    print(json.dumps({k: found[k] for k in ("n", "threshold", "f1", "f1_at_0.5", "roc_auc", "precision",
                                             "recall", "accuracy", "confusion_matrix")}))
    print(json.dumps({"calibration": found["calibration"]}))
    print(f"report written to {args.report}")
    return 0


def cmd_calibrate(args) -> int:
    """Fit an adapter's calibration and threshold on its own validation rows, rebuilt from adapter.json."""
    from agile.adapters import apply_adapter, load_adapter, write_meta
    from agile.models import load_model
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.trainer.calibrate import served_policy
    from agile.trainer.data import recorded_splits
    from agile.trainer.evaluate import binary_truth, check_writable, held_out_metrics, score_examples, write_report

    adapter = load_adapter(args.adapter)
    meta = adapter.meta
    if args.report:
        check_writable(Path(args.report))
    validation, test = recorded_splits(adapter, args.data, args.test, args.text_column, args.label_column)
    if args.report and test is None:
        raise ValueError("--report scores a test split: name it with --test")

    model = load_model(args.model or meta.base_model, sequence_length=meta.max_length)
    apply_adapter(model, adapter)
    scorer = LabelScorer(model, meta.template, ScoringSettings(meta.max_length))
    val_scores = score_examples(scorer, validation, desc="validation")[0]
    metrics = dict(meta.metrics)
    positive_label = meta.positive_label or meta.labels[1]
    policy = served_policy(meta.template, meta.name, positive_label, meta.max_length, validation, val_scores,
                            args.calibration, args.threshold, metrics)
    test_scores = None
    if test is not None:
        test_scores = score_examples(scorer, test, desc="test")
        metrics["test"] = held_out_metrics(test, test_scores[0], policy)
    if args.report:
        write_report(Path(args.report), test, *test_scores, policy,
                     {"adapter": str(adapter.path), "model": model.agile_info.spec},
                     validation=(binary_truth(validation, positive_label), val_scores))
        print(f"report written to {args.report}")
    write_meta(adapter.path, replace(meta, positive_label=positive_label, threshold=policy.threshold,
                                     calibration=policy.calibration.to_json(), metrics=metrics))
    print(f"calibration written to {adapter.path / 'adapter.json'}")
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


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (`python -m agile.trainer.cli ...`) until the `agile` console script includes us."""
    parser = argparse.ArgumentParser(prog="agile")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
