"""`agile suggest`: the comments whose labels would teach a policy most, for the next labelling round.

The rule, in two steps:
1. **Uncertainty.** Each comment's distance from the policy's decision, in logit space:
   |logit(p) - logit(threshold)| on the calibrated p(positive label). The `factor * n` closest
   comments are the candidates (the pool is streamed; only the candidates are kept).
2. **Diversity.** The candidates are clustered into `n` groups (k-means, seeded) over a hashed
   bag of their words and word pairs, and each group gives its most uncertain comment. So a
   round is not fifty rewordings of one borderline comment. The words, not the model's hidden
   state, are the embedding: they need no model, so `--scores` (an earlier scoring of the pool)
   chooses exactly as a fresh scoring would.

Rows already labelled (`--exclude`, matched by text), rows that could not be scored and repeated
texts are never suggested. The same pool, scores and seed give the same suggestions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agile.calibration import logit
from agile.policy import Policy
from agile.tables import Chunk, TableError, read_chunks

LABEL_COLUMN = "label"  # filled in by the labeller (agile label), read by agile train --label-column label
DEFAULT_FACTOR = 5


@dataclass
class Candidates:
    """The pool's most uncertain rows so far: row numbers, ids, texts, calibrated probabilities, margins."""

    rows: np.ndarray
    ids: list[str]
    texts: list[str]
    probs: np.ndarray  # [k, labels]
    margins: np.ndarray

    @classmethod
    def empty(cls, n_labels: int) -> Candidates:
        return cls(np.zeros(0, np.int64), [], [], np.zeros((0, n_labels)), np.zeros(0))

    def merged(self, other: Candidates, keep: int) -> Candidates:
        """Both sets in one, repeated texts dropped (the earlier row stays), the `keep` smallest margins."""
        texts = self.texts + other.texts
        margins = np.concatenate([self.margins, other.margins])
        rows = np.concatenate([self.rows, other.rows])
        first: dict[str, int] = {}
        for i, text in enumerate(texts):
            first.setdefault(text, i)
        unique = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        order = unique[np.lexsort((rows[unique], margins[unique]))][:keep]  # margin, then row: deterministic
        return Candidates(rows[order], [(self.ids + other.ids)[i] for i in order], [texts[i] for i in order],
                          np.concatenate([self.probs, other.probs])[order], margins[order])


def margins(policy: Policy, probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Distance of each calibrated p(positive label) from the threshold, in logit space (0 = on the line)."""
    positive = policy.labels.index(policy.positive_label)
    cut = policy.threshold if threshold is None else threshold
    return np.abs(logit(probs[:, positive]) - logit(cut))


def diverse(texts: list[str], order_margins: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of `n` texts: k-means over hashed words and word pairs, each cluster's most uncertain one."""
    if len(texts) <= n:
        return np.arange(len(texts))
    from sklearn.cluster import KMeans
    from sklearn.feature_extraction.text import HashingVectorizer

    vectors = HashingVectorizer(n_features=2**18, ngram_range=(1, 2), alternate_sign=False,
                                norm="l2").transform(texts)
    clusters = KMeans(n_clusters=n, n_init=3, random_state=seed).fit_predict(vectors)
    picks = []
    for cluster in np.unique(clusters):
        members = np.flatnonzero(clusters == cluster)
        picks.append(members[np.argmin(order_margins[members])])  # candidates come sorted: ties -> earlier row
    picks = np.asarray(picks, dtype=np.int64)
    if len(picks) < n:  # identical vectors collapse clusters: top up with the most uncertain rest
        rest = np.setdiff1d(np.arange(len(texts)), picks)
        picks = np.concatenate([picks, rest[np.argsort(order_margins[rest], kind="stable")][: n - len(picks)]])
    return picks


def read_texts(paths: Iterable[Path], text_column: str, delimiter: str | None = None) -> set[str]:
    """Every text in the files already labelled: never suggested again."""
    found: set[str] = set()
    for path in paths:
        for chunk in read_chunks(path, text_column, None, delimiter=delimiter):
            found.update(chunk.texts)
    return found


def _read_scores(path: Path):
    """An output of `agile score` / `moderate` / `results` as an arrow table, ids kept as the strings written."""
    import pyarrow as pa
    from pyarrow import csv as pa_csv
    from pyarrow import json as pa_json
    from pyarrow import parquet as pq

    from agile.tables import table_format

    if not path.is_file():
        raise TableError(f"{path}: no such file")
    fmt = table_format(path)
    try:
        if fmt == "csv":
            return pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(column_types={"id": pa.string()}))
        if fmt == "jsonl":
            return pa_json.read_json(path, parse_options=pa_json.ParseOptions(
                explicit_schema=pa.schema([("id", pa.string())]), unexpected_field_behavior="infer"))
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TableError(f"{path}: cannot read it as a scored output: {str(exc).splitlines()[0]}") from exc


