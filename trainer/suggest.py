"""`agile suggest`: the comments whose labels would teach a policy most, for the next labelling round.

The rule, in three parts (m = the places the random share leaves):
1. **Uncertainty.** Each comment's distance from the policy's decision, in logit space:
   |logit(p) - logit(threshold)| on the calibrated p(positive label). The `factor * m` closest
   comments are the candidates (the pool is streamed; only the candidates are kept).
2. **Diversity.** The candidates are clustered into `m` groups (k-means, seeded) over a hashed
   bag of their words and word pairs, and each group gives its most uncertain comment. So a
   round is not fifty rewordings of one borderline comment. The words, not the model's hidden
   state, are the embedding: they need no model, so `--scores` (an earlier scoring of the pool)
   chooses exactly as a fresh scoring would.
3. **Exploration** (`--explore F`, default half). A share F of the round is drawn at random from
   the whole pool instead (each text's draw is a seeded hash of it, so it does not depend on how
   the pool is chunked): the policy's own uncertainty is least trustworthy when it has seen fewest
   labels, and random rows also show it what it is sure of and wrong about.

Without a policy (the first round: `agile suggest` without `--adapter`) the whole round is the
random share, in pool order: the start a new policy is trained on.

Rows already labelled (`--exclude`, matched by text), rows that could not be scored and repeated
texts are never suggested. The same pool, scores and seed give the same suggestions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from agile.calibration import logit
from agile.policy import Policy
from agile.tables import Chunk, TableError, read_chunks

LABEL_COLUMN = "label"  # filled in by the labeller (agile label), read by agile train --label-column label
DEFAULT_FACTOR = 5
DEFAULT_EXPLORE = 0.5  # half the round at random: chosen on rows held out from ETHOS, docs/TRAINING.md "The agile loop"


@dataclass
class Candidates:
    """Rows of the pool kept so far: row numbers, ids, texts, calibrated probabilities, margins, random draws."""

    rows: np.ndarray
    ids: list[str]
    texts: list[str]
    probs: np.ndarray  # [k, labels]
    margins: np.ndarray
    draws: np.ndarray  # in [0, 1): the seeded hash of each text, for the exploration share

    @classmethod
    def empty(cls, n_labels: int) -> Candidates:
        return cls(np.zeros(0, np.int64), [], [], np.zeros((0, n_labels)), np.zeros(0), np.zeros(0))

    def taken(self, index: np.ndarray | list[int]) -> Candidates:
        """These rows, in this order."""
        index = np.asarray(index, dtype=np.int64)
        return Candidates(self.rows[index], [self.ids[i] for i in index], [self.texts[i] for i in index],
                          self.probs[index], self.margins[index], self.draws[index])

    def joined(self, other: Candidates) -> Candidates:
        return Candidates(np.concatenate([self.rows, other.rows]), self.ids + other.ids, self.texts + other.texts,
                          np.concatenate([self.probs, other.probs]), np.concatenate([self.margins, other.margins]),
                          np.concatenate([self.draws, other.draws]))

    def merged(self, other: Candidates, keep: int, by: str = "margins") -> Candidates:
        """Both sets in one, repeated texts dropped (the earlier row stays), the `keep` smallest margins (or draws)."""
        both = self.joined(other)
        first: dict[str, int] = {}
        for i, text in enumerate(both.texts):
            first.setdefault(text, i)
        unique = np.fromiter(first.values(), dtype=np.int64, count=len(first))
        key = getattr(both, by)
        return both.taken(unique[np.lexsort((both.rows[unique], key[unique]))][:keep])  # key, then row: deterministic


def draws(texts: list[str], seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per text, the same for the same text and seed wherever it stands in the pool."""
    import hashlib

    key = hashlib.blake2b(str(seed).encode(), digest_size=8).hexdigest()  # hash_array takes 16 characters
    hashed = pd.util.hash_array(np.asarray(texts, dtype=object), hash_key=key, categorize=False)
    return (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)


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


def candidates(policy: Policy | None, pairs: Iterable[tuple[Chunk, np.ndarray]], keep: int, excluded: set[str],
               sample: int = 0, seed: int = 0) -> tuple[Candidates, Candidates, int]:
    """Stream (chunk, calibrated probabilities) into the `keep` most uncertain rows and a random `sample`
    of them all (the smallest draws); also the rows seen. Without a policy, only the sample."""
    best = drawn = Candidates.empty(len(policy.labels) if policy else 0)
    seen = 0
    for chunk, probs in pairs:
        seen += len(chunk.ids)
        ok = np.isfinite(probs).all(axis=1) & np.fromiter((t not in excluded and t.strip() != "" for t in chunk.texts),
                                                         dtype=bool, count=len(chunk.texts))
        index = np.flatnonzero(ok)
        if len(index):
            texts = [chunk.texts[i] for i in index]
            fresh = Candidates(chunk.start + index, [chunk.ids[i] for i in index], texts, probs[index],
                               margins(policy, probs[index]) if policy else np.zeros(len(index)),
                               draws(texts, seed) if sample else np.zeros(len(index)))
            best = best.merged(fresh, keep)
            if sample:
                drawn = drawn.merged(fresh, sample, by="draws")
    return best, drawn, seen


