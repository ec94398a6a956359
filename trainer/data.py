"""Labelled examples for training and evaluation: the codelab's ETHOS split, or any table of text + label.

Training sets are small (hundreds to thousands of rows), so a file is read whole.
Every problem becomes one `DataError` naming the file, and the row or column when
there is one, before any model is loaded.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from agile.adapters import Adapter
from agile.prompt import DEFAULT_LABELS
from agile.settings import HomeSettings
from agile.tables import TableError, csv_frames, locate_bad_utf8, table_format

ETHOS_CSV = "ethos/Ethos_Dataset_Binary.csv"  # inside data/ (agile.settings.HomeSettings.data_file)
ETHOS_TRAIN_ROWS = 800  # the codelab: first 800 shuffled rows train, the other 198 test
ETHOS_SHUFFLE_SEED = 32
ETHOS_NAME = "ethos"  # `--data ethos` means the codelab's split of the file above
# `--data ethos:ATTRIBUTE`: one column of the multi-label file (432 hateful comments), binarised.
ETHOS_MULTI_CSV = "ethos/Ethos_Dataset_Multi_Label.csv"
ETHOS_ATTRIBUTES = ("violence", "directed_vs_generalized", "gender", "race", "national_origin",
                    "disability", "religion", "sexual_orientation")
ETHOS_ATTRIBUTE_CUT = 0.5  # a comment has the attribute when at least half its annotators said so
ETHOS_MULTI_TEST_SHARE = 0.2  # after the same seed-32 shuffle: the last 20% of rows (87 of 433) test


class DataError(ValueError):
    """A training or evaluation table cannot be used as given."""


@dataclass
class Examples:
    """Texts with their label index into `labels`; `source` says where they came from."""

    texts: list[str]
    labels: np.ndarray  # int64 [n], each in range(len(label_names))
    label_names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, index, source: str) -> Examples:
        index = np.asarray(index, dtype=np.int64)
        return Examples([self.texts[i] for i in index], self.labels[index], self.label_names, source)

    def head(self, n: int) -> Examples:
        if n > len(self):
            raise DataError(f"{self.source}: asked for the first {n} rows, but it has only {len(self)}")
        return self.take(np.arange(n), f"{self.source}[:{n}]")

    def checksum(self) -> str:
        """sha256 over labels and texts, in order: records exactly what an adapter was trained on."""
        digest = hashlib.sha256()
        digest.update("\x1f".join(self.label_names).encode())
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(f"\x1e{int(label)}\x1f{text}".encode())
        return digest.hexdigest()

    def check_trainable(self, batch_size: int) -> None:
        """Refuse sets that cannot train a classifier: too few rows, or a label with no example."""
        if len(self) < batch_size:
            raise DataError(f"{self.source}: {len(self)} rows is fewer than the batch size {batch_size}")
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        empty = [name for name, c in zip(self.label_names, counts, strict=True) if c == 0]
        if empty:
            raise DataError(f"{self.source}: no examples of label(s) {empty}; every label needs some")


def _read_ethos(path: Path, labels: tuple[str, ...], what: str) -> pd.DataFrame:
    if len(labels) != 2:
        raise DataError(f"{what} is binary: give two label words, got {list(labels)}")
    try:
        return pd.read_csv(path, delimiter=";", encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot read the {what} file: {exc}") from exc


def _shuffled_split(df: pd.DataFrame, truth: pd.Series, labels: tuple[str, ...], name: str,
                    n_train: int) -> tuple[Examples, Examples]:
    """Shuffled with the codelab's seed 32; the first `n_train` rows train, the rest test."""
    df = df.assign(truth=truth.astype(int)).sample(frac=1, random_state=ETHOS_SHUFFLE_SEED)
    full = Examples(df["comment"].astype(str).tolist(), df["truth"].to_numpy(np.int64), labels, name)
    return (full.take(np.arange(n_train), f"{name}-train"),
            full.take(np.arange(n_train, len(full)), f"{name}-test"))