def scored_chunks(scores: Path, chunks: Iterator[Chunk], labels: list[str]) -> Iterator[tuple[Chunk, np.ndarray]]:
    """The pool's chunks beside their rows of an earlier `agile score` / `results` output, checked row for row."""
    import pyarrow.compute as pc

    table = _read_scores(scores)
    missing = [f"p_{label}" for label in labels if f"p_{label}" not in table.column_names]
    if missing or "id" not in table.column_names:
        raise TableError(f"{scores}: not a scored output of this policy (no column {(missing or ['id'])[0]!r})")
    ids = table.column("id").to_pylist()
    probs = np.column_stack([pc.fill_null(table.column(f"p_{label}").cast("float64"), np.nan).to_numpy()
                             for label in labels])
    seen = 0
    for chunk in chunks:
        end = seen + len(chunk.ids)
        if end > len(ids) or [("" if i is None else str(i)) for i in ids[seen:end]] != chunk.ids:
            raise TableError(f"{scores}: its rows are not the pool's, row for row (first mismatch at or after "
                             f"row {seen}); score this pool again, or leave out --scores")
        yield chunk, probs[seen:end]
        seen = end
    if seen != len(ids):
        raise TableError(f"{scores}: {len(ids)} rows, the pool {seen}: not the pool's scores")


def candidates(policy: Policy, pairs: Iterable[tuple[Chunk, np.ndarray]], keep: int,
               excluded: set[str]) -> tuple[Candidates, int]:
    """Stream (chunk, calibrated probabilities) into the `keep` most uncertain rows; also the rows seen."""
    best, seen = Candidates.empty(len(policy.labels)), 0
    for chunk, probs in pairs:
        seen += len(chunk.ids)
        ok = np.isfinite(probs).all(axis=1) & np.fromiter((t not in excluded and t.strip() != "" for t in chunk.texts),
                                                         dtype=bool, count=len(chunk.texts))
        index = np.flatnonzero(ok)
        if len(index):
            best = best.merged(Candidates(chunk.start + index, [chunk.ids[i] for i in index],
                                          [chunk.texts[i] for i in index], probs[index],
                                          margins(policy, probs[index])), keep)
    return best, seen


def suggest(policy: Policy, pairs: Iterable[tuple[Chunk, np.ndarray]], n: int, seed: int = 0,
            excluded: set[str] | None = None, factor: int = DEFAULT_FACTOR) -> tuple[Candidates, int]:
    """The `n` suggestions (most uncertain first) and the number of pool rows seen."""
    if n < 1 or factor < 1:
        raise ValueError(f"-n and --candidates must be at least 1, got {n} and {factor}")
    pool, seen = candidates(policy, pairs, n * factor, excluded or set())
    picks = diverse(pool.texts, pool.margins, n, seed)
    picks = picks[np.lexsort((pool.rows[picks], pool.margins[picks]))]
    return Candidates(pool.rows[picks], [pool.ids[i] for i in picks], [pool.texts[i] for i in picks],
                      pool.probs[picks], pool.margins[picks]), seen


def output_rows(chosen: Candidates, labels: list[str], id_column: str, text_column: str) -> list[dict]:
    """The suggestions as the labeller and `agile train` read them: id and text as written, scores, an empty label."""
    return [{id_column: cid, text_column: text, **{f"p_{label}": float(p) for label, p in zip(labels, probs,
                                                                                            strict=True)},
             LABEL_COLUMN: ""}
            for cid, text, probs in zip(chosen.ids, chosen.texts, chosen.probs, strict=True)]


def counted(chunks: Iterator[Chunk], bar) -> Iterator[Chunk]:
    """The chunks, each counted on a progress bar as it is read."""
    for chunk in chunks:
        bar.update(len(chunk.ids))
        yield chunk


def scored_pool(policy: Policy, chunks: Iterator[Chunk], model_spec: str | None,
                batch_size: int | None) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Score the pool in this process, chunk by chunk: calibrated probabilities, NaN for empty texts."""
    from agile.adapters import merge_adapter
    from agile.models import load_model
    from agile.scoring import LabelScorer, ScoringSettings

    adapter = policy.adapter
    model = load_model(model_spec or adapter.meta.base_model, sequence_length=policy.max_length)
    merge_adapter(model, adapter)
    scorer = LabelScorer(model, policy.template, ScoringSettings(policy.max_length, batch_size))
    for chunk in chunks:
        probs = np.full((len(chunk.texts), len(policy.labels)), np.nan)
        todo = [i for i, text in enumerate(chunk.texts) if text.strip()]
        if todo:
            probs[todo] = policy.calibrated(scorer.score([chunk.texts[i] for i in todo]).probs)
        yield chunk, probs
