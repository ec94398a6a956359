"""One training run, top to bottom: data, validation split, model, LoRA epochs, calibration and
threshold on the validation rows, the test rows scored once, then the adapter and its report.

A run may continue from a parent adapter (`agile train --init`): its prompt, LoRA layout and
weights, and by default the rows it was trained on beside the new ones. The new adapter records
its parent and every round, so a policy's history reads from its adapter.json.

`agile train` parses its flags into a `TrainRun` and calls `run_training`; nothing here parses flags.
Every check that bad input can fail runs before the model loads.
"""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from agile.adapters import Adapter
from agile.policy import check_outputs
from agile.prompt import PromptTemplate
from agile.trainer.data import DataError, Examples, is_builtin, load_examples, validation_split
from agile.trainer.settings import TrainSettings


@dataclass(frozen=True)
class TrainRun:
    """What `agile train` was asked for."""

    data: str  # 'ethos', 'ethos:ATTRIBUTE' or a table file
    template: PromptTemplate
    positive_label: str
    settings: TrainSettings
    out: Path
    model: str
    test: str | None = None  # default for the built-in splits: their test part
    name: str | None = None  # default: the out directory's name
    report: Path | None = None
    validation_fraction: float = 0.2  # 0 = no validation split
    threshold: float | None = None  # default: the best F1 on the validation rows
    calibration: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    init: str | None = None  # a parent adapter (directory or name) to continue from
    parent_rows: bool = True  # with init: train on the parent's rows too
    outputs: tuple[str, ...] | None = None  # each label's name in outputs (`hate`, `none`); None: the label words

    def examples(self, spec: str, part: str) -> Examples:
        return load_examples(spec, self.template.labels, part=part, text_column=self.text_column,
                             label_column=self.label_column, aliases=self.outputs)


def check_splittable(examples: Examples, fraction: float) -> None:
    """Refuse, before the model loads, data whose validation split would miss a label.

    ROC-AUC (which picks the epoch), the threshold and the calibration all need every label
    on both sides of the split; a 5-row file used to train for half a minute, then fail.
    """

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


def joined(first: Examples, then: Examples) -> Examples:
    return Examples(first.texts + then.texts, np.concatenate([first.labels, then.labels]), first.label_names,
                    f"{first.source} + {then.source}")


def sources(meta) -> list[dict]:
    """The files (spec and columns) an adapter's training rows came from, in order."""
    recorded = meta.settings
    return recorded.get("sources") or [{"data_spec": recorded.get("data_spec"),
                                        "text_column": recorded.get("text_column") or "text",
                                        "label_column": recorded.get("label_column") or "label"}]


def parent_examples(parent: Adapter) -> Examples:
    """The rows the parent was trained on, read again and checked against its recorded checksum."""
    found = None
    for source in sources(parent.meta):
        if not source["data_spec"]:
            raise DataError(f"{parent.path}: adapter.json does not record its training data; "
                            "pass --no-parent-rows to train on the new rows only")
        rows = load_examples(source["data_spec"], tuple(parent.meta.labels), part="train",
                             text_column=source["text_column"], label_column=source["label_column"],
                             aliases=tuple(parent.meta.outputs or ()))
        found = rows if found is None else joined(found, rows)
    if found.checksum() != parent.meta.data_checksum:
        raise DataError(f"{parent.path}: the rows it was trained on ({found.source}) have changed since; "
                        "pass --no-parent-rows to train on the new rows only")
    return found


def from_parent(run: TrainRun, parent: Adapter) -> TrainRun:
    """The run as continued from `parent`: its prompt, positive label and LoRA layout (rank, layers, blocks)."""
    meta = parent.meta
    settings = replace(run.settings, rank=meta.rank, target_layers=tuple(meta.target_layers),
                       max_length=meta.max_length, objective=meta.objective,
                       lora_blocks=meta.lora_blocks)
    test = run.test or meta.settings.get("test_spec")
    outputs = run.outputs or (tuple(meta.outputs) if meta.outputs else None)
    return replace(run, template=meta.template, positive_label=meta.positive_label or meta.labels[1],
                   settings=settings, test=test, outputs=outputs)