def ethos_split(path: str | Path | None = None, labels: tuple[str, ...] = DEFAULT_LABELS) -> tuple[
    Examples, Examples
]:
    """The codelab's split: hateful = isHate >= median, shuffled with seed 32, 800 train / 198 test.

    Label index 1 (the second label word, 'Negative' by default) is hateful, as in the codelab.
    """
    df = _read_ethos(Path(path or HomeSettings.from_env().data_file(ETHOS_CSV)), labels, "ETHOS")
    return _shuffled_split(df, df["isHate"] >= df["isHate"].median(), labels, ETHOS_NAME, ETHOS_TRAIN_ROWS)


def ethos_attribute_split(
    attribute: str, path: str | Path | None = None, labels: tuple[str, ...] = DEFAULT_LABELS
) -> tuple[Examples, Examples]:
    """One attribute of the multi-label file as a binary task: label index 1 = rating >= 0.5.

    Rows are shuffled with seed 32 (as the binary split); the first 80% train, the rest
    test, the same rows for every attribute, so no attribute's test row trained another.
    """
    if attribute not in ETHOS_ATTRIBUTES:
        raise DataError(f"ETHOS has no attribute {attribute!r}; choose one of {', '.join(ETHOS_ATTRIBUTES)}")
    path = Path(path or HomeSettings.from_env().data_file(ETHOS_MULTI_CSV))
    df = _read_ethos(path, labels, "ETHOS multi-label")
    for column in ("comment", attribute):
        if column not in df.columns:
            raise DataError(f"{path}: no column {column!r} (columns: {', '.join(map(str, df.columns))})")
    ratings = pd.to_numeric(df[attribute], errors="coerce")
    bad = np.flatnonzero(~ratings.between(0, 1).to_numpy())
    if len(bad):
        raise DataError(f"{path}: row {bad[0]}, column {attribute!r}: rating {str(df[attribute].iloc[bad[0]])!r} "
                        "is not a number in [0, 1]")
    n_train = len(df) - round(len(df) * ETHOS_MULTI_TEST_SHARE)
    return _shuffled_split(df, ratings >= ETHOS_ATTRIBUTE_CUT, labels, f"{ETHOS_NAME}:{attribute}", n_train)


def validation_split(examples: Examples, fraction: float, seed: int) -> tuple[Examples, Examples]:
    """(train, validation): a seeded, per-label share of the rows held out to pick epoch and threshold."""
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for label in range(len(examples.label_names)):
        rows = np.flatnonzero(examples.labels == label)
        rng.shuffle(rows)
        held.extend(rows[: round(len(rows) * fraction)].tolist())
    held_set = set(held)
    kept = [i for i in range(len(examples)) if i not in held_set]
    return (
        examples.take(kept, f"{examples.source} minus validation"),
        examples.take(sorted(held), f"{examples.source} validation ({fraction:.0%}, seed {seed})"),
    )


def _read_frame(path: Path, fmt: str | None, delimiter: str | None) -> pd.DataFrame:
    """The whole table; a bad CSV row or UTF-8 byte is named by row, line and byte offset, as agile submit does."""
    fmt = table_format(path, fmt)
    if fmt == "csv":
        return next(csv_frames(path, delimiter))
    if fmt == "jsonl":
        try:
            return pd.read_json(path, lines=True, dtype=False, encoding="utf-8", encoding_errors="strict")
        except UnicodeDecodeError:  # its offset counts from some buffer of pandas', not from the file's start
            raise TableError(f"{path}: invalid UTF-8 at {locate_bad_utf8(path, fmt)}") from None
    return pd.read_parquet(path)


def _label_index(value, names: tuple[str, ...], aliases: tuple[str, ...] = ()) -> int | None:
    """A label value as an index: a label word, its output name (`aliases`, in the labels' order),
    or an integer 0..len(names)-1 (1.0 counts as 1)."""
    text = str(value).strip()
    for words in (names, aliases):
        if text in words:
            return words.index(text)
    try:
        number = float(text)
    except ValueError:
        return None
    if number.is_integer() and 0 <= number < len(names):
        return int(number)
    return None