def suggest(policy: Policy | None, pairs: Iterable[tuple[Chunk, np.ndarray]], n: int, seed: int = 0,
            excluded: set[str] | None = None, factor: int = DEFAULT_FACTOR,
            explore: float = DEFAULT_EXPLORE) -> tuple[Candidates, int]:
    """The `n` suggestions (most uncertain first) and the number of pool rows seen; a share `explore`
    of them drawn at random from the pool (all of them, in pool order, without a policy)."""
    if n < 1 or factor < 1:
        raise ValueError(f"-n and --candidates must be at least 1, got {n} and {factor}")
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"--explore is a share of the round, from 0 to 1, got {explore}")
    near = 0 if policy is None else n - round(n * explore)
    pool, sample, seen = candidates(policy, pairs, near * factor, excluded or set(), n if near < n else 0, seed)
    chosen = pool.taken(diverse(pool.texts, pool.margins, near, seed)) if near else pool.taken([])
    if near < n:  # the random share: the smallest draws not already chosen
        taken = set(chosen.texts)
        chosen = chosen.joined(sample.taken([i for i, t in enumerate(sample.texts) if t not in taken]
                                            [: n - len(chosen.ids)]))
    return chosen.taken(np.lexsort((chosen.rows, chosen.margins))), seen


def sampled(chunks: Iterable[Chunk], size: int, seed: int, excluded: set[str],
            chunk_rows: int = 2048) -> Iterator[Chunk]:
    """A seeded random `size` of the pool's texts (the smallest draws: the same rows the random share
    would take), in pool order, as chunks: what to score when the pool is too big to score whole.
    Their row numbers count within the sample; only their order matters to the choice."""
    _, sample, _ = candidates(None, unscored(chunks), 0, excluded, size, seed)
    sample = sample.taken(np.argsort(sample.rows, kind="stable"))
    for start in range(0, len(sample.ids), chunk_rows):
        yield Chunk(start, sample.ids[start : start + chunk_rows], sample.texts[start : start + chunk_rows])


def unscored(chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, np.ndarray]]:
    """The pool's chunks with no scores (no policy yet): every row is a candidate for the random draw."""
    for chunk in chunks:
        yield chunk, np.zeros((len(chunk.texts), 0))


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


def scored_pool(policy: Policy, chunks: Iterator[Chunk], model_spec: str | None, batch_size: int | None,
                home: Path | None = None, excluded: set[str] | None = None,
                notes: list[str] | None = None) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Score the pool in this process, chunk by chunk: calibrated probabilities, NaN for empty texts and
    for the texts `excluded` (labelled already: never suggested, so never scored).

    With a `home` and a policy with LoRA on its last blocks only (`--lora-blocks`, `--quick`), the blocks
    below are the base model's whatever the round: their output for the pool's rows is kept in
    `home`/frozen/ (capped at POOL_STORE_BYTES) and read back by the next `suggest` over the same pool,
    which then runs the LoRA'd blocks alone; what it read and kept is said in `notes`."""
    from agile.adapters import merge_adapter
    from agile.lean import lean_unsupported
    from agile.models import load_model
    from agile.scoring import LabelScorer, ScoringSettings

    adapter = policy.adapter
    model = load_model(model_spec or adapter.meta.base_model, sequence_length=policy.max_length)
    merge_adapter(model, adapter)
    if home is not None and lean_unsupported(model.backbone) is None:
        from agile.trainer.train import blocks_below

        frozen = blocks_below(model, adapter.meta.lora_blocks)
        if frozen:
            yield from _scored_from_store(policy, model, chunks, frozen, batch_size or 16, home, excluded or set(),
                                          [] if notes is None else notes)
            return
    scorer = LabelScorer(model, policy.template, ScoringSettings(policy.max_length, batch_size))
    yield from _scored(chunks, lambda texts: scorer.score(texts).probs, policy, excluded or set())


POOL_STORE_BYTES = 512 << 20  # the pool rows kept for the next round: ~7,000 ETHOS comments (73 KB each)


def _scored(chunks: Iterator[Chunk], probs_of, policy: Policy,
            excluded: set[str]) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Each chunk beside its calibrated probabilities (`probs_of` a list of texts), NaN where not scored."""
    for chunk in chunks:
        probs = np.full((len(chunk.texts), len(policy.labels)), np.nan)
        todo = [i for i, text in enumerate(chunk.texts) if text.strip() and text not in excluded]
        if todo:
            probs[todo] = policy.calibrated(probs_of([chunk.texts[i] for i in todo]))
        yield chunk, probs


def _scored_from_store(policy: Policy, model, chunks: Iterator[Chunk], frozen: int, batch: int,
                       home: Path, excluded: set[str], notes: list[str]) -> Iterator[tuple[Chunk, np.ndarray]]:
    """The pool scored by the lean label path over the frozen blocks' output, read from the store where
    an earlier suggest kept it; the store rewritten with this pool's rows at the end."""
    from agile.tokens import PromptTokenizer
    from agile.trainer.frozen_store import POOL
    from agile.trainer.train import LeanLabelLoss, model_store

    tokenizer = PromptTokenizer.from_model(model)
    template, label_ids = policy.template, tokenizer.label_ids(policy.template.labels)
    store = model_store(model, template, frozen, home, kind=POOL, max_bytes=POOL_STORE_BYTES)
    device = model.backbone.token_embedding.embeddings.value.device

    def probs_of(texts: list[str]) -> np.ndarray:
        rows, _ = tokenizer.encode_prompts(template, texts, policy.max_length)
        return LeanLabelLoss(model, tokenizer, template, label_ids, rows, frozen, store=store).probs(device, batch)

    yield from _scored(chunks, probs_of, policy, excluded)
    kept = store.saved()
    over = f"; {store.left_out} left out, over {POOL_STORE_BYTES >> 20} MiB" if store.left_out else ""
    notes.append(f"frozen blocks' output: {store.read} pool rows read back from the last suggest, "
                 f"{store.computed} computed ({kept}{over})")