def peak_memory() -> dict:
    """Peak host RSS, and peak GPU memory where training ran on a GPU."""
    import torch

    found = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}  # Linux: KiB
    if torch.cuda.is_available():
        found["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def run_training(run: TrainRun) -> Path:
    """Train, choose on validation, score the test rows once, write the adapter (and report); its path."""
    from agile.adapters import AdapterMeta, find_adapter, load_adapter, save_adapter
    from agile.files import check_directory_output
    from agile.models import load_model
    from agile.policy import Policy
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.settings import HomeSettings
    from agile.trainer.calibrate import served_policy
    from agile.trainer.evaluate import (
        binary_metrics,
        binary_truth,
        check_writable,
        held_out_metrics,
        score_examples,
        write_report,
    )
    from agile.trainer.train import frozen_store, frozen_validation, train

    parent = load_adapter(find_adapter(run.init)) if run.init else None
    if parent is not None:
        run = from_parent(run, parent)
    settings, template, positive_label = run.settings, run.template, run.positive_label
    if run.outputs:  # before any work: a bad name would otherwise surface after training
        check_outputs(template.labels, run.outputs)
    check_writable(run.out)
    parent_reads = [parent.path, *(src["data_spec"] for src in sources(parent.meta))] if parent is not None else []
    check_directory_output(run.out, [run.data, run.test, *parent_reads])
    if run.report:
        check_writable(run.report)
    examples = new = run.examples(run.data, "train")
    if parent is not None and run.parent_rows:
        examples = joined(parent_examples(parent), new)
    test_spec = run.test or (run.data if is_builtin(run.data) else None)
    test = run.examples(test_spec, "test") if test_spec else None
    if run.validation_fraction:
        check_splittable(examples, run.validation_fraction)
        fit, validation = validation_split(examples, run.validation_fraction, settings.seed)
    else:
        fit, validation = examples, None
    fit.check_trainable(settings.batch_size)
    print(f"training on {len(fit)} rows of {examples.source}"
          + (f", validating on {len(validation)}" if validation else "") + f"; {settings}")

    model = load_model(run.model, sequence_length=settings.max_length)
    scorer = LabelScorer(model, template, ScoringSettings(max_length=settings.max_length))
    positive = template.labels.index(positive_label)

    scored: list[np.ndarray] = []  # each epoch's validation probabilities: the kept epoch's are reused below
    store = frozen_store(model, template, settings, HomeSettings.from_env().home_dir)  # rows kept from the last run
    frozen = frozen_validation(model, template, validation, settings, store) if validation else None

    def validation_auc(model) -> float:
        probs = frozen() if frozen else score_examples(scorer, validation, desc="validation")[0]
        scored.append(probs)
        return binary_metrics(binary_truth(validation, positive_label), probs[:, positive], 0.5)["roc_auc"]

    started = time.perf_counter()
    result = train(model, template, fit, settings, validate=validation_auc if validation else None, start=parent,
                   store=store)
    if store is not None:
        kept = store.saved()
        print(f"frozen blocks' output: {store.read} rows read back from earlier runs, {store.computed} computed "
              f"({kept})")
    train_seconds = time.perf_counter() - started
    metrics: dict = {"history": [asdict(r) for r in result.history], "best_epoch": result.best_epoch,
                     "seconds_per_step": round(result.seconds_per_step, 4),
                     "train_seconds": round(train_seconds, 1), "compute_dtype": result.compute_dtype}

    name = run.name or run.out.name
    val_scores = None
    if validation is not None:
        val_scores = scored[result.best_epoch - 1]  # the model holds that epoch's weights: not scored again
        policy = served_policy(template, name, positive_label, settings.max_length, validation, val_scores,
                               run.calibration, run.threshold, metrics)
    else:  # nothing to fit on: raw scores, the given threshold or the codelab's argmax
        policy = Policy(template, name, positive_label, 0.5 if run.threshold is None else run.threshold,
                        settings.max_length)
    policy = replace(policy, outputs=run.outputs)  # the report names the labels as the adapter's outputs will
    test_scores = None
    if test is not None:  # scored once, with the epoch, calibration and threshold already fixed
        test_scores = score_examples(scorer, test, desc="test")
        metrics["test"] = held_out_metrics(test, test_scores[0], policy)
    metrics.update(peak_memory())
    this_round = {"data": run.data, "new_rows": len(new), "training_rows": len(examples),
                  "test_roc_auc": metrics.get("test", {}).get("roc_auc")}
    lineage = {"parent": {}, "rounds": [this_round]}
    if parent is not None:
        earlier = parent.meta.rounds or [{"data": parent.meta.settings.get("data_spec"),
                                          "training_rows": parent.meta.settings.get("rows"),
                                          "test_roc_auc": parent.meta.metrics.get("test", {}).get("roc_auc")}]
        lineage = {"parent": {"name": parent.meta.name, "version": parent.version, "path": str(parent.path)},
                   "rounds": [*earlier, this_round]}
    used = [*(sources(parent.meta) if parent is not None and run.parent_rows else []),
            {"data_spec": run.data, "text_column": run.text_column, "label_column": run.label_column}]

    meta = AdapterMeta(
        name=name, base_model=model.agile_info.spec, base_checksum=model.agile_info.checksum,
        labels=list(template.labels), instructions=template.instructions, separator=template.separator,
        eos=template.eos, rank=settings.rank, target_layers=list(settings.target_layers),
        objective=settings.objective, max_length=settings.max_length, positive_label=positive_label,
        threshold=policy.threshold, calibration=policy.calibration.to_json(), data_checksum=examples.checksum(),
        settings={**asdict(settings), "data": examples.source, "rows": len(examples), "data_spec": run.data,
                  "text_column": run.text_column, "label_column": run.label_column, "test_spec": test_spec,
                  "validation_fraction": run.validation_fraction, "validation_seed": settings.seed,
                  "sources": used},
        metrics=metrics, outputs=list(run.outputs) if run.outputs else None, **lineage,
    )
    save_adapter(model, meta, run.out)
    print(f"adapter written to {run.out}" + (f" (round {len(lineage['rounds'])}, from {parent.meta.name})"
                                             if parent is not None else ""))
    if run.report and test_scores is not None:
        val = None if validation is None else (binary_truth(validation, positive_label), val_scores)
        write_report(run.report, test, *test_scores, policy,
                     {"adapter": str(run.out), "model": model.agile_info.spec, **lineage}, validation=val)
        print(f"report written to {run.report}")
    print(f"peak RSS {metrics['peak_rss_mb']} MB; {train_seconds:.0f} s training")
    return run.out