def load_table(
    path: str | Path,
    text_column: str = "text",
    label_column: str = "label",
    labels: tuple[str, ...] = DEFAULT_LABELS,
    fmt: str | None = None,
    delimiter: str | None = None,
    aliases: tuple[str, ...] | None = None,
) -> Examples:
    """Read a CSV / JSONL / Parquet file whose label column holds label words, their output
    names (`aliases`) or integers. Rows left unlabelled (an empty cell: skipped in `agile label`)
    are left out, and counted on stderr."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        df = _read_frame(path, fmt, delimiter)
    except TableError as exc:
        raise DataError(str(exc)) from exc
    except (pa.ArrowException, ValueError) as exc:
        raise DataError(f"{path}: cannot read it: {exc}") from exc
    for column in (text_column, label_column):
        if column not in df.columns:
            raise DataError(
                f"{path}: no column {column!r} (columns: {', '.join(map(str, df.columns))}); "
                "name it with --text-column / --label-column"
            )
    if df.empty:
        raise DataError(f"{path}: no rows")
    words = list(labels) + [a for a in aliases or () if a not in labels]
    unlabelled = df[label_column].isna() | (df[label_column].astype(str).str.strip() == "")
    index, rows = [], np.flatnonzero(~unlabelled.to_numpy())
    for row, value in zip(rows, df[label_column].to_numpy()[rows], strict=True):
        found = _label_index(value, labels, tuple(aliases or ()))
        if found is None:
            raise DataError(
                f"{path}: row {row}, column {label_column!r}: label {value!r} is not one of "
                f"{words} nor an integer 0..{len(labels) - 1} (set the label words with --labels)"
            )
        index.append(found)
    if not index:
        raise DataError(f"{path}: no labelled rows (every {label_column!r} cell is empty)")
    if len(rows) < len(df):
        print(f"{path}: {len(df) - len(rows)} of {len(df)} rows have no label and are left out", file=sys.stderr)
    texts = []
    for row, value in zip(rows, df[text_column].to_numpy()[rows], strict=True):
        if not isinstance(value, str):
            raise DataError(f"{path}: row {row}, column {text_column!r}: expected text, got {value!r:.60}")
        texts.append(value)
    return Examples(texts, np.asarray(index, dtype=np.int64), tuple(labels), str(path))


def is_builtin(spec: str) -> bool:
    """`ethos` or `ethos:ATTRIBUTE`: a split shipped with the repository, its test part included."""
    return spec == ETHOS_NAME or spec.startswith(f"{ETHOS_NAME}:")


def load_examples(
    spec: str, labels: tuple[str, ...] = DEFAULT_LABELS, part: str = "train", **table_args
) -> Examples:
    """`ethos` -> the codelab split's `part` ('train' or 'test'); `ethos:ATTRIBUTE` -> that
    attribute's split; anything else -> a table file."""
    if is_builtin(spec):
        _, _, attribute = spec.partition(":")
        train, test = ethos_attribute_split(attribute, labels=labels) if attribute else ethos_split(labels=labels)
        return train if part == "train" else test
    return load_table(spec, labels=labels, **table_args)


def recorded_splits(adapter: Adapter, data: str | None = None, test: str | None = None, text_column: str | None = None,
                    label_column: str | None = None) -> tuple[Examples, Examples | None]:
    """(validation, test or None): an adapter's own held-out rows, rebuilt from what adapter.json records.

    The training rows must match the recorded checksum, so a calibration is never fitted on other
    rows; arguments override what is recorded (adapters written before it was).
    """
    meta, recorded = adapter.meta, adapter.meta.settings
    spec = data or recorded.get("data_spec")
    if not spec:
        raise ValueError(f"{adapter.path}: adapter.json does not record its training data; name it with --data")
    if not recorded.get("validation_fraction"):
        raise ValueError(f"{adapter.path}: trained without a validation split (--validation-fraction 0), so no "
                         "held-out training rows are left to fit a calibration on")
    columns = {"text_column": text_column or recorded.get("text_column", "text"),
               "label_column": label_column or recorded.get("label_column", "label"),
               "aliases": tuple(meta.outputs or ())}
    examples = load_examples(spec, tuple(meta.labels), "train", **columns)
    if examples.checksum() != meta.data_checksum:
        raise ValueError(f"{spec}: not the rows {adapter.path} was trained on (the data checksum differs)")
    _, validation = validation_split(examples, recorded["validation_fraction"], recorded["validation_seed"])
    test_spec = test or recorded.get("test_spec") or (spec if is_builtin(spec) else None)
    held_out = load_examples(test_spec, tuple(meta.labels), "test", **columns) if test_spec else None
    return validation, held_out
