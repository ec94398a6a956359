"""Calibration methods on adapters' own rows: what `--calibration auto` picks on validation, and how
each method does on the test rows it never saw.

Per adapter, its validation and test rows are rebuilt from adapter.json (as `agile calibrate`
does) and scored once; then each method is fitted on the validation rows (threshold by the
usual rule) and applied to the test rows: ECE (10 bins), log loss, Brier score, F1. `auto`
sees only the validation rows; the test columns are for reading, never for choosing.

    python bench/bench_calibration.py adapters/ethos-hate adapters/ethos-violence
"""

from __future__ import annotations

import argparse
import os

import common
import numpy as np

METHODS = ("identity", "temperature", "platt", "auto")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", help="adapter directories (with their training data recorded)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--name", default="calibration", help="results file name (bench/results/NAME.json)")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    from agile.adapters import load_adapter, merge_adapter, unmerge_adapter
    from agile.calibration import expected_calibration_error
    from agile.models import load_model
    from agile.scoring import LabelScorer, ScoringSettings
    from agile.trainer.calibrate import calibrate_on_validation, row_log_loss
    from agile.trainer.data import recorded_splits
    from agile.trainer.evaluate import binary_metrics, binary_truth, score_examples

    models: dict[tuple, object] = {}
    found, table = [], []
    for path in args.adapters:
        adapter = load_adapter(path)
        meta = adapter.meta
        validation, test = recorded_splits(adapter)
        if test is None:
            raise SystemExit(f"{path}: adapter.json records no test split")
        key = (meta.base_model, meta.max_length)
        if key not in models:
            models[key] = load_model(meta.base_model, sequence_length=meta.max_length)
        model = models[key]
        merge_adapter(model, adapter)
        scorer = LabelScorer(model, meta.template, ScoringSettings(meta.max_length))
        label = meta.positive_label or meta.labels[1]
        positive = meta.labels.index(label)
        p_val, p_test = (score_examples(scorer, rows)[0][:, positive] for rows in (validation, test))
        unmerge_adapter(model)
        y_val, y_test = binary_truth(validation, label), binary_truth(test, label)
        record = {"adapter": meta.name, "validation_rows": len(y_val), "validation_positive": int(y_val.sum()),
                  "test_rows": len(y_test), "methods": {}}
        for method in METHODS:
            calibration, threshold, summary = calibrate_on_validation(y_val, p_val, method, validation.source)
            served = calibration.positive(p_test)
            record["methods"][method] = {
                "fitted": calibration.method, "a": calibration.a, "b": calibration.b,
                "test_ece": expected_calibration_error(y_test, served),
                "test_log_loss": float(row_log_loss(y_test, served).mean()),
                "test_brier": float(np.mean((served - y_test) ** 2)),
                "test_f1": binary_metrics(y_test, served, threshold)["f1"]}
            if "chosen_by" in summary:
                record["held_out_validation_log_loss"] = summary["chosen_by"]["log_loss"]
        found.append(record)
        chosen = record["methods"]["auto"]["fitted"]
        for method in METHODS[:-1]:
            m = record["methods"][method]
            table.append([meta.name, method + (" (auto)" if method == chosen else ""),
                          f"{record.get('held_out_validation_log_loss', {}).get(method, float('nan')):.3f}",
                          f"{m['test_ece']:.3f}", f"{m['test_log_loss']:.3f}", f"{m['test_brier']:.3f}",
                          f"{m['test_f1']:.3f}"])
    print()
    common.print_table(["adapter", "method", "validation log loss (5-fold held out)", "test ECE",
                        "test log loss", "test Brier", "test F1"], table)
    common.write_result(args.name, {"adapters": found}, "cpu")


if __name__ == "__main__":
    main()
